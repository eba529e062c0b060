"""store.save_checked_tensor / load_checked_tensor: the one checksummed torch-file format that kernel blocks,
fine-tuned parameters and sketched features share."""
import hashlib

import pytest
import torch

from ntkcheck.store import load_checked_tensor, save_checked_tensor, tensor_sha256


def test_a_tensor_round_trips_with_its_extras_and_its_checksum_is_the_sha256_of_its_bytes(tmp_path):
    t = torch.arange(12, dtype=torch.float64).reshape(3, 4) / 7
    save_checked_tensor(tmp_path / "t.pt", "t", t, rows="abc", ids=[["a"], ["b"]])
    blob = load_checked_tensor(tmp_path / "t.pt", "t")
    assert torch.equal(blob["t"], t) and blob["rows"] == "abc" and blob["ids"] == [["a"], ["b"]]
    # the files written before this helper (kernel blocks, parameters) stored sha256(t.numpy().tobytes())
    assert blob["sha"] == hashlib.sha256(t.numpy().tobytes()).hexdigest()


def test_a_mapping_round_trips_and_its_checksum_covers_keys_and_bytes(tmp_path):
    f = {"b": torch.ones(2, 3, dtype=torch.bfloat16), "a": torch.zeros(5)}
    save_checked_tensor(tmp_path / "f.pt", "features", f)
    got = load_checked_tensor(tmp_path / "f.pt", "features")["features"]
    assert got.keys() == f.keys() and all(torch.equal(got[k], f[k]) for k in f)
    # sorted keys, then bytes: the sketched-feature files' checksum
    h = hashlib.sha256()
    for k in ("a", "b"):
        h.update(k.encode())
        h.update(f[k].reshape(-1).view(torch.uint8).numpy().tobytes())
    assert tensor_sha256(f) == h.hexdigest()
    assert tensor_sha256({"c": f["a"], "b": f["b"]}) != tensor_sha256(f)   # a renamed key changes it


def test_a_changed_payload_fails_its_checksum(tmp_path):
    t = torch.linspace(0, 1, 10)
    save_checked_tensor(tmp_path / "t.pt", "t", t)
    blob = torch.load(tmp_path / "t.pt", weights_only=True)
    blob["t"][3] += 1e-6                                   # one entry off by one ulp-scale step
    torch.save(blob, tmp_path / "t.pt")
    with pytest.raises(ValueError, match="checksum"):
        load_checked_tensor(tmp_path / "t.pt", "t")

"""torchrun with 2 gloo processes on CPU: the same kernels and accuracies as one process, each rank computing
part of the blocks; a world larger than the number of blocks is one line and exit 2."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.hf


def _lm(args, nproc=None, timeout=300):
    env = dict(os.environ, TQDM_DISABLE="1", NTKCHECK_PROGRESS="0", OMP_NUM_THREADS="1")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
              "-m", "ntkcheck"] if nproc else [sys.executable, "-m", "ntkcheck"]
    return subprocess.run(launch + ["lm", *args], capture_output=True, text=True, env=env, timeout=timeout)


def _blocks(out: Path) -> dict[str, torch.Tensor]:
    (kdir,) = (out / "lm_kernels").iterdir()
    return {p.name: torch.load(p, weights_only=True)["t"] for p in sorted(kdir.glob("*_*.pt"))}


def _one_and_two(args, tmp_path):
    """``ntkcheck lm ARGS`` in one process (--out tmp/one) and over 2 gloo ranks (tmp/two): (the 2-rank run,
    the one process's kernel blocks, the 2-rank run's), with the same block files in both."""
    one = _lm(args + ["--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr
    two = _lm(args + ["--out", str(tmp_path / "two")], nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    k1, k2 = _blocks(tmp_path / "one"), _blocks(tmp_path / "two")
    assert k1.keys() == k2.keys() and len(k1) >= 4
    return two, k1, k2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from ntkcheck.realmodels.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("dist") / "tiny", "gpt-neo", hidden=8, layers=1, heads=2, seed=0)


def test_two_gloo_ranks_give_the_one_process_kernels_and_accuracies(tiny, data_dir, tmp_path):
    common = ["solve", "--model", str(tiny), "--task", "sst2", "--data", str(data_dir), "--k", "2",
              "--seeds", "13,21", "--test-max", "8", "--block", "4", "--kinds", "sgd,asym_signgd"]
    two, k1, k2 = _one_and_two(common, tmp_path)
    for name in k1:
        # NaN where no seed reads an entry (Session.needed): the same entries in both
        assert torch.equal(k2[name].isnan(), k1[name].isnan())
        torch.testing.assert_close(k2[name], k1[name], rtol=1e-10, atol=1e-12, equal_nan=True)
    # every block was computed exactly once over the two ranks (a rank that starts late finds its share
    # taken, so the split itself depends on timing), and only rank 0 wrote the result
    for kind in ("sgd", "asym_signgd"):
        counts = [int(s.split("computed ")[1].split()[0]) for s in two.stderr.splitlines()
                  if " of 2: computed" in s and f" {kind} kernel" in s]
        assert len(counts) == 2 and sum(counts) == len(k1) // 2, two.stderr[-2000:]
    res = [json.loads((tmp_path / d / "lm_solve_sst2_k2_tiny" / "result.json").read_text()) for d in ("one", "two")]
    acc = [{c["id"]: c["measured"] for c in r["claims"]} for r in res]
    assert acc[0] == acc[1] and res[1]["provenance"]["world_size"] == 2


def test_two_gloo_ranks_sketch_each_example_once_and_give_the_one_process_sketched_kernel(tiny, data_dir, tmp_path):
    """--sketch-dim under torchrun: the columns' sketches are split over the ranks (Session._sketch_columns)
    and each row is sketched by the rank that computes its block, so over both ranks every example is
    sketched exactly once (before, each rank sketched all the columns for its first block), and the kernel is
    the one process's to rounding."""
    common = ["kernel", "--model", str(tiny), "--task", "sst2", "--data", str(data_dir), "--k", "2",
              "--seeds", "13,21", "--test-max", "8", "--block", "4", "--kinds", "sgd", "--sketch-dim", "64",
              "--model-dtype", "float64"]
    two, k1, k2 = _one_and_two(common, tmp_path)
    for name in k1:
        # GPT-Neo's attention scores are float32 whatever the model's dtype, so a column sketched in a chunk of
        # its own and the same column sketched in the whole side's batch differ by float32 rounding (1e-7)
        torch.testing.assert_close(k2[name], k1[name], rtol=1e-5, atol=1e-6 * float(k1[name].abs().max()))
    (kdir,) = (tmp_path / "two" / "lm_kernels").iterdir()
    examples = len(list((kdir / "features").glob("*/*/*.pt")))
    assert examples == 2 * 2 * 2 * 2 + 8         # (train + dev) x 2 seeds x k = 2 x 2 labels, and 8 test
    # every rank notes what it sketched at each kernel() call (rank 0 calls it again for the command's summary,
    # reading every block back); which rank computes what depends on timing, the total does not
    notes = [s for s in two.stderr.splitlines() if " of 2: computed" in s and "sketched" in s]
    assert {s.split("rank ")[1].split()[0] for s in notes} == {"0", "1"}, two.stderr[-2000:]
    assert sum(int(s.split("sketched ")[1].split()[0]) for s in notes) == examples, two.stderr[-2000:]
    # the 8 columns went in 8 chunks of one (four chunks a rank), each marked done by the rank that took it
    assert len(list((kdir / "features").glob("*/columns/sgd_*.done"))) == 8


def test_more_ranks_than_blocks_is_one_line(tiny, separable_dir, tmp_path):
    bad = _lm(["kernel", "--model", str(tiny), "--task", "sst2", "--data", str(separable_dir), "--k", "1",
               "--seeds", "13", "--test-max", "2", "--block", "256", "--out", str(tmp_path)], nproc=2)
    assert bad.returncode != 0
    assert "ntkcheck: error: 2 ranks but only 1 kernel block(s)" in bad.stderr
    # torchrun itself reports a failed worker with its own traceback; no frame of ntkcheck's may appear in it.
    # A frame is ntkcheck's when its file is one of the package's sources: by path, not by the word "ntkcheck",
    # which a clone's folder may hold (torch's frames under <clone>/.venv) and the sources' paths may not
    # (realmodels/ is ntkcheck.realmodels)
    assert _own_frames(bad.stderr) == [], bad.stderr[-2000:]
    ours = str(Path(__import__("ntkcheck.realmodels.cli").realmodels.cli.__file__).resolve())
    assert _own_frames(f'  File "{ours}", line 1, in main\n  File "{torch.__file__}", line 1, in f') == [ours]


def _own_frames(stderr: str) -> list[str]:
    """The files of the traceback frames in ``stderr`` that are ntkcheck's sources: in the folder of one of the
    packages pyproject.toml lists (their folders are the repository's theory/, models/, ... , not ntkcheck/)."""
    import importlib
    import tomllib

    names = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    names = names["tool"]["setuptools"]["packages"]
    roots = {Path(importlib.import_module(n).__file__).resolve().parent for n in names}
    files = [line.split('"')[1] for line in stderr.splitlines() if line.strip().startswith('File "')]
    return [f for f in files if Path(f).resolve().parent in roots]

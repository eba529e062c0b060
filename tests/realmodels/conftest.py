"""Fixtures for realmodels tests: tiny offline models, a synthetic separable data folder, the shared data."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def shared_data() -> Path | None:
    """The shared data folder (NTKCHECK_DATA or ../shared/data next to the repository), None if absent."""
    env = os.environ.get("NTKCHECK_DATA")
    for p in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data", REPO / ".." / "shared" / "data"]:
        if (p / "stsa.binary.train").exists():
            return p
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    p = shared_data()
    if p is None:
        pytest.skip("shared data folder not found (set NTKCHECK_DATA)")
    return p


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """{'roberta': dir, 'gpt-neo': dir}: tiny random models with a word-level tokenizer (no downloads)."""
    pytest.importorskip("transformers")
    from ntkcheck.realmodels.tiny import make_tiny

    root = tmp_path_factory.mktemp("tiny")
    return {arch: make_tiny(root / arch, arch, hidden=16, layers=2, heads=2, seed=0)
            for arch in ("roberta", "gpt-neo")}


@pytest.fixture(scope="session")
def loaded(tiny_models):
    """{'roberta': (model, tok, mode), 'gpt-neo': (...)} loaded once per session."""
    from ntkcheck.realmodels.adapters import load_pretrained

    return {arch: load_pretrained(d) for arch, d in tiny_models.items()}


# One sentence per class, repeated: train, dev and test hold the same inputs, so the task is separable by
# construction and kernel regression (which interpolates at zero ridge) must get 100%: a wiring test of
# labels, kernel blocks, f0 offsets and dev selection end to end.
SEPARABLE = {0: ["terrible bad"] * 12, 1: ["great good"] * 12}


@pytest.fixture(scope="session")
def separable_dir(tmp_path_factory) -> Path:
    """DATA/sst2/{train,test}.jsonl of a trivially separable task: the label is the sentiment word used."""
    import json

    root = tmp_path_factory.mktemp("sepdata")
    (root / "sst2").mkdir()
    train = [{"text": t, "label": y} for y, ts in SEPARABLE.items() for t in ts]
    test = [{"text": t, "label": y} for y, ts in SEPARABLE.items() for t in ts[:4]]
    for name, rows in (("train", train), ("test", test)):
        (root / "sst2" / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root

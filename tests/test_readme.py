"""The README's Python examples run as written (a README that says something untrue is a defect)."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text("utf-8"), re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_python_block_runs(i):
    """Each block runs, and what it computes is what its comments say."""
    import torch

    ns: dict = {}
    exec(compile(BLOCKS[i], f"README.md python block {i}", "exec"), ns)
    checked = 0
    if "params_t = train(" in BLOCKS[i]:   # training lowers the squared error on its batch
        f, x, y = ns["f"], ns["x"], ns["y"]
        before = float(((f(ns["params"], x) - y) ** 2).mean())
        after = float(((f(ns["params_t"], x) - y) ** 2).mean())
        assert after < 0.9 * before, (before, after)
        checked += 1
    if "K = empirical_kernel(" in BLOCKS[i]:   # the eNTK: [N, C, N, C], symmetric; the plan reused at params_t
        K, n = ns["K"], ns["x"].shape[0]
        assert K.shape == (n, 2, n, 2) and ns["K2"].shape == (2 * n, 2 * n)
        assert torch.allclose(ns["K2"], ns["K2"].T, rtol=1e-12, atol=1e-12)
        assert ns["A"].shape == K.shape and not torch.allclose(ns["A"], K)
        assert ns["K_t"].shape == K.shape and 0 < float((ns["K_t"] - K).abs().max()) < float(K.abs().max())
        checked += 1
    assert checked, f"README python block {i} has no check here: add one"

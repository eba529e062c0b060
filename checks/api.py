"""The Python API of the checks, which the CLI calls too (lm-evaluation-harness's pattern).

    from ntkcheck.checks import run_check
    result = run_check("linearization", quick=True, out="runs")     # a ntkcheck.result.Result
    result.verdict, result.claim("mlp_ntk.e_lin.bound").measured
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ntkcheck import distributed
from ntkcheck.checks.config import to_json, without_axes
from ntkcheck.checks.registry import CheckSpec, get
from ntkcheck.provenance import now_iso, provenance
from ntkcheck.resources import require_memory
from ntkcheck.result import Result
from ntkcheck.store import ResultStore


def run_check(check: str | CheckSpec, config: Any = None, out: str | Path = "ntkcheck-runs", *,
              quick: bool = False) -> Result:
    """Run one check into DIR/<name>/ (resuming finished points) and write its result.json.

    config: the check's Config (default: its full sweep, or the quick one with ``quick``).
    """
    spec = get(check) if isinstance(check, str) else check
    config = spec.default_config(quick) if config is None else config
    if spec.memory is not None:
        require_memory(spec.memory(config), f"{spec.name} at its largest sweep point")
    store = ResultStore(Path(out), spec.name)
    store.bind(without_axes(config), spec.version)
    started, t0 = now_iso(), time.time()
    claims = spec.run(config, store)
    result = Result(spec.name, list(claims), kind="check", config=to_json(config), version=spec.version,
                    provenance=provenance(time.time() - t0, device=str(getattr(config, "device", "cpu")),
                                          started=started))
    if distributed.is_main():   # under torchrun every rank computes, rank 0 writes
        store.write_result(result)
    return result

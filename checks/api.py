"""The Python API of the checks, which the CLI calls too (lm-evaluation-harness's pattern).

    from ntkcheck.checks import run_check
    result = run_check("linearization", quick=True, out="runs")     # a ntkcheck.result.Result
    result.verdict, result.claim("mlp_ntk.e_lin.bound").measured
    for spec, result in run_checks(specs, configs, "runs", jobs=2): ...   # in 2 processes, as they finish
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

from ntkcheck import distributed
from ntkcheck.checks.config import to_json, without_axes
from ntkcheck.checks.registry import CheckSpec, get
from ntkcheck.errors import UserError
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


def _run_in_worker(job: tuple) -> tuple[int, Result]:
    """(i, run_check's Result) in a worker process; job = (i, the CheckSpec's (module, attribute) from
    checks.workers.spec_ref, config, out)."""
    from ntkcheck.checks.workers import resolve

    i, ref, config, out = job
    return i, run_check(resolve(ref), config, out)


def run_checks(specs: list[CheckSpec], configs: list[Any], out: str | Path = "ntkcheck-runs", *,
               jobs: int = 1) -> Iterator[tuple[CheckSpec, Result]]:
    """(spec, Result) of each check, run with run_check: one after another with ``jobs`` = 1 (in the given
    order), else in ``jobs`` worker processes at once (checks.workers; each check in one process, single-
    threaded on 2 cores, as the checks' small tensors use one core anyway), yielded as they finish. The
    checks share nothing but the store's root, each writing DIR/<name>/, so the results are the same
    either way; an interrupted parallel run resumes like any run."""
    if len(specs) != len(configs):
        raise ValueError(f"{len(specs)} checks but {len(configs)} configs")
    if jobs <= 1 or len(specs) <= 1:
        for spec, config in zip(specs, configs):
            yield spec, run_check(spec, config, out)
        return
    if distributed.world_size() > 1:
        raise UserError(f"jobs={jobs}: under torchrun the ranks already share the sweep points; run one "
                        "process per rank (jobs=1)")
    from ntkcheck.checks.workers import pool, spec_ref

    # checks that run at once must fit together: the largest `jobs` of their memory needs, summed
    needs = sorted((s.memory(c) for s, c in zip(specs, configs) if s.memory is not None), reverse=True)
    if needs:
        require_memory(sum(needs[:jobs]), f"{min(jobs, len(specs))} checks at once (--jobs {jobs}) at their "
                       "largest sweep points")
    work = [(i, spec_ref(s), c, str(out)) for i, (s, c) in enumerate(zip(specs, configs))]
    with pool(min(jobs, len(specs))) as workers:
        for i, result in workers.imap_unordered(_run_in_worker, work):
            yield specs[i], result

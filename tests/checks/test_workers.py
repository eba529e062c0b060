"""run_checks in worker processes (`ntkcheck run --jobs`): the same results as one process, each check
once, errors carried to the parent, bad --jobs refused.

The toy checks measure a torch matmul (so each worker starts torch's thread pool, as real checks do)
and claim its value; `broken` raises a UserError inside the worker."""
import json

import pytest

from ntkcheck.checks.api import run_checks
from ntkcheck.errors import UserError

TOY_MODULE = '''
import dataclasses

from ntkcheck.checks.config import CheckConfig, axis
from ntkcheck.checks.registry import CheckSpec
from ntkcheck.errors import UserError
from ntkcheck.result import claim, measurement


@dataclasses.dataclass(frozen=True)
class ToyConfig(CheckConfig):
    seeds: int = axis("seeds", 3)
    scale: float = 1.0

    @classmethod
    def quick(cls):
        return cls(seeds=2)


def _measure(config):
    import torch

    g = torch.Generator().manual_seed(config.seeds)
    a = torch.randn(256, 256, generator=g, dtype=torch.float64)
    return float((a @ a.T).trace()) * config.scale


def run_a(config, store):
    import os

    m = _measure(config)
    return [claim("a", "toy a", predicted=m, measured=m, relation="==", tolerance=1e-9),
            measurement("pid", "the process that ran it", float(os.getpid()))]


def run_b(config, store):
    m = _measure(config) / 2
    return [claim("b", "toy b", predicted=2 * m, measured=m, relation="==", tolerance=1e-9)]


def run_broken(config, store):
    raise UserError("broken: bad scale 7.0")


A = CheckSpec(name="toy_a", summary="a", config_cls=ToyConfig, run=run_a)
B = CheckSpec(name="toy_b", summary="b", config_cls=ToyConfig, run=run_b)
BROKEN = CheckSpec(name="toy_broken", summary="broken", config_cls=ToyConfig, run=run_broken)
'''


@pytest.fixture(scope="module")
def toys(tmp_path_factory, importable_module):
    """The toy checks as an importable module (workers import a CheckSpec by its module and name)."""
    with importable_module(tmp_path_factory.mktemp("toyrun"), "ntkcheck_toy_run", TOY_MODULE) as module:
        yield module


def _claims(result):
    return {c.id: (c.measured, c.state) for c in result.claims if c.id != "pid"}


def test_jobs_give_the_results_of_one_process(toys, tmp_path):
    import os

    specs = [toys.A, toys.B]
    configs = [toys.ToyConfig(seeds=3), toys.ToyConfig(seeds=4, scale=0.5)]
    serial = dict((s.name, r) for s, r in run_checks(specs, configs, tmp_path / "one", jobs=1))
    parallel = list(run_checks(specs, configs, tmp_path / "two", jobs=2))
    assert sorted(s.name for s, _ in parallel) == ["toy_a", "toy_b"]   # each check once
    for spec, result in parallel:
        assert _claims(result) == _claims(serial[spec.name])
        on_disk = json.loads((tmp_path / "two" / spec.name / "result.json").read_text())
        assert on_disk["verdict"] == result.verdict
    assert _claims(serial["toy_a"])["a"][1] == "holds" and _claims(serial["toy_b"])["b"][1] == "fails"
    pid = dict((s.name, r) for s, r in parallel)["toy_a"].claim("pid").measured
    assert pid != os.getpid()   # it ran in a worker


def test_an_error_in_a_worker_reaches_the_parent(toys, tmp_path):
    specs = [toys.A, toys.BROKEN]
    configs = [toys.ToyConfig(), toys.ToyConfig()]
    with pytest.raises(UserError, match="bad scale 7.0"):
        list(run_checks(specs, configs, tmp_path, jobs=2))


def test_configs_must_match_the_checks(toys, tmp_path):
    with pytest.raises(ValueError, match="2 checks but 1 configs"):
        list(run_checks([toys.A, toys.B], [toys.ToyConfig()], tmp_path, jobs=2))


def test_run_refuses_bad_jobs(capsys):
    from ntkcheck.cli import main

    assert main(["run", "--jobs", "0", "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ntkcheck: error: argument --jobs: invalid positive integer value: '0'"]

"""The mutation harness itself: inject restores what it replaced, selftest tells caught from surviving
faults (serially and in a process pool alike), and seed bases draw disjoint seeds.

The toy check measures math.e and claims it equals exp(1): a fault on math.e makes the claim fail, a
fault that changes nothing survives, a fault that breaks the run counts as caught ("error").
"""
import math

import pytest

from ntkcheck.checks.faults import Fault, inject, selftest


TOY_MODULE = '''
import dataclasses
import math

from ntkcheck.checks.config import CheckConfig, axis
from ntkcheck.checks.faults import Fault
from ntkcheck.checks.registry import CheckSpec
from ntkcheck.result import claim


@dataclasses.dataclass(frozen=True)
class ToyConfig(CheckConfig):
    seeds: int = axis("seeds", 3)

    @classmethod
    def quick(cls):
        return cls(seeds=2)


def run(config, store):
    import torch

    # torch work in every run: the clean run starts torch's thread pool in the parent before the fault
    # runs go to workers (a forked worker would hang here; the harness spawns them)
    ones = torch.ones(512, 512, dtype=torch.float64)
    measured = math.e * math.sqrt(float((ones @ ones).mean()) / 512)
    return [claim("e", "math.e equals exp(1)", predicted=math.exp(1.0), measured=measured, relation="==",
                  tolerance=1e-12)]


FAULTS = (
    Fault("e_off", "a wrong constant", "math:e", lambda e: e * 1.01),
    Fault("no_op", "a fault the claim cannot see", "math:pi", lambda pi: pi),
    Fault("no_op_by_design", "an invisible fault, declared", "math:pi", lambda pi: pi, caught=False,
          reason="pi is not measured"),
    Fault("crash", "an operation that raises", "math:sqrt", lambda f: (lambda x: 1 / 0)),
)
TOY = CheckSpec(name="toy", summary="toy", config_cls=ToyConfig, run=run, faults=FAULTS)
'''


@pytest.fixture(scope="module")
def toy(tmp_path_factory, importable_module):
    """The toy check as an importable module (worker processes import it by name, as they do real checks)."""
    with importable_module(tmp_path_factory.mktemp("toycheck"), "ntkcheck_toy_check", TOY_MODULE) as module:
        yield module


def test_inject_replaces_and_restores_even_on_error(toy):
    e = math.e
    with inject(toy.FAULTS[0]):
        assert math.e == pytest.approx(e * 1.01, rel=1e-15)
    assert math.e == e
    with pytest.raises(RuntimeError):
        with inject(toy.FAULTS[0]):
            raise RuntimeError("inside")
    assert math.e == e


def test_fault_declaration_is_validated():
    with pytest.raises(ValueError, match="module:attribute"):
        Fault("bad", "b", "math.e", lambda e: e)
    with pytest.raises(ValueError, match="say why"):
        Fault("bad", "b", "math:e", lambda e: e, caught=False)
    with pytest.raises(ValueError, match="scope"):
        Fault("bad", "b", "math:e", lambda e: e, scope="everything")


@pytest.mark.parametrize("jobs", [1, 2])
def test_selftest_tells_caught_from_surviving(toy, tmp_path, jobs):
    clean, outcomes = selftest(toy.TOY, out=tmp_path, jobs=jobs)
    assert clean.verdict == "pass"
    by_name = {o.fault: o for o in outcomes}
    assert [o.fault for o in outcomes] == [f.name for f in toy.FAULTS]
    assert by_name["e_off"].observed == "fail" and not by_name["e_off"].survived
    assert by_name["e_off"].flipped == ["e: holds -> fails"]
    assert by_name["no_op"].observed == "pass" and by_name["no_op"].survived
    assert by_name["no_op_by_design"].observed == "pass" and not by_name["no_op_by_design"].survived
    assert by_name["crash"].observed == "error" and not by_name["crash"].survived
    assert "ZeroDivisionError" in by_name["crash"].flipped[0]
    assert math.e == math.exp(1.0) and math.sqrt(4.0) == 2.0   # nothing leaks out of the harness


def test_seed_bases_draw_disjoint_seeds(toy):
    ToyConfig = toy.ToyConfig
    bases = [ToyConfig(seeds=3, seed_base=b).seed_range() for b in range(4)]
    assert list(bases[0]) == [0, 1, 2] and list(bases[1]) == [3, 4, 5]
    seen = [s for r in bases for s in r]
    assert len(seen) == len(set(seen))
    assert list(ToyConfig(seed_base=2).seed_range(5)) == [10, 11, 12, 13, 14]

"""The check tests read the set-up's quick result only when this very code and torch wrote it with the
check's quick config; any other result.json is ignored and the check is run."""
import json

from ntkcheck.checks.config import to_json
from ntkcheck.checks.registry import get
from ntkcheck.provenance import provenance, source_digest
from ntkcheck.result import Result, claim


def _write(root, name="tp_scaling", **change):
    config = to_json(get(name).default_config(True))
    prov = provenance(1.0)
    result = Result(name, [claim("a.slope", "a slope", predicted=-0.5, measured=-0.49, relation="==",
                                 tolerance=0.15, ci=(-0.52, -0.46))], config=config, provenance=prov)
    blob = result.to_json()
    for key, value in change.items():   # e.g. source="0" puts provenance["source"] = "0"
        if key in blob["config"]:
            blob["config"][key] = value
        else:
            blob["provenance"][key] = value
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "result.json").write_text(json.dumps(blob))


def test_a_result_of_this_code_is_reused(tmp_path, reusable_quick):
    _write(tmp_path)
    got = reusable_quick("tp_scaling", tmp_path)
    assert got is not None and got.verdict == "pass" and got.claim("a.slope").measured == -0.49


def test_results_of_other_code_configs_or_files_are_not(tmp_path, reusable_quick):
    assert reusable_quick("tp_scaling", tmp_path) is None                      # no result.json
    for change in ({"source": "0" * 16}, {"torch": "0.0"}, {"widths": [16, 32]}):
        _write(tmp_path, **change)
        assert reusable_quick("tp_scaling", tmp_path) is None, change
    (tmp_path / "tp_scaling" / "result.json").write_text('{"name": "tp_sc')     # cut short by a kill
    assert reusable_quick("tp_scaling", tmp_path) is None


def test_the_source_digest_follows_every_file(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "sub" / "b.py").write_text("y = 2\n")
    first = source_digest([tmp_path / "pkg"])
    (tmp_path / "pkg" / "sub" / "b.py").write_text("y = 3\n")
    second = source_digest([tmp_path / "pkg"])
    (tmp_path / "pkg" / "sub" / "b.py").rename(tmp_path / "pkg" / "b.py")       # same content, another path
    third = source_digest([tmp_path / "pkg"])
    assert len({first, second, third}) == 3 and source_digest() == source_digest()

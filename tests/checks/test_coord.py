"""The coordinate check on models ntkcheck did not write: muP passes, SP with a fixed lr fails, bad input is one line."""
import json
import textwrap

import pytest

from ntkcheck.checks import coord_check
from ntkcheck.checks.coord import load_factory
from ntkcheck.cli import main

USER_MODELS = textwrap.dedent('''
    import torch
    from torch import nn


    class ScaledLinear(nn.Linear):
        """z = mult * x W^T, W ~ N(0, std^2): the multiplier inside the module, as mup's layers have it."""

        def __init__(self, fan_in, fan_out, mult, std):
            super().__init__(fan_in, fan_out, bias=False)
            self.mult = mult
            nn.init.normal_(self.weight, std=std)

        def forward(self, x):
            return super().forward(x) * self.mult


    def mup_mlp(width, d_in=16):
        """muP for Adam with one learning rate for every tensor: hidden and readout multipliers 1/n."""
        return nn.Sequential(ScaledLinear(d_in, width, 1.0, d_in ** -0.5), nn.Tanh(),
                             ScaledLinear(width, width, 1.0 / width, width ** 0.5), nn.Tanh(),
                             ScaledLinear(width, 1, 1.0 / width, 1.0))


    def sp_mlp(width, d_in=16):
        """PyTorch's default init and the same learning rate at every width."""
        return nn.Sequential(nn.Linear(d_in, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                             nn.Linear(width, 1))


    def broken(width):
        raise ValueError("no such width")


    def not_a_module(width):
        return 3
''')
# SP readout growth only clears the tolerance from width 64 up (32..256: slope 0.17-0.25, CI at the edge);
# 6 seeds keep the flat muP readout's CI inside it (2 seeds: [-0.07, 0.15])
FAST = ["--widths", "64", "128", "256", "512", "1024", "--steps", "3", "--seeds", "6"]


@pytest.fixture()
def model_file(tmp_path):
    path = tmp_path / "my_models.py"
    path.write_text(USER_MODELS)
    return path


def test_mup_passes_and_sp_with_a_fixed_lr_fails_naming_the_layers(model_file, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["coord", f"{model_file}:mup_mlp", "--out", str(out), *FAST]) == 0
    mup = json.loads((out / "coord_mup_mlp" / "result.json").read_text())
    assert mup["verdict"] == "pass" and mup["kind"] == "check"
    assert "layers that grow with width: none" in capsys.readouterr().out
    assert main(["coord", f"{model_file}:sp_mlp", "--out", str(out), *FAST]) == 0
    sp = json.loads((out / "coord_sp_mlp" / "result.json").read_text())
    assert sp["verdict"] == "fail"
    failing = {c["id"] for c in sp["claims"] if c["state"] == "fails"}
    assert {"2.update", "4.update", "output.update", "output.activation"} <= failing   # hidden and readout grow
    assert "0.update" not in failing                                                   # the input layer does not
    details = json.loads((out / "coord_sp_mlp" / "details.json").read_text())
    assert "output" in details["growing"] and "0" not in details["growing"]
    assert (out / "coord_sp_mlp" / "coord_check.png").stat().st_size > 1000
    assert (out / "coord_sp_mlp" / "measurements.csv").read_text().startswith("width,seed,step,layer")
    assert "coord_sp_mlp" in (out / "report.md").read_text()


def test_python_form_on_ntkcheck_width_models(tmp_path):
    """The same check through the Python API, on the factory's own networks and their per-tensor rates."""
    from ntkcheck.models import build

    def make(param):
        return lambda n: build("mlp", n, param, seed=0, d_in=8, depth=2)

    kw = dict(widths=[64, 128, 256, 512], optimizer="sgd", lr=0.1, steps=2, seeds=2, out=tmp_path)
    assert coord_check(make("MUP"), name="mup", **kw).verdict == "pass"
    sp = coord_check(make("SP"), name="sp", **kw)
    assert sp.verdict == "fail" and sp.claim("output.update").measured > 0.5


@pytest.mark.parametrize("target, fragment", [
    ("{dir}/nope.py:mup_mlp", "does not exist"),
    ("{file}:broken", "broken(width=64) raised ValueError: no such width"),
    ("{file}:not_a_module", "not a torch.nn.Module"),
    ("{file}:missing", "has no function 'missing'"),
    ("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
    ("{file}", "FILE_OR_MODULE:FUNCTION"),
])
def test_bad_factories_are_one_line_and_exit_2(model_file, tmp_path, capsys, target, fragment):
    spec = target.format(dir=tmp_path, file=model_file)
    assert main(["coord", spec, "--out", str(tmp_path / "runs"), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ntkcheck: error:") and fragment in err


def test_a_file_that_fails_to_import_is_one_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\nraise RuntimeError('boom at import')\n")
    with pytest.raises(Exception, match="importing .*bad.py.* failed: RuntimeError: boom at import"):
        load_factory(f"{bad}:f")

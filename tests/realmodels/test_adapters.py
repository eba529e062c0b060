"""Adapters: f equals the model's own logits; label words, templates and heads fail clearly."""
import pytest
import torch

from ntkcheck.errors import UserError
from ntkcheck.realmodels.data import Example
from ntkcheck.realmodels.tasks import MASK, S1, S2, TASKS, custom_task, get_task

pytestmark = pytest.mark.hf

EXAMPLES = [Example("a good movie", 1), Example("bad , very bad and terrible story about it", 0),
            Example("okay", 1)]


def _reference(model, x, ids):
    """The model's own logits (its own 2-D padding mask) at the readout position, label-word columns."""
    with torch.no_grad():
        lg = model(input_ids=x[:, 0], attention_mask=x[:, 1]).logits
    pos = x[:, 2].argmax(1)
    return lg[torch.arange(len(x)), pos][:, ids]


@pytest.mark.parametrize("arch", ["roberta", "gpt-neo"])
def test_f_equals_model_logits(loaded, arch):
    from ntkcheck.realmodels.adapters import make_adapter

    model, tok, mode = loaded[arch]
    assert mode == ("mlm" if arch == "roberta" else "causal")
    ad = make_adapter(model, tok, mode, task=get_task("sst2"))
    x = ad.encode(EXAMPLES)
    assert x.shape[:2] == (3, 3) and bool((x[:, 1].sum(1) < x.shape[2]).any())  # padding present
    toks = tok.convert_ids_to_tokens(x[0, 0, : int(x[0, 1].sum())].tolist())
    if mode == "mlm":
        assert toks[int(x[0, 2].argmax())] == tok.mask_token  # readout at the mask
    else:
        assert toks[-2:] == ["it", "was"] and int(x[0, 2].argmax()) == len(toks) - 1  # next token after "It was"
    out = ad.f(ad.params, x)
    ref = _reference(model, x, [i[0] for i in ad.label_ids])
    assert out.shape == (3, 2)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    single = torch.cat([ad.f(ad.params, x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(single, out, rtol=1e-5, atol=1e-5)  # padding does not leak


def test_vmap_gradients_match_autograd(loaded):
    from torch.func import jacrev, vmap

    from ntkcheck.realmodels.adapters import make_adapter

    model, tok, mode = loaded["gpt-neo"]
    ad = make_adapter(model, tok, mode, task=get_task("sst2"), params=r"h\.1\.")
    x = ad.encode(EXAMPLES[:2])
    J = vmap(lambda xi: jacrev(lambda p: ad.f(ad.merged(p), xi[None])[0])(ad.trainable))(x)
    p = {k: v.clone().requires_grad_(k in ad.select) for k, v in ad.params.items()}
    g = torch.autograd.grad(ad.f(p, x[1:2])[0, 1], [p[k] for k in ad.select])
    for (name, Jn), gn in zip(J.items(), g):
        torch.testing.assert_close(Jn[1, 1], gn, rtol=1e-5, atol=1e-6)
    assert ad.select and all(".h.1." in k for k in ad.select)
    assert set(ad.select) < set(ad.params)                     # the rest stays in params, unselected


def test_label_word_errors(loaded):
    from ntkcheck.realmodels.adapters import make_adapter

    model, tok, mode = loaded["roberta"]
    with pytest.raises(UserError, match=r"label word 'very good' is 2 tokens \['very', 'good'\]"):
        make_adapter(model, tok, mode, task=get_task("sst2"), label_words=["terrible", "very good"])
    with pytest.raises(UserError, match="label word 'zyzzyva' is not in the vocabulary"):
        make_adapter(model, tok, mode, task=get_task("sst2"), label_words=["terrible", "zyzzyva"])
    for combine in ("first", "mean"):
        ad = make_adapter(model, tok, mode, task=get_task("sst2"), label_words=["terrible", "very good"],
                          multi_token=combine)
        x = ad.encode(EXAMPLES)
        ref = _reference(model, x, ad.label_ids[1])
        want = ref[:, 0] if combine == "first" else ref.mean(1)
        torch.testing.assert_close(ad.f(ad.params, x)[:, 1], want, rtol=1e-5, atol=1e-5)


def test_template_errors(loaded):
    from ntkcheck.realmodels.adapters import make_adapter

    model, tok, mode = loaded["roberta"]
    with pytest.raises(UserError, match=r"template '<S1> It was \.' has no \[MASK\]"):
        make_adapter(model, tok, mode, template="<S1> It was .", label_words=["bad", "good"])
    with pytest.raises(UserError, match="has no <S1>"):
        make_adapter(model, tok, mode, template="It was [MASK] .", label_words=["bad", "good"])
    cmodel, ctok, cmode = loaded["gpt-neo"]
    with pytest.raises(UserError, match=r"template '\[MASK\] : <S1>': a causal LM predicts the word after"):
        make_adapter(cmodel, ctok, cmode, task=custom_task(get_task("trec"), "[MASK] : <S1>"))
    with pytest.raises(UserError, match="no mask token"):
        make_adapter(cmodel, ctok, "mlm", task=get_task("sst2"))
    with pytest.raises(UserError, match="--params 'nomatch' matches no parameter"):
        make_adapter(model, tok, mode, task=get_task("sst2"), params="nomatch")


def test_head_adapters(loaded):
    from ntkcheck.realmodels.adapters import linear_probe, make_adapter

    model, tok, _ = loaded["roberta"]
    ex = [Example("good great good", 1), Example("bad terrible", 0), Example("great", 1), Example("bad", 0)]
    ad0 = make_adapter(model, tok, "head", task=get_task("sst2"))
    x = ad0.encode(ex)
    assert int(x[0, 2].argmax()) == 0  # encoder: first token
    y = torch.tensor([e.label for e in ex])
    ad = make_adapter(model, tok, "head", task=get_task("sst2"), probe_data=(x, y))
    out = ad.f(ad.params, x)
    assert out.shape == (4, 2) and bool((out.argmax(1) == y).all())  # linear probing fits 4 points
    h = ad.features(x)
    torch.testing.assert_close(out, h @ ad.params["head.weight"].T + ad.params["head.bias"], rtol=1e-5, atol=1e-5)
    W, b = linear_probe(h, torch.tensor([0.5, -1.0, 2.0, 0.0]), 1, l2=0.0)
    assert W.shape == (1, h.shape[1]) and b.shape == (1,)
    reg = make_adapter(model, tok, "head", num_outputs=1)
    assert reg.f(reg.params, x).shape == (4, 1)
    cmodel, ctok, _ = loaded["gpt-neo"]
    dec = make_adapter(cmodel, ctok, "head", task=get_task("sst2"))
    xd = dec.encode(ex)
    assert int(xd[0, 2].argmax()) == int(xd[0, 1].sum()) - 1  # decoder: last real token


def test_causal_templates_read_every_sentence_before_the_label_word():
    """A causal LM scores the label word after the text: every registered task's causal template puts [MASK]
    after all its sentence slots, keeps [KV] Table 3's template for masked LMs, and a --template replaces both."""
    moved = []
    for t in TASKS.values():
        c = t.template_for("causal")
        prefix = c.split(MASK)[0]
        assert S1 in prefix and (S2 in prefix) == t.pair, t.name
        assert t.template_for("mlm") == t.template_for("head") == t.template
        if c != t.template:
            moved.append(t.name)
    assert moved == ["trec", "mnli", "snli", "qnli", "rte", "mrpc", "qqp"]   # [MASK] first in Table 3
    mine = custom_task(get_task("trec"), "<S1> It is about [MASK] .")
    assert mine.template_for("causal") == mine.template == "<S1> It is about [MASK] ."
    assert custom_task(get_task("trec"), label_words=list("abcdef")).template_for("causal") == "<S1> Category : [MASK]"


def test_trec_causal_adapter_reads_the_label_word_last(loaded):
    """TREC on a causal LM takes its causal template, and f is the model's logits at the last prompt token."""
    from ntkcheck.realmodels.adapters import make_adapter

    model, tok, mode = loaded["gpt-neo"]
    ad = make_adapter(model, tok, mode, task=get_task("trec"))
    assert ad.template == "<S1> Category : [MASK]" and len(ad.label_words) == 6
    x = ad.encode([Example("what is the capital of france ?", 4), Example("who wrote it ?", 3)])
    toks = tok.convert_ids_to_tokens(x[0, 0, : int(x[0, 1].sum())].tolist())
    assert toks[-2:] == ["<unk>", ":"] and int(x[0, 2].argmax()) == len(toks) - 1   # "category": not a tiny word
    ref = _reference(model, x, [i[0] for i in ad.label_ids])
    torch.testing.assert_close(ad.f(ad.params, x), ref, rtol=1e-5, atol=1e-5)

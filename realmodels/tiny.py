"""Tiny local transformers models for tests and CI: no download, built from configs.

``make_tiny(dir, arch)`` writes a transformers folder (config, safetensors
weights, tokenizer) that ``ntkcheck lm ... --model DIR`` loads like any
pretrained model. The tokenizer is a word-level tokenizer (lower-cased,
whitespace + punctuation pre-tokenizer) whose vocabulary is a built-in list
of template and label words of every registered task plus, when a data
folder is given, the most frequent words of its files; the model's
``vocab_size`` is that tokenizer's. Weights are random (seeded): the model is
"pretrained" on nothing, which is all that tests of identities need.
"""
from __future__ import annotations

import collections
import re
from pathlib import Path

import torch

from ntkcheck.errors import UserError
from ntkcheck.realmodels.tasks import TASKS

ARCHS = ("roberta", "gpt-neo", "bert", "llama")
_SPECIALS_MLM = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]
_SPECIALS_CAUSAL = ["<pad>", "<|endoftext|>", "<unk>"]
_BASE_WORDS = ("the a an and of to is it was this that in on for with as not no yes maybe very good bad "
               "great terrible okay movie film story one about news article what who where when how why "
               "which ? . , : ! ' -").split()


def base_vocabulary() -> list[str]:
    """Words every tiny tokenizer knows: common words plus all template and label words, lower-cased.

    The causal forms of the templates (``Task.causal_template``) are left out: their words read as <unk> on
    a tiny model, which no test depends on, while adding them would shift the corpus words' ids and so
    redraw the tiny models that tests pin."""
    words = list(_BASE_WORDS)
    for t in TASKS.values():
        words += [w.lower() for w in t.label_words]
        words += [w.lower() for w in re.findall(r"\w+|[^\w\s]", re.sub(r"<S\d>|\[MASK\]", " ", t.template))]
    return list(dict.fromkeys(words))


def corpus_vocabulary(data_dir: str | Path | None, size: int) -> list[str]:
    """The ``size`` most frequent lower-cased words of the files in ``data_dir`` (empty when None)."""
    if data_dir is None:
        return []
    from ntkcheck.realmodels.data import decode_line

    counts: collections.Counter = collections.Counter()
    for p in sorted(Path(data_dir).iterdir()):
        if p.is_file() and not p.name.lower().endswith(".md"):
            for line in p.read_bytes().split(b"\n"):
                counts.update(re.findall(r"\w+|[^\w\s]", decode_line(line).lower())[1:])
    return [w for w, _ in counts.most_common(size)]


def build_tokenizer(words: list[str], arch: str):
    """A PreTrainedTokenizerFast over a word-level vocabulary: specials first, then ``words``.

    roberta/bert: <s> A </s> (pairs <s> A </s></s> B </s>), mask token <mask>;
    gpt-neo: no added specials, <|endoftext|> as bos/eos.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    mlm = arch in ("roberta", "bert")
    specials = _SPECIALS_MLM if mlm else _SPECIALS_CAUSAL
    vocab = {w: i for i, w in enumerate(dict.fromkeys(specials + words))}
    tk = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    if mlm:
        tk.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
            special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])])
        return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                       pad_token="<pad>", mask_token="<mask>", cls_token="<s>", sep_token="</s>")
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<unk>", pad_token="<pad>")


def build_model(arch: str, vocab_size: int, *, hidden: int = 32, layers: int = 2, heads: int = 2,
                max_positions: int = 256, seed: int = 0, pad_token_id: int = 0):
    """A randomly initialized (seeded) tiny RobertaForMaskedLM / BertForMaskedLM / GPTNeoForCausalLM /
    LlamaForCausalLM, eager attention."""
    import transformers as tr

    torch.manual_seed(seed)
    if arch == "roberta":
        cfg = tr.RobertaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                               num_attention_heads=heads, intermediate_size=4 * hidden,
                               max_position_embeddings=max_positions + 2, pad_token_id=pad_token_id,
                               bos_token_id=1, eos_token_id=2, type_vocab_size=1)
        cls = tr.RobertaForMaskedLM
    elif arch == "bert":
        cfg = tr.BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                            num_attention_heads=heads, intermediate_size=4 * hidden,
                            max_position_embeddings=max_positions, pad_token_id=pad_token_id)
        cls = tr.BertForMaskedLM
    elif arch == "gpt-neo":
        cfg = tr.GPTNeoConfig(vocab_size=vocab_size, hidden_size=hidden, num_layers=layers, num_heads=heads,
                              attention_types=[[["global", "local"], layers // 2]] + ([[["global"], 1]] if layers % 2 else []),
                              window_size=16,
                              max_position_embeddings=max_positions, bos_token_id=1, eos_token_id=1,
                              intermediate_size=4 * hidden)
        cls = tr.GPTNeoForCausalLM
    elif arch == "llama":
        # SmolLM2's shape in small: RMSNorm, SwiGLU, rotary positions, grouped-query attention, tied embeddings
        cfg = tr.LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                             num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                             intermediate_size=3 * hidden, max_position_embeddings=max_positions,
                             tie_word_embeddings=True, bos_token_id=1, eos_token_id=1, pad_token_id=pad_token_id)
        cls = tr.LlamaForCausalLM
    else:
        raise UserError(f"--arch {arch!r}: expected one of {', '.join(ARCHS)}")
    # Unit-scale init (std 1/sqrt(n), not transformers' 0.02) so a random tiny model's outputs and
    # gradients depend visibly on its input, as a pretrained model's do.
    cfg.initializer_range = hidden ** -0.5
    cfg._attn_implementation = "eager"
    model = cls(cfg)
    model.eval()
    return model


def make_tiny(out_dir: str | Path, arch: str = "roberta", *, data_dir: str | Path | None = None,
              corpus_words: int = 2000, hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0) -> Path:
    """Write a tiny model folder loadable with ``from_pretrained(out_dir)``; returns the folder."""
    if arch not in ARCHS:
        raise UserError(f"--arch {arch!r}: expected one of {', '.join(ARCHS)}")
    if hidden % heads:
        raise UserError(f"--hidden {hidden} is not divisible by --heads {heads}")
    words = base_vocabulary() + corpus_vocabulary(data_dir, corpus_words)
    tok = build_tokenizer(list(dict.fromkeys(words)), arch)
    model = build_model(arch, len(tok), hidden=hidden, layers=layers, heads=heads, seed=seed,
                        pad_token_id=tok.pad_token_id)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {str(out)!r}: {e.strerror or e}") from None
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out

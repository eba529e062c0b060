"""Adapters from a transformers model to the engine's functional view (f, params).

f(params, x) -> Tensor[B, C] through torch.func.functional_call; params is a
dict {name: tensor} of the module's tensors, and ``select`` names the ones that
are trained and differentiated (``--params REGEX``; the kernel engine's and the
training loop's select=), so f never splits or re-merges them. The input x is an encoded batch, a LongTensor
[B, 3, T]: row 0 token ids, row 1 attention mask, row 2 a one-hot indicator
of the readout position. Reading out by a one-hot product (h = sum_t s_t h_t)
rather than by indexing keeps f free of data-dependent indexing, so it works
under torch.func.vmap and with any padding.

Outputs ([KV] Sec. 3.1):
- mode "mlm" (prompt-based FT of a masked LM): f(s)_c = Phi_c^T h_[MASK](s), the
  logit of label word c at the mask of the template;
- mode "causal" (prompt-based, causal LM): the logit of label word c as the next
  token after the template truncated at [MASK] (readout at the last real token);
- mode "head" (standard FT): f(s) = W h_r(s) + b with a new linear head on the
  encoder's first token or the decoder's last token, W, b initialized by linear
  probing (multinomial logistic regression on frozen features); with
  ``num_outputs=1`` a scalar regression head initialized by least squares
  ([ES] Sec. 5.1).

The model runs with eager attention (torch.func cannot differentiate the fused
kernels twice), in eval mode (dropout off), with TF32 off on CUDA.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call

from ntkcheck.errors import UserError
from ntkcheck.realmodels.data import Example
from ntkcheck.realmodels.tasks import MASK, S1, S2, Task, check_template

MODES = ("mlm", "causal", "head")
COMBINE = ("error", "first", "mean")


def disable_tf32() -> None:
    """Full float32 matmuls on CUDA: TF32 would perturb kernels at the 1e-3 level."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def resolve_device(device: str | None) -> torch.device:
    """'cpu', 'cuda', 'cuda:1' or None (cpu) -> torch.device; cuda without a GPU is a UserError."""
    try:
        dev = torch.device(device or "cpu")
    except (RuntimeError, TypeError):
        raise UserError(f"--device {device!r}: expected cpu, cuda or cuda:i") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device!r}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
        disable_tf32()
    elif dev.type not in ("cpu", "mps"):
        raise UserError(f"--device {device!r}: expected cpu or cuda[:i]")
    return dev


MODEL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                "float64": torch.float64}


def resolve_model_dtype(name: str, device: torch.device | str | None = None) -> torch.dtype:
    """--model-dtype NAME -> torch.dtype, after a small matmul and backward pass in it on ``device``:
    a dtype the device cannot run is a UserError before any model loads."""
    if name not in MODEL_DTYPES:
        raise UserError(f"--model-dtype {name!r}: expected one of {', '.join(MODEL_DTYPES)}")
    dt, dev = MODEL_DTYPES[name], torch.device(device or "cpu")
    try:
        a = torch.ones(4, 4, dtype=dt, device=dev, requires_grad=True)
        (a @ a).sum().backward()
    except (RuntimeError, TypeError) as e:
        raise UserError(f"--model-dtype {name!r} is not supported on {dev}: {str(e).splitlines()[0]}") from None
    return dt


def load_pretrained(path: str | Path, *, mode: str = "auto", device: str | torch.device | None = None,
                    gguf_file: str | None = None, dtype: torch.dtype = torch.float32):
    """(model, tokenizer, mode) from a local transformers folder (or a .gguf file), no network access,
    its weights in ``dtype`` (--model-dtype; float32 by default).

    mode "auto" picks "mlm" when the config is a masked LM, "causal" when it is a
    causal LM, else "head" (an encoder without an LM head, e.g. a sentence-embedding BERT).
    """
    from ntkcheck.log import quiet_libraries

    quiet_libraries()   # NTKCHECK_PROGRESS=0 / TQDM_DISABLE silence transformers' bars too
    import transformers
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    quiet_libraries()

    path = Path(path)
    kw = dict(local_files_only=True)
    if path.is_file() and path.suffix == ".gguf":
        gguf_file, path = path.name, path.parent
    if gguf_file:
        kw["gguf_file"] = gguf_file
    if not path.exists():
        raise UserError(f"--model {str(path)!r} does not exist")
    try:
        config = AutoConfig.from_pretrained(path, **kw)
    except (OSError, ValueError) as e:
        raise UserError(f"--model {str(path)!r} is not a transformers model folder: {str(e).splitlines()[0]}") \
            from None
    archs = list(getattr(config, "architectures", None) or [])
    if mode == "auto":
        if any("MaskedLM" in a for a in archs):
            mode = "mlm"
        elif any("CausalLM" in a or "LMHead" in a for a in archs) or gguf_file:
            mode = "causal"
        else:
            mode = "head"
    if mode not in MODES:
        raise UserError(f"--mode {mode!r}: expected one of {', '.join(MODES)}")
    cls = {"mlm": AutoModelForMaskedLM, "causal": AutoModelForCausalLM, "head": None}[mode]
    if cls is None:
        # A head on top of the encoder/decoder; an LM-head class is fine too (base_model is used).
        cls = AutoModelForMaskedLM if any("MaskedLM" in a for a in archs) else (
            AutoModelForCausalLM if any("CausalLM" in a for a in archs) else AutoModel)
    try:
        model = cls.from_pretrained(path, attn_implementation="eager", dtype=dtype, **kw)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"--model {str(path)!r}: cannot load as {mode} model: {str(e).splitlines()[0]}") \
            from None
    tok = AutoTokenizer.from_pretrained(path, **kw)
    model.eval()
    model.to(resolve_device(str(device)) if device is not None else "cpu")
    del transformers
    return model, tok, mode


class _Readout(nn.Module):
    """backbone -> hidden state at the readout position -> output head (label-word logits or linear head)."""

    def __init__(self, backbone: nn.Module, head: nn.Module | None, full_model: nn.Module | None,
                 label_ids: torch.Tensor | None, combine: str, causal: bool):
        super().__init__()
        self.causal = causal
        self.backbone = backbone
        self.head = head
        self.full = full_model  # used only when the LM head cannot be split off
        self.combine = combine
        self.register_buffer("label_ids", label_ids if label_ids is not None else torch.zeros(0, 1, dtype=torch.long),
                             persistent=False)

    def mask4d(self, am: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Additive attention mask [B, 1, T, T]: 0 where query q may see key k, finfo.min elsewhere.

        Key k is visible iff am[k] = 1 (and k <= q for causal models). Built by
        arithmetic only, so it is vmap-safe; transformers takes a 4D mask as given
        instead of building one with data-dependent shortcuts that vmap rejects.
        """
        T = am.shape[-1]
        keep = am[:, None, None, :].to(dtype).expand(am.shape[0], 1, T, T)
        if self.causal:
            keep = keep * torch.ones(T, T, dtype=dtype, device=am.device).tril()
        return (1.0 - keep) * torch.finfo(dtype).min

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """h_r(x) = sum_t s_t h_t(x): the backbone's last hidden state at the readout, [B, n]."""
        ids, am, sel = x[:, 0], x[:, 1], x[:, 2]
        dtype = self.backbone.dtype if hasattr(self.backbone, "dtype") else torch.float32
        hs = self.backbone(input_ids=ids, attention_mask=self.mask4d(am, dtype)).last_hidden_state  # [B, T, n]
        return (hs * sel.unsqueeze(-1).to(hs.dtype)).sum(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, am, sel = x[:, 0], x[:, 1], x[:, 2]
        if self.full is not None:
            dtype = self.full.dtype if hasattr(self.full, "dtype") else torch.float32
            out = self.full(input_ids=ids, attention_mask=self.mask4d(am, dtype)).logits  # [B, T, V]
            logits = (out * sel.unsqueeze(-1).to(out.dtype)).sum(1)
        else:
            logits = self.head(self.hidden(x))
        if self.label_ids.numel() == 0:
            return logits  # linear head: [B, C]
        picked = logits[:, self.label_ids]  # [B, C, P]
        if self.combine == "first":
            return picked[..., 0]
        return picked.mean(-1)  # "mean" (the table repeats pieces evenly) or single tokens (P = 1)


@dataclass
class LMAdapter:
    """A transformers model seen as f(params, x) -> [B, C] (see the module docstring).

    Attributes: ``params`` every tensor of the module (detached copies), ``select`` the
    names of the trainable ones, ``module`` the torch module f calls, ``tokenizer``,
    ``mode``, ``template``, ``label_words``, ``label_ids`` (token ids, one list per label).
    """

    module: nn.Module
    tokenizer: object
    mode: str
    template: str
    label_words: tuple[str, ...]
    label_ids: list[list[int]]
    params: dict[str, torch.Tensor]
    select: list[str]
    device: torch.device
    max_length: int = 256
    pair: bool = False
    info: dict = field(default_factory=dict)

    @property
    def num_outputs(self) -> int:
        return len(self.label_ids) if self.label_ids else int(self.info.get("num_outputs", 0))

    def f(self, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """f(params, x) -> [B, C]: the model with its tensors replaced by ``params`` (a tensor missing from
        params keeps the module's own value). Give every tensor in one dtype: a float64 kernel casts them all."""
        return functional_call(self.module, params, (x,), strict=False)

    @property
    def trainable(self) -> dict[str, torch.Tensor]:
        """{name: tensor} of the selected (trainable) tensors."""
        return {k: self.params[k] for k in self.select}

    def merged(self, theta: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every tensor, with the ones in ``theta`` (e.g. fine-tuned trainable tensors) replaced."""
        out = dict(self.params)
        out.update(theta)
        return out

    def features(self, x: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """h_r(x): the backbone's hidden state at the readout position, [B, n] (no grad)."""
        return self.batched(self.module.hidden, x, batch_size).to(self.device)

    def trim(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, T] cut to the longest prompt of the batch: right padding that no example needs (a
        padded position changes no output, causal or masked), so f(x) is unchanged; the engine's trim=."""
        length = int(x[:, 1].sum(-1).max()) if x.shape[0] else x.shape[-1]
        return x[..., :max(1, length)]

    def encode(self, examples: Sequence[Example]) -> torch.Tensor:
        """Examples -> LongTensor [B, 3, T] (ids, attention mask, one-hot readout), right-padded, on device."""
        rows = [self._encode_one(e) for e in examples]
        T = max(len(r[0]) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        x = torch.zeros(len(rows), 3, T, dtype=torch.long)
        x[:, 0] = pad
        for i, (ids, pos) in enumerate(rows):
            x[i, 0, :len(ids)] = torch.tensor(ids)
            x[i, 1, :len(ids)] = 1
            x[i, 2, pos] = 1
        return x.to(self.device)

    def outputs(self, x: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None,
                batch_size: int = 16, desc: str | None = None) -> torch.Tensor:
        """f(params, x) for a large x in batches, no grad, [N, C] on the CPU (params default: pretrained).

        Batches take the examples by length and are cut to their longest prompt (``trim``): right padding
        changes no output, so this only skips work; rows come back in the order of x. With ``desc``, a
        progress bar of that name counts the rows."""
        p = self.params if params is None else self.merged(params)
        return self.batched(lambda xb: self.f(p, xb), x, batch_size, desc=desc)

    def batched(self, fn, x: torch.Tensor, batch_size: int = 16, desc: str | None = None) -> torch.Tensor:
        """fn(batch) [B, ...] over x in length-sorted, trimmed batches, no grad, concatenated on the CPU in
        the order of x (see ``outputs``); with ``desc``, a progress bar of that name counts the rows."""
        from ntkcheck.log import progress_bar

        if x.shape[0] == 0:
            with torch.no_grad():
                return fn(x.to(self.device)).cpu()
        order = torch.argsort(x[:, 1].sum(-1), descending=True, stable=True)
        parts = []
        bar = progress_bar(total=x.shape[0], desc=desc, unit="row", disable=desc is None)
        with torch.no_grad(), bar:
            for i in range(0, x.shape[0], batch_size):
                idx = order[i:i + batch_size]
                parts.append(fn(self.trim(x[idx.to(x.device)]).to(self.device)).cpu())
                bar.update(len(idx))
        out = torch.cat(parts)
        back = torch.empty_like(order)
        back[order] = torch.arange(len(order))
        return out[back]

    # ------------------------------------------------------------------ encoding
    def _render(self, e: Example, s1: str) -> str:
        tok = self.tokenizer
        text = self.template
        if self.mode == "causal":
            text = text.split(MASK)[0].rstrip()
        elif self.mode == "mlm":
            text = text.replace(MASK, tok.mask_token)
        text = text.replace(S1, s1)
        if S2 in text:
            text = text.replace(S2, e.text_b or "")
        return text

    def _encode_one(self, e: Example) -> tuple[list[int], int]:
        """(token ids, readout position) of one example; a too-long first sentence is cut, never the template."""
        tok = self.tokenizer
        if self.mode == "head":
            enc = tok(e.text, e.text_b, add_special_tokens=True) if self.pair and e.text_b is not None \
                else tok(e.text, add_special_tokens=True)
            ids = enc["input_ids"][:self.max_length]
            return ids, (0 if self.info.get("readout") == "first" else len(ids) - 1)
        s1 = e.text
        for _ in range(8):
            ids = tok(self._render(e, s1), add_special_tokens=self.mode == "mlm")["input_ids"]
            if self.mode == "causal" and self.info.get("bos") and tok.bos_token_id is not None \
                    and (not ids or ids[0] != tok.bos_token_id):
                ids = [tok.bos_token_id] + ids
            if len(ids) <= self.max_length:
                break
            s_ids = tok(s1, add_special_tokens=False)["input_ids"]
            keep = max(1, len(s_ids) - (len(ids) - self.max_length) - 2)
            s1 = tok.decode(s_ids[:keep])
        else:
            raise UserError(f"cannot fit the template {self.template!r} into --max-length {self.max_length}")
        if self.mode == "mlm":
            where = [i for i, t in enumerate(ids) if t == tok.mask_token_id]
            if len(where) != 1:
                raise UserError(f"template {self.template!r}: found {len(where)} mask tokens after tokenization")
            return ids, where[0]
        return ids, len(ids) - 1


def label_token_ids(tokenizer, words: Sequence[str], *, space: bool, combine: str = "error") -> list[list[int]]:
    """Token ids of each label word as it follows the template (with a leading space when ``space``).

    A word that is more than one token is a UserError naming the word and its
    pieces unless ``combine`` is "first" (logit of the first piece) or "mean"
    (mean of the pieces' logits at the same position); a word that maps to the
    unknown token is always an error.
    """
    if combine not in COMBINE:
        raise UserError(f"--multi-token {combine!r}: expected one of {', '.join(COMBINE)}")
    out = []
    unk = getattr(tokenizer, "unk_token_id", None)
    for w in words:
        ids = tokenizer((" " + w) if space else w, add_special_tokens=False)["input_ids"]
        pieces = tokenizer.convert_ids_to_tokens(ids)
        if not ids:
            raise UserError(f"label word {w!r} tokenizes to nothing")
        if unk is not None and unk in ids:
            raise UserError(f"label word {w!r} is not in the vocabulary (tokenizes to {pieces})")
        if len(ids) > 1 and combine == "error":
            raise UserError(f"label word {w!r} is {len(ids)} tokens {pieces}, not one; pick another word "
                            f"or pass --multi-token first|mean")
        out.append(list(ids))
    return out


def _pad_pieces(ids: list[list[int]], combine: str) -> torch.Tensor:
    """[C, P] id table; for 'mean' shorter words repeat their pieces cyclically only if all lengths match."""
    P = max(len(i) for i in ids)
    if combine == "mean" and any(len(i) != P for i in ids):
        # Equal weights per word require equal piece counts in a dense table: build the mean explicitly
        # by repeating pieces so each word's pieces appear in equal proportion (lcm of lengths).
        import math

        L = 1
        for i in ids:
            L = L * len(i) // math.gcd(L, len(i))
        return torch.tensor([i * (L // len(i)) for i in ids], dtype=torch.long)
    return torch.tensor([i + [i[0]] * (P - len(i)) for i in ids], dtype=torch.long)


def select_params(all_params: Mapping[str, torch.Tensor], pattern: str | None) -> list[str]:
    """Names matching the regular expression ``pattern`` (re.search), all when None; none is a UserError."""
    names = list(all_params)
    if not pattern or pattern == "all":
        return names
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise UserError(f"--params {pattern!r} is not a regular expression: {e}") from None
    chosen = [n for n in names if rx.search(n)]
    if not chosen:
        raise UserError(f"--params {pattern!r} matches no parameter (e.g. {names[0]!r}, {names[-1]!r})")
    return chosen


def _split_head(model: nn.Module, mode: str):
    """(backbone, lm_head or None) for prompt modes: the head maps a hidden state [.., n] to vocab logits."""
    backbone = model.base_model
    if backbone is model:
        return None, None
    for name in ("lm_head", "cls"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return backbone, head
    return None, None


def linear_probe(feats: torch.Tensor, labels: torch.Tensor, num_classes: int, *, l2: float = 1e-3,
                 iters: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """(W [C, n], b [C]) of multinomial logistic regression on frozen features, float64 L-BFGS.

    Minimizes mean_i CE(softmax(W h_i + b), y_i) + l2/2 ||W||^2 on standardized
    features, then folds the standardization into W, b. For ``num_classes == 1``
    (regression) it is ridge least squares: min mean (w.h + b - y)^2 + l2 ||w||^2.
    """
    X = feats.detach().double().cpu()
    mu, sd = X.mean(0), X.std(0).clamp_min(1e-6)
    Z = (X - mu) / sd
    n = Z.shape[1]
    if num_classes == 1:
        y = labels.double().cpu()
        A = torch.cat([Z, torch.ones(len(Z), 1, dtype=torch.float64)], 1)
        reg = l2 * len(Z) * torch.eye(n + 1, dtype=torch.float64)
        reg[-1, -1] = 0
        sol = torch.linalg.solve(A.T @ A + reg, A.T @ y)
        W, b = sol[:n][None] / sd, sol[n:] - (sol[:n] / sd * mu).sum()
        return W.float(), b.float()
    y = labels.long().cpu()
    W = torch.zeros(num_classes, n, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(Z @ W.T + b, y) + 0.5 * l2 * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)
    W, b = W.detach(), b.detach()
    return (W / sd).float(), (b - (W / sd) @ mu).float()


def make_adapter(model: nn.Module, tokenizer, mode: str, *, task: Task | None = None, template: str | None = None,
                 label_words: Sequence[str] | None = None, multi_token: str = "error", params: str | None = None,
                 max_length: int = 256, num_outputs: int | None = None, readout: str = "auto",
                 probe_data: tuple[torch.Tensor, torch.Tensor] | None = None, bos: bool = False,
                 seed: int = 0, lora=None) -> LMAdapter:
    """Wrap ``model`` as an LMAdapter for ``task`` (or an explicit template / label words).

    mode "mlm" / "causal": template + label words define f (label words checked
    to be single tokens, see ``label_token_ids``). mode "head": a linear head
    with ``num_outputs`` outputs (default: the task's label count) at the first
    token (encoders) or the last token (decoders), ``readout`` overriding;
    initialized by ``linear_probe`` on ``probe_data`` = (encoded x, labels) when given,
    else by N(0, 1/n) with ``seed``. ``params`` is a regular expression selecting the
    trainable tensors (the rest frozen). Pooler tensors never enter (f does not use them).
    ``lora`` (a realmodels.lora.LoRASpec) wraps a copy of the model with peft LoRA adapters first; then the
    trainable tensors are the adapters' A and B (and the linear head in head mode), and ``params`` must be None.
    """
    if mode not in MODES:
        raise UserError(f"--mode {mode!r}: expected one of {', '.join(MODES)}")
    if lora is not None:
        from ntkcheck.realmodels.lora import apply_lora

        if params:
            raise UserError(f"--params {params!r} with --lora: LoRA trains its adapters only; "
                            "choose the adapted layers with --lora-targets")
        model = apply_lora(model, lora)
    model.eval()
    device = next(model.parameters()).device
    pair = bool(task.pair) if task is not None else False
    template = template or (task.template_for(mode) if task is not None else None)
    words = tuple(label_words or (task.label_words if task is not None else ()))
    info: dict = {"bos": bos}
    if mode in ("mlm", "causal"):
        if template is None or not words:
            raise UserError("a prompt adapter needs a template and label words (give --task or --template)")
        check_template(template, pair=pair)
        if mode == "mlm" and getattr(tokenizer, "mask_token", None) is None:
            raise UserError("--mode mlm: the tokenizer has no mask token (is this a causal LM? use --mode causal)")
        if mode == "causal":
            prefix = template.split(MASK)[0]
            if S1 not in prefix or (pair and S2 not in prefix):
                raise UserError(f"template {template!r}: a causal LM predicts the word after the text, so "
                                f"{MASK} must come after {S1}{' and ' + S2 if pair else ''}; "
                                "give a --template that ends with [MASK]")
        # Label words are read with a leading space, as LM-BFF does ('Ġ' + word for BPE vocabularies;
        # WordPiece and word-level vocabularies ignore it).
        ids = label_token_ids(tokenizer, words, space=True, combine=multi_token)
        backbone, head = _split_head(model, mode)
        module = _Readout(backbone, head, None if backbone is not None else model,
                          _pad_pieces(ids, multi_token).to(device), multi_token, causal=mode == "causal")
    else:
        config = model.config
        n = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None) or getattr(config, "d_model")
        C = num_outputs or (task.num_labels if task is not None else None)
        if not C:
            raise UserError("--mode head needs a task or --num-outputs")
        is_decoder = bool(getattr(config, "is_decoder", False)) or any(
            "CausalLM" in a for a in (getattr(config, "architectures", None) or []))
        info["readout"] = readout if readout != "auto" else ("last" if is_decoder else "first")
        info["num_outputs"] = C
        lin = nn.Linear(n, C).to(device)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(C, n, generator=g) / n**0.5)
            lin.bias.zero_()
        module = _Readout(model.base_model, lin, None, None, "first", causal=is_decoder)
        ids, words = [], tuple(words)
    module.eval()
    all_params = {k: v.detach().clone() for k, v in module.named_parameters()}
    # The pooler runs (BertModel computes it) but never reaches f: never selected, so it adds no zero columns.
    if lora is not None:
        from ntkcheck.realmodels.lora import lora_names

        chosen = lora_names(all_params) + ([k for k in all_params if k.startswith("head.")] if mode == "head" else [])
    else:
        chosen = select_params({k: v for k, v in all_params.items() if ".pooler." not in k}, params)
    adapter = LMAdapter(module, tokenizer, mode, template or "", words, ids, all_params, chosen,
                        device, max_length, pair, info)
    if mode == "head" and probe_data is not None:
        x, y = probe_data
        W, b = linear_probe(adapter.features(x), y, C)
        adapter.params["head.weight"] = W.to(device)
        adapter.params["head.bias"] = b.to(device)
    return adapter

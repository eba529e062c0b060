"""LoRA on a transformers model through peft (Hu et al. 2021; [KV] Sec. 7, Table 11).

Each target linear layer y = W x becomes

    y = W x + (alpha / r) B A x,   A [r, fan_in] ~ N(0, 1/r),  B [fan_out, r] = 0,

the draw [KV] Lemma D.4 and ntkcheck.models.kernels.lora_kernel assume, so that
E <A a, A a'> = <a, a'> (Johnson-Lindenstrauss). peft's own inits differ in
variance (Kaiming-uniform, or "gaussian" with std 1/r), so A is redrawn here
from torch.Generator(seed), layer by layer in module order. W stays frozen; A and B are the
trainable tensors, named ``<module>.lora_A.default.weight`` /
``<module>.lora_B.default.weight``. At B = 0 the network's function is the
pretrained one and grad_A f = 0, so the LoRA eNTK is the kernel of the B's,
K = (alpha/r)^2 sum_W sum_{t,t'} <g_t, g'_t'> <A a_t, A a'_t'>, which lora_kernel
computes analytically for the same A.

peft does the injection (it knows every architecture's layer names and default
targets); this module only fixes the initialization's seed, works on a copy of
the model (a loaded model is shared with full fine-tuning sessions), draws A, and turns
peft's errors into one-line UserErrors.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ntkcheck.errors import UserError

#: peft's names of the LoRA tensors inside an injected module
LORA_MARK = ".lora_"


@dataclass(frozen=True)
class LoRASpec:
    """--lora RANK --lora-alpha ALPHA --lora-targets a,b (None: peft's defaults for the architecture)."""

    rank: int
    alpha: float | None = None   # None: alpha = 2 rank (scale 2), [KV] Table 4's (r, alpha) = (8, 16)
    targets: tuple[str, ...] | None = None
    seed: int = 0

    @property
    def scale(self) -> float:
        return self.lora_alpha / self.rank

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha) if self.alpha is not None else 2.0 * self.rank


def _peft():
    try:
        import peft
    except ImportError:
        raise UserError("--lora needs peft: pip install 'ntkcheck[hf]'") from None
    return peft


#: version of the A draw below; part of the kernel-cache fingerprint with peft's version (its default targets)
LORA_INIT = "gaussian-1/r-module-order-v1"


def _linear_types() -> tuple[type, ...]:
    """Layer types peft adapts as linear maps: nn.Linear and transformers' Conv1D (GPT-2's c_attn, ...)."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return (nn.Linear,)
    return (nn.Linear, Conv1D)


def linear_module_names(model: nn.Module) -> list[str]:
    """Names of the model's linear modules (what --lora-targets may name, by their last component)."""
    kinds = _linear_types()
    return [n for n, m in model.named_modules() if isinstance(m, kinds)]


def fingerprint_fields(spec: "LoRASpec") -> dict:
    """What a LoRA kernel or fine-tuning depends on beyond the flags: the A draw's scheme and peft's version
    (which fixes its default targets and parameter order)."""
    import importlib.metadata as md

    try:
        version = md.version("peft")
    except md.PackageNotFoundError:
        version = None
    return {"lora_alpha": spec.lora_alpha, "lora_init": LORA_INIT, "peft": version}


def apply_lora(model: nn.Module, spec: LoRASpec) -> nn.Module:
    """A copy of ``model`` with LoRA adapters of ``spec`` injected by peft (the module docstring's update),
    A ~ N(0, 1/r) drawn from torch.Generator(spec.seed) in module order, B = 0.

    A target that names no linear layer of the model is a UserError listing some that exist."""
    peft = _peft()
    if not isinstance(spec.rank, int) or spec.rank < 1:
        raise UserError(f"--lora {spec.rank!r}: the rank must be a positive integer")
    if spec.alpha is not None and not spec.alpha > 0:
        raise UserError(f"--lora-alpha {spec.alpha!r}: must be positive")
    linears = linear_module_names(model)
    if spec.targets:
        leaf = {n.rsplit(".", 1)[-1] for n in linears}
        missing = [t for t in spec.targets if t not in leaf and t not in linears]
        if missing:
            raise UserError(f"--lora-targets {','.join(missing)}: no linear layer of this model is named so "
                            f"(it has e.g. {', '.join(sorted(leaf)[:8])})")
    cfg = peft.LoraConfig(r=spec.rank, lora_alpha=spec.lora_alpha,
                          target_modules=list(spec.targets) if spec.targets else None, lora_dropout=0.0,
                          bias="none", init_lora_weights=True)
    copied = copy.deepcopy(model)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    with torch.random.fork_rng(devices=[]):   # peft's own init draws from the global generator
        try:
            if cfg.target_modules is None:
                cfg = _default_targets(peft, cfg, model_type)
            out = peft.inject_adapter_in_model(cfg, copied)
        except ValueError as e:
            raise UserError(f"--lora on {model_type or type(model).__name__}: {str(e).splitlines()[0]}") from None
    g = torch.Generator().manual_seed(spec.seed)
    with torch.no_grad():
        for name, w in out.named_parameters():
            if ".lora_A." in name:
                w.copy_(torch.randn(w.shape, generator=g, dtype=torch.float64).div_(spec.rank ** 0.5).to(w))
            elif ".lora_B." in name:
                w.zero_()
    out.eval()
    return out


def _default_targets(peft, cfg, model_type: str | None):
    """peft's default LoRA targets of the architecture (e.g. q_proj, v_proj for Llama), or a UserError."""
    try:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as table
    except ImportError:   # older peft layouts
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as table
    if model_type not in table:
        raise UserError(f"--lora: peft has no default targets for model type {model_type!r}; "
                        "give --lora-targets (names of linear layers)")
    cfg.target_modules = set(table[model_type])
    return cfg


def lora_names(names: Sequence[str]) -> list[str]:
    """The LoRA tensors (A and B of every adapted layer) among parameter ``names``."""
    return [n for n in names if LORA_MARK in n]


def lora_pairs(names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """{base weight name: (A name, B name)} of an injected module's parameter ``names``: peft keeps the
    frozen W at ``<module>.base_layer.weight``."""
    out = {}
    for n in names:
        if ".lora_A." in n:
            module = n.split(".lora_A.")[0]
            out[module + ".base_layer.weight"] = (n, n.replace(".lora_A.", ".lora_B."))
    return out

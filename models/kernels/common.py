"""Shared vocabulary of the kernel engine: kinds, methods, parameter subsets, feature maps, shapes.

Every kernel here has the form ([KV] Def. 3.4, 4.2, 4.4, and the per-tensor
form of Thm. C.4)

    K[i, a, j, b] = sum_M eta_M < phi1(grad_M f_a(x1_i)), phi2(grad_M f_b(x2_j)) >

with M over the selected parameter tensors, eta_M a per-tensor weight (a
learning rate; 1 by default), and (phi1, phi2) fixed by the kind:

    sgd          (id, id)
    signgd       (sign, sign)        or (eps-sign, eps-sign) when eps > 0
    asym_signgd  (id, sign)          or (id, eps-sign)       when eps > 0

eps-sign(g) = g / (|g| + eps_M) ([KV] Assumption C.2g), with eps_M a float per
tensor; eps = 0 is the exact sign. Shapes: x1 [N1, ...], x2 [N2, ...],
f(params, x) -> [B, C], K -> [N1, C, N2, C].
"""
from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import torch

from ntkcheck.errors import UserError
from ntkcheck.models.optim import eps_sign

Params = dict[str, torch.Tensor]
Selector = Callable[[str], bool] | str | Iterable[str] | None

DEFAULT_MEMORY_BUDGET = 2 * 2**30  # bytes


class MemoryBudgetError(UserError):
    """A kernel request that cannot fit its memory budget, refused before the allocation; names the bytes."""


class KernelKind(str, enum.Enum):
    """Which inner product of gradients: see the module docstring."""

    SGD = "sgd"
    SIGNGD = "signgd"
    ASYM_SIGNGD = "asym_signgd"

    @property
    def symmetric(self) -> bool:
        return self is not KernelKind.ASYM_SIGNGD


class KernelMethod(str, enum.Enum):
    """How the kernel is computed (all exact except SKETCH).

    AUTO        pick by a cost model (see ``empirical_kernel``).
    JACOBIAN    per-example Jacobians (torch.func vmap(jacrev)), contracted blockwise,
                chunked over examples and parameter tensors under the memory budget.
    STRUCTURED  Gram blocks of linear layers from captured inputs / output gradients
                (grad_W f = sum_t g_t a_t^T); everything else falls back to JACOBIAN.
    NTK_VP      NTK-vector products: column block K[:, :, j, b] = J1 (phi2(grad f_b(x2_j))) by jvp,
                with the x2 side from vjp; never holds an x1 Jacobian.
    SKETCH      seeded Johnson-Lindenstrauss projection of phi(grad) to k dims ([KV] Lemma D.3).
    PACKED      sign kernels with signs stored as bits (or int8) and contracted exactly.
    """

    AUTO = "auto"
    JACOBIAN = "jacobian"
    STRUCTURED = "structured"
    NTK_VP = "ntk_vp"
    SKETCH = "sketch"
    PACKED = "packed"


def parse_kind(kind) -> KernelKind:
    try:
        return KernelKind(kind)
    except ValueError:
        raise ValueError(f"unknown kernel kind {kind!r}; expected one of {[k.value for k in KernelKind]}") from None


def parse_method(method) -> KernelMethod:
    try:
        return KernelMethod(method)
    except ValueError:
        raise ValueError(f"unknown kernel method {method!r}; expected one of {[m.value for m in KernelMethod]}") from None


# ---------------------------------------------------------------- parameter subsets
def lora_only(name: str) -> bool:
    """LoRA adapter tensors (names containing 'lora_', as peft and loralib name them)."""
    return "lora_" in name.lower()


def biases_only(name: str) -> bool:
    """Bias tensors (BitFit)."""
    return name.rsplit(".", 1)[-1] == "bias"


_EMBED_KEYS = ("embed", "wte", "wpe", "word_embeddings", "position_embeddings", "token_type_embeddings",
               "shared")
_HEAD_KEYS = ("lm_head", "readout", "classifier", "pooler", "score", "head", "cls.")


def no_embeddings(name: str) -> bool:
    """Everything but (token / position / type) embedding tables and input embeddings."""
    low = name.lower()
    return not any(k in low for k in _EMBED_KEYS)


def no_head(name: str) -> bool:
    """Everything but the output head (lm_head, readout, classifier, pooler)."""
    low = name.lower()
    return not any(k in low for k in _HEAD_KEYS)


SUBSETS: dict[str, Callable[[str], bool]] = {
    "all": lambda name: True,
    "lora": lora_only,
    "biases": biases_only,
    "no_embeddings": no_embeddings,
    "no_head": no_head,
}


def select_names(params: Mapping[str, torch.Tensor], select: Selector) -> list[str]:
    """Names of the selected tensors, in params order.

    select: None or "all" (every tensor), a preset name in SUBSETS, "re:PATTERN" (names
    where the regular expression PATTERN matches, re.search), a predicate name -> bool,
    or an iterable of names (each must exist).
    """
    names = list(params)
    if select is None:
        chosen = names
    elif isinstance(select, str) and select.startswith("re:"):
        try:
            rx = re.compile(select[3:])
        except re.error as e:
            raise ValueError(f"select {select!r}: not a regular expression: {e}") from None
        chosen = [n for n in names if rx.search(n)]
    elif isinstance(select, str):
        if select not in SUBSETS:
            raise ValueError(f"unknown parameter subset {select!r}; expected one of {sorted(SUBSETS)}, "
                             "a predicate or a list of names")
        chosen = [n for n in names if SUBSETS[select](n)]
    elif callable(select):
        chosen = [n for n in names if select(n)]
    else:
        wanted = list(select)
        missing = [n for n in wanted if n not in params]
        if missing:
            raise ValueError(f"select names {missing} are not parameters; have {names}")
        chosen = [n for n in names if n in set(wanted)]
    if not chosen:
        raise ValueError(f"parameter subset {select!r} selects no tensor of {names}")
    return chosen


# ---------------------------------------------------------------- feature maps
@dataclass
class Spec:
    """Everything a method needs besides (f, params, x1, x2): resolved, validated keywords."""

    kind: KernelKind
    names: list[str]
    weights: dict[str, float]
    eps: dict[str, float]
    dtype: torch.dtype
    device: torch.device
    budget: int
    decompose: str | None = None
    extra: dict = field(default_factory=dict)
    #: the dtype K is summed and returned in (None: ``dtype``); float64 over a float32 model keeps the
    #: model's speed while the sum over tensors and blocks loses nothing further
    accumulate: torch.dtype | None = None

    @property
    def out_dtype(self) -> torch.dtype:
        return self.accumulate or self.dtype

    def phi1(self, name: str, g: torch.Tensor) -> torch.Tensor:
        return eps_sign(g, self.eps[name]) if self.kind is KernelKind.SIGNGD else g

    def phi2(self, name: str, g: torch.Tensor) -> torch.Tensor:
        return g if self.kind is KernelKind.SGD else eps_sign(g, self.eps[name])

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()


def group_key(name: str, decompose: str | None) -> str:
    if decompose is None:
        return "total"
    if decompose == "tensor":
        return name
    return name.rsplit(".", 1)[0] if "." in name else name


class Accumulator:
    """Sums weighted blocks eta_M * <phi1 grad_M, phi2 grad_M> into K (or one K per tensor / module)."""

    def __init__(self, spec: Spec, n1: int, c: int, n2: int):
        self.spec, self.shape = spec, (n1, c, n2, c)
        self.out: dict[str, torch.Tensor] = {}
        for name in spec.names:
            key = group_key(name, spec.decompose)
            if key not in self.out:
                self.out[key] = torch.zeros(self.shape, dtype=spec.out_dtype, device=spec.device)

    def add(self, name: str, block: torch.Tensor, rows: slice = slice(None), cols: slice = slice(None)) -> None:
        """K[rows, :, cols, :] += eta_name * block, block: [n_rows, C, n_cols, C]."""
        w = self.spec.weights[name]
        target = self.out[group_key(name, self.spec.decompose)]
        block = block.to(target.dtype)
        target[rows, :, cols, :] += block if w == 1.0 else w * block

    def add_unweighted(self, name: str, block: torch.Tensor, rows: slice = slice(None),
                       cols: slice = slice(None)) -> None:
        """K[rows, :, cols, :] += block, for a block that already carries its eta_M."""
        target = self.out[group_key(name, self.spec.decompose)]
        target[rows, :, cols, :] += block.to(target.dtype)

    def result(self):
        return self.out["total"] if self.spec.decompose is None else self.out


# ---------------------------------------------------------------- cost probes
def activation_bytes(f: Callable, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> int:
    """Bytes of all tensors created by one forward pass of f on x (an upper bound on what autograd saves)."""
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_flatten

    total = [0]

    class _Count(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.is_floating_point():
                    total[0] += t.numel() * t.element_size()
            return out

    with torch.no_grad(), _Count():
        f(params, x)
    return max(1, total[0])


def saved_storages(run: Callable[[], object], exclude: set[int]) -> dict[int, int]:
    """{storage pointer: bytes} of what autograd saves for the backward pass while ``run()`` builds a graph,
    storages in ``exclude`` (the parameters) left out: torch.autograd.graph.saved_tensors_hooks sees each
    saved tensor; views of one buffer count once, as the whole buffer."""
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in exclude:
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        # nothing is kept (no backward pass follows): returning t itself would tie a saved output to its
        # own graph in a reference cycle that outlives the call (every call leaked the model's tensors)
        return None

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda _: None):
        run()
    return seen


def saved_bytes(f: Callable, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> int:
    """Bytes autograd saves for the backward pass of one forward pass of f on x (every parameter requiring
    a gradient; the parameters themselves and views of one buffer counted once, not at all): what a
    batch's forward pass keeps alive until its backward passes, far less than ``activation_bytes``, which
    counts every tensor the pass creates (``saved_storages``)."""
    own = {t.data_ptr() for t in params.values()}
    p = {k: v.detach().requires_grad_(v.is_floating_point()) for k, v in params.items()}
    return max(1, sum(saved_storages(lambda: f(p, x), own).values()))


# ---------------------------------------------------------------- shapes
def flatten(K: torch.Tensor) -> torch.Tensor:
    """[N1, C, N2, C] -> [(N1 C), (N2 C)], row index i * C + a (example-major)."""
    if K.dim() != 4:
        raise ValueError(f"flatten expects a kernel of shape [N1, C, N2, C], got {tuple(K.shape)}")
    n1, c1, n2, c2 = K.shape
    return K.reshape(n1 * c1, n2 * c2)


def unflatten(K: torch.Tensor, c: int) -> torch.Tensor:
    """[(N1 C), (N2 C)] -> [N1, C, N2, C]: the inverse of ``flatten``."""
    if K.dim() != 2 or c < 1 or K.shape[0] % c or K.shape[1] % c:
        raise ValueError(f"cannot unflatten a kernel of shape {tuple(K.shape)} with C={c}")
    return K.reshape(K.shape[0] // c, c, K.shape[1] // c, c)


def trace_outputs(K: torch.Tensor) -> torch.Tensor:
    """Tr over outputs: [N1, C, N2, C] -> [N1, N2], T[i, j] = sum_a K[i, a, j, a]."""
    if K.dim() != 4 or K.shape[1] != K.shape[3]:
        raise ValueError(f"trace_outputs expects [N1, C, N2, C], got {tuple(K.shape)}")
    return torch.diagonal(K, dim1=1, dim2=3).sum(-1)


def output_block(K: torch.Tensor, a: int, b: int | None = None) -> torch.Tensor:
    """K[:, a, :, b] ([N1, N2]), b = a by default: the kernel between outputs a and b."""
    return K[:, a, :, a if b is None else b]


def numel(params: Mapping[str, torch.Tensor], names: Iterable[str]) -> int:
    return int(sum(params[n].numel() for n in names))


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def chunks(n: int, size: int) -> list[slice]:
    size = max(1, int(size))
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def log2_ceil(x: int) -> int:
    return int(math.ceil(math.log2(max(1, x))))

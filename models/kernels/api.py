"""The kernel engine's entry points (design.md, "Kernel engine"):

    kernel_fn = make_kernel_fn(f, params, kind=..., method=..., select=..., weights=..., ...)
    K = kernel_fn(x1, x2)                  # planned once, applied many times
    K = kernel_fn(x1, params=theta_t)      # same plan at other parameters (a drift checkpoint)
    K = empirical_kernel(f, params, x1, x2, **same_keywords)   # the one-shot form

    K[i, a, j, b] = sum_M eta_M < phi1(grad_M f_a(x1_i; theta)), phi2(grad_M f_b(x2_j; theta)) >

(see ntkcheck.models.kernels.common for kinds and feature maps). Methods are
dispatched through METHODS, a table whose entries share one signature
(f, params, x1, x2, c, spec, acc, plan); AUTO's choice, and the STRUCTURED
probe behind it, is made once per input signature (trailing shape and dtype of
x1 and x2) and cached in the kernel function.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from ntkcheck.models.kernels.common import (DEFAULT_MEMORY_BUDGET, Accumulator, KernelKind, KernelMethod,
                                            Selector, Spec, chunks, parse_kind, parse_method, select_names)

_DECOMPOSE = (None, "tensor", "module")


def _cast_inputs(x1, x2, dtype, device):
    def cast(x):
        if x is None:
            return None
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"inputs must be tensors with a leading batch axis, got {type(x).__name__}")
        x = x.detach().to(device=device)
        return x.to(dtype) if x.is_floating_point() else x

    x1, x2 = cast(x1), cast(x2)
    if x1 is None or x1.dim() < 1 or x1.shape[0] < 1 or (x2 is not None and (x2.dim() < 1 or x2.shape[0] < 1)):
        raise ValueError("x1 and x2 need a non-empty leading batch axis")
    return x1, x2


def _prepare(params, x1, x2, dtype, device):
    """params (and x1, x2 when given) moved to device, floating tensors cast to dtype (default: params')."""
    dev = torch.device(device) if device is not None else next(iter(params.values())).device
    dt = dtype if dtype is not None else next(iter(params.values())).dtype
    if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    p = {k: v.detach().to(device=dev, dtype=dt if v.is_floating_point() else v.dtype) for k, v in params.items()}
    if x1 is not None:
        x1, x2 = _cast_inputs(x1, x2, dt, dev)
    return p, x1, x2, dt, dev


def _output_dim(f, params, x) -> int:
    with torch.no_grad():
        out = f(params, x[:1])
    if out.dim() not in (1, 2) or out.shape[0] != 1:
        raise ValueError(f"f(params, x) must return [B, C] (or [B]); got shape {tuple(out.shape)} for B=1")
    return 1 if out.dim() == 1 else out.shape[1]


def _as_2d(f):
    def g(p, x):
        out = f(p, x)
        return out.unsqueeze(-1) if out.dim() == 1 else out

    return g


def gradient_scales(f: Callable, params: Mapping[str, torch.Tensor], x: torch.Tensor, names: list[str],
                    budget: int = DEFAULT_MEMORY_BUDGET) -> dict[str, float]:
    """s_M = max_{i, a} ||grad_M f_a(x_i)||_2 / sqrt(|M|): the coordinate scale of each tensor's gradient.

    [KV] Assumption C.2g takes the eps of eps-sign for tensor M at this scale.
    """
    from ntkcheck.models.kernels.jacobian import jacobian_rows

    out = {n: 0.0 for n in names}
    c = _output_dim(f, params, x)
    for n in names:
        p = params[n].numel()
        b = max(1, budget // (4 * c * p * params[n].element_size()))
        for s in chunks(x.shape[0], b):
            J = jacobian_rows(f, params, [n], x[s])[n]
            out[n] = max(out[n], float(J.norm(dim=-1).max()) / math.sqrt(p))
    return out


def _resolve_eps(eps, f, params, x1, x2, names, budget) -> dict[str, float]:
    if isinstance(eps, str):
        if eps != "auto":
            raise ValueError(f"eps must be a float >= 0, a {{name: eps}} mapping or 'auto', got {eps!r}")
        xs = x1 if x2 is None else torch.cat([x1, x2]) if x1.shape[1:] == x2.shape[1:] else None
        scales = gradient_scales(f, params, xs, names, budget) if xs is not None else {
            n: max(a, b) for (n, a), b in zip(gradient_scales(f, params, x1, names, budget).items(),
                                             gradient_scales(f, params, x2, names, budget).values())}
        return scales
    if isinstance(eps, Mapping):
        missing = [n for n in names if n not in eps]
        if missing:
            raise ValueError(f"eps mapping has no entry for selected tensor(s) {missing}")
        out = {n: float(eps[n]) for n in names}
    else:
        try:
            out = {n: float(eps) for n in names}
        except (TypeError, ValueError):
            raise ValueError(f"eps must be a float >= 0, a {{name: eps}} mapping or 'auto', got {eps!r}") from None
    bad = {n: v for n, v in out.items() if not (v >= 0 and math.isfinite(v))}
    if bad:
        raise ValueError(f"eps must be finite and >= 0, got {bad}")
    return out


def _resolve_weights(weights, names) -> dict[str, float]:
    if weights is None:
        return {n: 1.0 for n in names}
    if not isinstance(weights, Mapping):
        raise ValueError(f"weights must be a {{name: eta}} mapping (e.g. WidthModel.learning_rates()), got {weights!r}")
    missing = [n for n in names if n not in weights]
    if missing:
        raise ValueError(f"weights has no entry for selected tensor(s) {missing}")
    out = {n: float(weights[n]) for n in names}
    bad = {n: v for n, v in out.items() if not math.isfinite(v)}
    if bad:
        raise ValueError(f"weights must be finite, got {bad}")
    return out


_DOC_KEYWORDS = """
    kind: "sgd" ([KV] Def. 3.4, phi = id), "signgd" (Def. 4.4, phi1 = phi2 = sign),
      "asym_signgd" (Def. 4.2, phi1 = id, phi2 = sign). With eps > 0 the sign is
      eps-sign(g) = g / (|g| + eps_M) ([KV] Assumption C.2g); eps is a float, a
      {name: eps_M} mapping, or "auto" (eps_M = max_{i,a} ||grad_M f_a(x_i)|| / sqrt(|M|) over the
      inputs of the call, C.2g's "eps matches the scale of grad_M f").
    method: a KernelMethod; "auto" uses STRUCTURED when its capture covers at least half of
      the selected entries exactly (linear, LayerNorm, bias, embedding uses), and otherwise
      JACOBIAN or NTK_VP by the pass-count cost model of ``choose_method``. SKETCH (approximate)
      and PACKED are used only when asked for.
    select: which tensors M (None = all; "lora", "biases", "no_embeddings", "no_head";
      a predicate on names; a regular expression "re:PATTERN"; or a list of names).
    weights: {name: eta_M}, e.g. ``model.learning_rates(optimizer)``, giving the
      per-tensor-lr kernel of [KV] Thm. C.4; every selected tensor needs an entry.
    decompose: None (one kernel), "tensor" or "module": a dict {tensor or module
      name: its kernel}, whose values sum to the full kernel.
    memory_budget: bytes for intermediates: Jacobians, captured factors, held columns (default 40% of
      the memory available on the device when the function is made: CUDA's free memory, or the
      CPU's MemAvailable; ntkcheck.models.kernels.memory.default_budget); dtype / device:
      where and in which precision params, float inputs and K live (dtype None: the params' own,
      so a float32 model is never copied to float64); accumulate: the dtype K is summed and
      returned in (e.g. torch.float64 over a float32 model; None: dtype).
    sketch_dim, sketch ("gaussian" | "sparse_sign" | "countsketch"), seed: for method "sketch";
      countsketch hashes coordinates (never a P x k matrix) and takes the gradients from the
      structured capture, the one to use for language models.
    sign_storage ("bits" | "int8"): for method "packed".
    feature_dir: for method "sketch", a folder that keeps each example's sketched features
      (feature_store.py): an example whose features it holds is not sketched again, by this
      function or by a later one made with the same folder (a subfolder per parameters' digest).
      Used only for calls at the function's own parameters, unchanged since it was made. f itself
      is not hashed: give each f (model, readout) its own folder, as ``ntkcheck lm`` does.
    trim: x -> x without the trailing padding no example of the batch needs (e.g. LMAdapter.trim,
      which cuts right padding to the batch's longest prompt): examples are then taken in order of
      length and the structured and countsketch paths drop each chunk's unneeded positions, which
      leaves f's outputs and so K unchanged.

    f(params, x) -> [B, C] must treat examples independently (eval mode, no batch
    statistics); x1, x2 are tensors with a leading batch axis.
"""


@dataclass
class Plan:
    """How one input signature is computed: the method, and for STRUCTURED the probe's result."""

    method: KernelMethod
    probed: tuple | None = None
    estimates: dict = field(default_factory=dict)


class KernelFn:
    """A configured empirical-kernel function (neural-tangents' ``empirical_kernel_fn`` shape).

    ``kernel_fn(x1, x2=None, params=None) -> K [N1, C, N2, C]`` (or a dict with ``decompose``);
    keywords are validated once here, and the method plan is cached per input signature.
    """

    def __init__(self, f: Callable, params: Mapping[str, torch.Tensor], *, kind: str | KernelKind = "sgd",
                 method: str | KernelMethod = "auto", select: Selector = None,
                 weights: Mapping[str, float] | None = None, eps: float | Mapping[str, float] | str = 0.0,
                 decompose: str | None = None, memory_budget: int | None = None,
                 dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                 sketch_dim: int | None = None, sketch: str = "gaussian", seed: int = 0,
                 sign_storage: str = "bits", accumulate: torch.dtype | None = None,
                 trim: Callable[[torch.Tensor], torch.Tensor] | None = None, feature_dir=None):
        self.kind = parse_kind(kind)
        self.method = parse_method(method)
        if decompose not in _DECOMPOSE:
            raise ValueError(f"decompose must be one of {_DECOMPOSE}, got {decompose!r}")
        if not isinstance(params, Mapping) or not params:
            raise ValueError("params must be a non-empty {name: tensor} mapping")
        if memory_budget is None:
            from ntkcheck.models.kernels.memory import default_budget

            dev = torch.device(device) if device is not None else next(iter(params.values())).device
            budget = default_budget(dev)
        else:
            budget = memory_budget
        if not isinstance(budget, (int, float)) or isinstance(budget, bool) or budget <= 0:
            raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
        if self.method is KernelMethod.SKETCH and sketch_dim is None:
            raise ValueError("method 'sketch' needs sketch_dim (the projection dimension k), got None")
        self.f = _as_2d(f)
        self.params, _, _, self.dtype, self.device = _prepare(params, None, None, dtype, device)
        self.names = select_names(self.params, select)
        nonfloat = [n for n in self.names if not self.params[n].is_floating_point()]
        if nonfloat:
            raise ValueError(f"selected tensors {nonfloat} are not floating point")
        self.weights = _resolve_weights(weights, self.names)
        self.eps = eps
        self.decompose = decompose
        self.budget = int(budget)
        self.extra = {"sketch_dim": sketch_dim, "sketch": sketch, "seed": seed, "sign_storage": sign_storage}
        if accumulate is not None and (not isinstance(accumulate, torch.dtype) or not accumulate.is_floating_point):
            raise ValueError(f"accumulate must be a floating torch.dtype, got {accumulate!r}")
        self.accumulate = accumulate
        if trim is not None and not callable(trim):
            raise ValueError(f"trim must be a callable x -> x without the padding it does not need, got {trim!r}")
        self.trim = trim
        self.plans: dict[tuple, Plan] = {}
        #: the sketch's x2-side features of the last call at these parameters (sketch._remembered_side)
        self.side_memo: dict = {}
        #: per-example sketched features on disk (feature_store), for calls at these parameters unchanged
        self.feature_store = None
        if feature_dir is not None:
            if self.method is not KernelMethod.SKETCH:
                raise ValueError(f"feature_dir keeps sketched features: it needs method 'sketch', got "
                                 f"{self.method.value!r}")
            from pathlib import Path

            from ntkcheck.models.kernels.feature_store import FeatureStore, params_digest

            self.feature_store = FeatureStore(Path(feature_dir) / params_digest(self.params))
            self._store_params = self._params_key()

    def _params_key(self) -> tuple:
        """(identity, version) of each held tensor: changes when one is replaced or changed in place."""
        return tuple((id(t), t._version) for t in self.params.values())

    def spec(self) -> Spec:
        return Spec(kind=self.kind, names=self.names, weights=self.weights, eps={}, dtype=self.dtype,
                    device=self.device, budget=self.budget, decompose=self.decompose, extra=dict(self.extra),
                    accumulate=self.accumulate)

    def plan(self, params, x1: torch.Tensor, x2: torch.Tensor | None, c: int, spec: Spec) -> Plan:
        """The cached plan of this input signature (AUTO's choice made on the first call)."""
        key = (tuple(x1.shape[1:]), x1.dtype, None if x2 is None else (tuple(x2.shape[1:]), x2.dtype))
        if key not in self.plans:
            if self.method is KernelMethod.AUTO:
                method, probed, est = choose_method(self.f, params, x1, x2, c, spec)
                self.plans[key] = Plan(method, probed, est)
            else:
                self.plans[key] = Plan(self.method)
        return self.plans[key]

    def __call__(self, x1: torch.Tensor, x2: torch.Tensor | None = None,
                 params: Mapping[str, torch.Tensor] | None = None):
        if params is None:
            p = self.params
        else:
            missing = [n for n in self.params if n not in params]
            if missing:
                raise ValueError(f"params lack tensor(s) {missing[:3]} of the kernel function's parameters")
            p, _, _, _, _ = _prepare({n: params[n] for n in self.params}, None, None, self.dtype, self.device)
        x1, x2 = _cast_inputs(x1, x2, self.dtype, self.device)
        c = _output_dim(self.f, p, x1)
        spec = self.spec()
        spec.eps = ({n: 0.0 for n in self.names} if self.kind is KernelKind.SGD
                    else _resolve_eps(self.eps, self.f, p, x1, x2, self.names, spec.budget))
        n1 = x1.shape[0]
        n2 = n1 if x2 is None else x2.shape[0]
        order1 = order2 = None
        if self.trim is not None:
            # examples sorted by their trimmed length, so that each chunk drops the padding none of it needs
            spec.extra["trim"] = self.trim
            order1 = _length_order(self.trim, x1)
            x1 = x1[order1]
            if x2 is not None:
                order2 = _length_order(self.trim, x2)
                x2 = x2[order2]
        if params is None:   # the tensors are held here, so (id, version) names their values
            spec.extra["side_memo"] = (self.side_memo, self._params_key())
            if self.feature_store is not None and spec.extra["side_memo"][1] == self._store_params:
                spec.extra["feature_store"] = self.feature_store
        acc = Accumulator(spec, n1, c, n2)
        plan = self.plan(p, x1, x2, c, spec)
        METHODS[plan.method](self.f, p, x1, x2, c, spec, acc, plan)
        out = acc.result()
        if order1 is not None:
            inv1 = torch.argsort(order1)
            inv2 = inv1 if order2 is None else torch.argsort(order2)
            back = lambda K: K[inv1][:, :, inv2]  # noqa: E731
            out = {k: back(v) for k, v in out.items()} if isinstance(out, dict) else back(out)
        if x2 is None and self.kind.symmetric:
            # K(x, x) of a symmetric kind is symmetric; BLAS Grams (G @ G^T) need not be bit-for-bit
            sym = lambda K: 0.5 * (K + K.permute(2, 3, 0, 1))  # noqa: E731
            out = {k: sym(v) for k, v in out.items()} if isinstance(out, dict) else sym(out)
        return out


def _length_order(trim, x: torch.Tensor) -> torch.Tensor:
    """Indices of x's examples by the trailing length trim leaves them (stable), longest first."""
    from ntkcheck.models.kernels.structured import trimmed_length

    lengths = torch.tensor([trimmed_length(x, trim, i) for i in range(x.shape[0])])
    return torch.argsort(-lengths, stable=True).to(x.device)


def make_kernel_fn(f: Callable, params: Mapping[str, torch.Tensor], **keywords) -> KernelFn:
    """The configured kernel function of f at params: ``kernel_fn(x1, x2=None, params=None)``.

    Keywords (kind, method, select, weights, eps, decompose, memory_budget, dtype, device,
    accumulate, sketch_dim, sketch, seed, sign_storage, trim, feature_dir) as for ``empirical_kernel``; they are validated once,
    and AUTO's method choice is made once per input signature.
    """
    return KernelFn(f, params, **keywords)


def empirical_kernel(f: Callable, params: Mapping[str, torch.Tensor], x1: torch.Tensor,
                     x2: torch.Tensor | None = None, **keywords):
    """The empirical kernel of f at params between x1 and x2 (x2 = x1 when None), one shot:

        K[i, a, j, b] = sum_M eta_M < phi1(grad_M f_a(x1_i)), phi2(grad_M f_b(x2_j)) >   -> [N1, C, N2, C]
    """
    return KernelFn(f, params, **keywords)(x1, x2)


empirical_kernel.__doc__ += _DOC_KEYWORDS
make_kernel_fn.__doc__ += _DOC_KEYWORDS


def choose_method(f, params, x1, x2, c, spec) -> tuple[KernelMethod, tuple | None, dict]:
    """AUTO's cost model. Returns (method, structured probe or None, the estimates).

    1. STRUCTURED when its capture covers at least half of the selected entries exactly: its cost
       is one forward and C backward passes per chunk plus Gram products, near the floor.
    2. Otherwise JACOBIAN vs NTK_VP (NTK_VP only for phi1 = id), costs in per-example passes:
         jacobian  G C (N1 + N2 R) + N1 N2 C^2 / 6
                   (G parameter groups, R = 1 when a group's features fit in half the budget,
                    else the number of x1 panels that each recompute x2; a dense pass is ~6 P flops,
                    so the contraction N1 N2 C^2 P costs N1 N2 C^2 / 6 passes)
         ntk_vp    N2 C (r + 2 N1)     (vjp over x2 chunks of r examples, then jvp per direction)
    """
    from ntkcheck.models.kernels.common import ceil_div
    from ntkcheck.models.kernels.jacobian import plan_groups
    from ntkcheck.models.kernels.structured import probe

    try:
        probed = probe(f, params, spec.names, x1, c)
    except (RuntimeError, TypeError, IndexError, NotImplementedError):
        # f does something the capture cannot trace (e.g. its own torch.func transforms): no structure
        probed = ([], 0, {})
    total = sum(params[n].numel() for n in spec.names)
    frac = sum(params[n].numel() for n in probed[0]) / total
    est = {"structured_coverage": frac}
    if frac >= 0.5:
        return KernelMethod.STRUCTURED, probed, est
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    isz = spec.itemsize
    groups = plan_groups(params, spec.names, c, spec)
    jac = 0.0
    for g in groups:
        p = sum(params[n].numel() for n in g)
        b = max(1, spec.budget // (4 * c * p * isz))
        hold = (n1 + (0 if x2 is None else n2)) * c * p * isz * 2 <= spec.budget // 2
        jac += c * (n1 + n2 * (1 if hold else ceil_div(n1, b)))
    jac += n1 * n2 * c * c / 6
    r = max(1, min(n2, (spec.budget // 4) // max(1, c * total * isz)))
    vp = n2 * c * (r + 2 * n1) if spec.kind is not KernelKind.SIGNGD else float("inf")
    est.update(jacobian_passes=jac, ntk_vp_passes=vp)
    return (KernelMethod.NTK_VP if vp < jac else KernelMethod.JACOBIAN), None, est


def _method_table() -> dict:
    from ntkcheck.models.kernels.jacobian import jacobian_kernel
    from ntkcheck.models.kernels.ntk_vp import ntk_vp_kernel
    from ntkcheck.models.kernels.packed import packed_kernel
    from ntkcheck.models.kernels.sketch import sketch_kernel
    from ntkcheck.models.kernels.structured import structured_kernel

    return {KernelMethod.JACOBIAN: jacobian_kernel, KernelMethod.STRUCTURED: structured_kernel,
            KernelMethod.NTK_VP: ntk_vp_kernel, KernelMethod.SKETCH: sketch_kernel,
            KernelMethod.PACKED: packed_kernel}


class _Methods(dict):
    """KernelMethod -> function(f, params, x1, x2, c, spec, acc, plan); filled on first use (the method
    modules import this one)."""

    def __missing__(self, key):
        if not dict.__len__(self):
            self.update(_method_table())
            if key in self:
                return self[key]
        raise ValueError(f"method {getattr(key, 'value', key)!r} is not available")


METHODS = _Methods()

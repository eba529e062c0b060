"""``empirical_kernel``: the one entry point of the kernel engine (design.md, "Kernel engine").

    K[i, a, j, b] = sum_M eta_M < phi1(grad_M f_a(x1_i; theta)), phi2(grad_M f_b(x2_j; theta)) >

(see ntkcheck.models.kernels.common for kinds and feature maps).
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

import torch

from ntkcheck.models.kernels.common import (DEFAULT_MEMORY_BUDGET, Accumulator, KernelKind, KernelMethod,
                                            Selector, Spec, chunks, parse_kind, parse_method, select_names)

_DECOMPOSE = (None, "tensor", "module")


def _prepare(params, x1, x2, dtype, device):
    dev = torch.device(device) if device is not None else next(iter(params.values())).device
    dt = dtype if dtype is not None else next(iter(params.values())).dtype
    if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    p = {k: v.detach().to(device=dev, dtype=dt if v.is_floating_point() else v.dtype) for k, v in params.items()}

    def cast(x):
        if x is None:
            return None
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"inputs must be tensors with a leading batch axis, got {type(x).__name__}")
        x = x.detach().to(device=dev)
        return x.to(dt) if x.is_floating_point() else x

    return p, cast(x1), cast(x2), dt, dev


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


def empirical_kernel(f: Callable, params: Mapping[str, torch.Tensor], x1: torch.Tensor,
                     x2: torch.Tensor | None = None, *, kind: str | KernelKind = "sgd",
                     method: str | KernelMethod = "auto", select: Selector = None,
                     weights: Mapping[str, float] | None = None, eps: float | Mapping[str, float] | str = 0.0,
                     decompose: str | None = None, memory_budget: int | None = None,
                     dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                     sketch_dim: int | None = None, sketch: str = "gaussian", seed: int = 0,
                     sign_storage: str = "bits"):
    """The empirical kernel of f at params between x1 and x2 (x2 = x1 when None).

        K[i, a, j, b] = sum_M eta_M < phi1(grad_M f_a(x1_i)), phi2(grad_M f_b(x2_j)) >   -> [N1, C, N2, C]

    kind: "sgd" ([KV] Def. 3.4, phi = id), "signgd" (Def. 4.4, phi1 = phi2 = sign),
      "asym_signgd" (Def. 4.2, phi1 = id, phi2 = sign). With eps > 0 the sign is
      eps-sign(g) = g / (|g| + eps_M) ([KV] Assumption C.2g); eps is a float, a
      {name: eps_M} mapping, or "auto" (eps_M = max_{i,a} ||grad_M f_a(x_i)|| / sqrt(|M|),
      C.2g's "eps matches the scale of grad_M f").
    method: a KernelMethod; "auto" uses STRUCTURED when its capture covers at least half of
      the selected entries exactly (linear, LayerNorm, bias, embedding uses), and otherwise
      JACOBIAN or NTK_VP by the pass-count cost model of ``choose_method``. SKETCH (approximate)
      and PACKED are used only when asked for.
    select: which tensors M (None = all; "lora", "biases", "no_embeddings", "no_head";
      a predicate on names; or a list of names).
    weights: {name: eta_M}, e.g. ``model.learning_rates(optimizer)``, giving the
      per-tensor-lr kernel of [KV] Thm. C.4; every selected tensor needs an entry.
    decompose: None (one kernel), "tensor" or "module": a dict {tensor or module
      name: its kernel}, whose values sum to the full kernel.
    memory_budget: bytes for intermediate Jacobians (default 2 GiB); dtype / device:
      where and in which precision params, float inputs and K live.
    sketch_dim, sketch ("gaussian" | "sparse_sign"), seed: for method "sketch".
    sign_storage ("bits" | "int8"): for method "packed".

    f(params, x) -> [B, C] must treat examples independently (eval mode, no batch
    statistics); x1, x2 are tensors with a leading batch axis.
    """
    kind = parse_kind(kind)
    method = parse_method(method)
    if decompose not in _DECOMPOSE:
        raise ValueError(f"decompose must be one of {_DECOMPOSE}, got {decompose!r}")
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
    if not isinstance(budget, (int, float)) or budget <= 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
    if not isinstance(params, Mapping) or not params:
        raise ValueError("params must be a non-empty {name: tensor} mapping")
    params, x1, x2, dt, dev = _prepare(params, x1, x2, dtype, device)
    if x1.dim() < 1 or x1.shape[0] < 1 or (x2 is not None and (x2.dim() < 1 or x2.shape[0] < 1)):
        raise ValueError("x1 and x2 need a non-empty leading batch axis")
    f = _as_2d(f)
    names = select_names(params, select)
    nonfloat = [n for n in names if not params[n].is_floating_point()]
    if nonfloat:
        raise ValueError(f"selected tensors {nonfloat} are not floating point")
    c = _output_dim(f, params, x1)
    spec = Spec(kind=kind, names=names, weights=_resolve_weights(weights, names), eps={},
                dtype=dt, device=dev, budget=int(budget), decompose=decompose)
    spec.eps = ({n: 0.0 for n in names} if kind is KernelKind.SGD
                else _resolve_eps(eps, f, params, x1, x2, names, spec.budget))
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    acc = Accumulator(spec, n1, c, n2)
    _dispatch(method, f, params, x1, x2, c, spec, acc, sketch_dim=sketch_dim, sketch=sketch, seed=seed,
              sign_storage=sign_storage)
    return acc.result()


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


def _dispatch(method, f, params, x1, x2, c, spec, acc, **kw):
    from ntkcheck.models.kernels.jacobian import jacobian_kernel
    from ntkcheck.models.kernels.structured import structured_kernel

    probed = None
    if method is KernelMethod.AUTO:
        method, probed, _ = choose_method(f, params, x1, x2, c, spec)
    if method is KernelMethod.JACOBIAN:
        jacobian_kernel(f, params, x1, x2, c, spec, acc)
        return
    if method is KernelMethod.STRUCTURED:
        structured_kernel(f, params, x1, x2, c, spec, acc, probed=probed)
        return
    if method is KernelMethod.NTK_VP:
        from ntkcheck.models.kernels.ntk_vp import ntk_vp_kernel

        ntk_vp_kernel(f, params, x1, x2, c, spec, acc)
        return
    if method is KernelMethod.SKETCH:
        from ntkcheck.models.kernels.sketch import sketch_kernel

        if kw["sketch_dim"] is None:
            raise ValueError("method 'sketch' needs sketch_dim (the projection dimension k), got None")
        sketch_kernel(f, params, x1, x2, c, spec, acc, kw["sketch_dim"], kw["sketch"], kw["seed"])
        return
    if method is KernelMethod.PACKED:
        from ntkcheck.models.kernels.packed import packed_kernel

        packed_kernel(f, params, x1, x2, c, spec, acc, storage=kw["sign_storage"])
        return
    raise ValueError(f"method {method.value!r} is not available")

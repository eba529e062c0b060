"""NTK_VP method: NTK-vector products (Novak et al. 2022), jvp of vjp.

Column block of the kernel for x2-example j and output b:

    v_{j,b} = eta ⊙ phi2(J2^T e_{j,b})            (vjp of f(x2), one cotangent per (j, b); vmapped)
    K[:, :, j, b] = J1 v_{j,b}                    (jvp of f(x1) in direction v; vmapped over (j, b))

so the x1 Jacobian is never formed: memory is (chunk of x2 rows) x P for the
directions plus the jvp's activations. Valid when phi1 is the identity: kinds
sgd and asym_signgd (the x2 side may be signed, [KV] Def. 4.2). signgd has
phi1 = sign, which no Jacobian-vector product of x1 can give.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch.func import jvp, vjp, vmap

from ntkcheck.models.kernels.common import Accumulator, KernelKind, Spec, activation_bytes, chunks, group_key


def ntk_vp_kernel(f: Callable, params: Mapping[str, torch.Tensor], x1: torch.Tensor, x2: torch.Tensor | None,
                  c: int, spec: Spec, acc: Accumulator, plan=None) -> None:
    """Adds sum_M eta_M J1_M phi2(J2_M)^T into ``acc`` by vmapped vjp / jvp; see the module docstring."""
    if spec.kind is KernelKind.SIGNGD:
        raise ValueError("method 'ntk_vp' cannot compute kind 'signgd' (sign on the x1 side is not linear); "
                         "use 'jacobian', 'structured' or 'packed'")
    xb = x1 if x2 is None else x2
    n1, n2 = x1.shape[0], xb.shape[0]
    act = activation_bytes(f, params, x1[:1])
    keys: dict[str, list[str]] = {}
    for n in spec.names:
        keys.setdefault(group_key(n, spec.decompose), []).append(n)
    for names in keys.values():
        fixed = {k: v for k, v in params.items() if k not in set(names)}
        sub = {n: params[n] for n in names}
        p = sum(v.numel() for v in sub.values())
        fwd = lambda q, x: f({**fixed, **q}, x)
        # directions for m = rows2 * C columns take m * P entries; the jvp holds about as much again
        rows2 = max(1, (spec.budget // 4) // max(1, c * p * spec.itemsize))
        for sj in chunks(n2, rows2):
            b2 = sj.stop - sj.start
            _, pull = vjp(lambda q: fwd(q, xb[sj]), sub)
            cot = torch.eye(b2 * c, dtype=spec.dtype, device=spec.device).reshape(b2 * c, b2, c)
            (V,) = vmap(pull)(cot)  # {name: [b2*C, *shape]}
            V = {n: spec.weights[n] * spec.phi2(n, V[n]) for n in names}
            # the vmapped jvp carries one forward (primal and tangent) per direction and x1 example
            for si in chunks(n1, max(1, (spec.budget // 4) // (2 * b2 * c * act))):
                cols = vmap(lambda t: jvp(lambda q: fwd(q, x1[si]), (sub,), (t,))[1])(V)  # [b2*C, b1, C]
                blk = cols.reshape(b2, c, si.stop - si.start, c).permute(2, 3, 0, 1)
                # weights already applied per tensor above, so add with unit weight per key
                acc.add_unweighted(names[0], blk, si, sj)

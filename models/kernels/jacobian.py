"""JACOBIAN method: per-example Jacobians by torch.func, contracted blockwise under a memory budget.

For a group G of parameter tensors and a chunk of b examples,
vmap(jacrev) gives J_M: [b, C, |M|] for M in G; the kernel block is

    K[I, :, J, :] += eta_M * (phi1(J_M(x1_I)) reshaped [b1 C, |M|]) @ (phi2(J_M(x2_J)) [b2 C, |M|])^T.

Groups and chunks are sized so that one chunk of features takes at most a
quarter of the budget; when all features of a group fit in half the budget
they are held and contracted by one matrix product, otherwise x2-chunks are
recomputed for every x1-chunk (only the upper triangle when x2 is x1 and the
kind is symmetric).
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch.func import jacrev, vmap

from ntkcheck.models.kernels.common import Accumulator, Spec, activation_bytes, chunks, human_bytes


def per_example(f: Callable, params: Mapping[str, torch.Tensor], names: list[str]) -> Callable:
    """fi(p_sub, xi) -> [C]: f on one example (batch of 1), differentiable in the tensors p_sub."""
    fixed = {k: v for k, v in params.items() if k not in set(names)}

    def fi(p_sub, xi):
        out = f({**fixed, **p_sub}, xi.unsqueeze(0))
        return out.reshape(out.shape[0], -1)[0]

    return fi


def jacobian_rows(f: Callable, params: Mapping[str, torch.Tensor], names: list[str],
                  x: torch.Tensor) -> dict[str, torch.Tensor]:
    """{M: J_M} with J_M[i, a, :] = flattened grad_M f_a(x_i); J_M: [B, C, |M|]."""
    fi = per_example(f, params, names)
    sub = {n: params[n] for n in names}
    jac = vmap(jacrev(fi), in_dims=(None, 0))(sub, x)
    return {n: jac[n].reshape(x.shape[0], jac[n].shape[1], -1) for n in names}


def plan_groups(params: Mapping[str, torch.Tensor], names: list[str], c: int, spec: Spec,
                cap: int | None = None) -> list[list[str]]:
    """Consecutive tensors packed so one example's Jacobian of a group takes <= budget / 4 (or <= cap entries)."""
    cap = max(1, spec.budget // (4 * c * spec.itemsize)) if cap is None else max(1, cap)
    groups, cur, size = [], [], 0
    for n in names:
        p = params[n].numel()
        if 2 * c * p * spec.itemsize > spec.budget:
            raise ValueError(
                f"memory_budget={spec.budget} ({human_bytes(spec.budget)}) is too small for the per-example "
                f"gradient of tensor {n!r} ({p} entries x C={c}); raise it, or use method='structured' or 'sketch'")
        if cur and size + p > cap:
            groups.append(cur)
            cur, size = [], 0
        cur.append(n)
        size += p
    if cur:
        groups.append(cur)
    return groups


def jacobian_kernel(f: Callable, params: Mapping[str, torch.Tensor], x1: torch.Tensor, x2: torch.Tensor | None,
                    c: int, spec: Spec, acc: Accumulator, plan=None, names: list[str] | None = None) -> None:
    """Adds sum_{M in names} eta_M <phi1 grad_M f(x1), phi2 grad_M f(x2)> into ``acc``."""
    names = spec.names if names is None else names
    if not names:
        return
    same = x2 is None
    xb = x1 if same else x2
    n1, n2 = x1.shape[0], xb.shape[0]
    isz = spec.itemsize
    # vmap(jacrev) keeps a forward's activations per example and their cotangents per output
    act = activation_bytes(f, params, x1[:1]) * (1 + c)
    for group in plan_groups(params, names, c, spec):
        p = sum(params[n].numel() for n in group)
        b = max(1, spec.budget // (4 * (c * p * isz + act)))
        rows_total = (n1 + (0 if same else n2)) * c
        if rows_total * p * isz * 2 <= spec.budget // 2:
            J1 = _cat([jacobian_rows(f, params, group, x1[s]) for s in chunks(n1, b)], group)
            J2 = J1 if same else _cat([jacobian_rows(f, params, group, xb[s]) for s in chunks(n2, b)], group)
            for n in group:
                A = spec.phi1(n, J1[n]).reshape(n1 * c, -1)
                B = A if (same and spec.kind.symmetric) else spec.phi2(n, J2[n]).reshape(n2 * c, -1)
                acc.add(n, (A @ B.T).reshape(n1, c, n2, c))
            continue
        sl1, sl2 = chunks(n1, b), chunks(n2, b)
        for bi, si in enumerate(sl1):
            J1 = jacobian_rows(f, params, group, x1[si])
            A = {n: spec.phi1(n, J1[n]).reshape(-1, J1[n].shape[-1]) for n in group}
            for bj, sj in enumerate(sl2):
                if same and spec.kind.symmetric and bj < bi:
                    continue
                J2 = J1 if (same and bi == bj) else jacobian_rows(f, params, group, xb[sj])
                for n in group:
                    B = spec.phi2(n, J2[n]).reshape(-1, J2[n].shape[-1])
                    blk = (A[n] @ B.T).reshape(si.stop - si.start, c, sj.stop - sj.start, c)
                    acc.add(n, blk, si, sj)
                    if same and spec.kind.symmetric and bj > bi:
                        acc.add(n, blk.permute(2, 3, 0, 1), sj, si)
                del J2


def _cat(parts: list[dict[str, torch.Tensor]], names: list[str]) -> dict[str, torch.Tensor]:
    return {n: torch.cat([p[n] for p in parts]) if len(parts) > 1 else parts[0][n] for n in names}

"""The kernel distance of [KV] Table 6 (the linearized model is ntkcheck.models.functional.linearize)."""
from __future__ import annotations

import torch


def kernel_distance(K0: torch.Tensor, K1: torch.Tensor, *, reduction: str = "elementwise",
                    eps: float = 0.0) -> float:
    """Distance of K1 from the reference kernel K0 ([KV] Table 6, Fixed Features).

    "elementwise" (Table 6: "average element-wise relative distance"):
        d = mean_{entries e} |K1_e - K0_e| / (|K0_e| + eps)
    "frobenius": d = ||K1 - K0||_F / ||K0||_F.
    K0 and K1 of equal shape (any, e.g. [N, C, N, C] or [N C, N C]); K0 is the
    pre-trained kernel. With eps = 0, an exactly zero entry of K0 raises ValueError.
    """
    if K0.shape != K1.shape:
        raise ValueError(f"kernel shapes differ: {tuple(K0.shape)} vs {tuple(K1.shape)}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    a, b = K0.double(), K1.double()
    if reduction == "elementwise":
        den = a.abs() + eps
        if bool((den == 0).any()):
            raise ValueError("K0 has exactly zero entries; pass eps > 0 for the element-wise relative distance")
        return float(((b - a).abs() / den).mean())
    if reduction == "frobenius":
        n0 = torch.linalg.norm(a)
        if float(n0) == 0:
            raise ValueError("K0 is zero; the relative Frobenius distance is undefined")
        return float(torch.linalg.norm(b - a) / n0)
    raise ValueError(f"reduction must be 'elementwise' or 'frobenius', got {reduction!r}")

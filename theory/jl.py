"""Johnson-Lindenstrauss bounds for subspace fine-tuning ([KV] Sec. 7, App. D).

LoRA ([KV] Lemma D.4, Thm D.5) and IntrinsicDimension ([KV] Def. D.1,
Thm D.2) replace an inner product <u, v> of the kernel by a randomly
projected one <P u, P v>, P in R^{k x d} with i.i.d. N(0, 1/k) entries.
[KV] Lemma D.3 (a corollary of Johnson 1984): if ||u||^2 <= c, ||v||^2 <= c,

    Pr[ |<u, v> - <P u, P v>| >= c eps ] <= 4 exp(-(eps^2 - eps^3) k / 4),

and a union bound over the N^2 pairs of a data set gives ([KV] Thm D.2, D.5)

    Pr[ exists i, j: |K_sub(i, j) - K(i, j)| >= c' eps ] <= 4 N^2 exp(-(eps^2 - eps^3) k / 4),

with c' = c for IntrinsicDimension (c bounds the kernel's diagonal) and
c' = c^2 for one LoRA layer (c bounds ||dh||^2 and ||x||^2).

How sharp the bound is. For a Gaussian projection the worst pair is a
diagonal entry at the largest norm, u = v with ||u||^2 = c: its deviation
|<P u, P u> - ||u||^2| / c = |chi2_k / k - 1| exactly (``chi2_deviation_tail``).
Its upper tail decays at Cramer's rate (``cramer_rate``)

    I(eps) = (eps - log(1 + eps)) / 2 = eps^2/4 - eps^3/6 + eps^4/8 - ...,

(the lower tail's rate (-eps - log(1 - eps)) / 2 is larger), with Bahadur and
Rao's prefactor: Pr[chi2_k / k >= 1 + eps] ~ exp(-k I) / (eps sqrt(pi k))
(``bahadur_rao_tail``). The JL exponent (eps^2 - eps^3)/4 lies below I by
~eps^3/12: it is Cramer's rate to second order in eps (I / r = 1.04, 1.10, 1.20
at eps = 0.1, 0.2, 0.3). An off-diagonal pair (||u||^2, ||v||^2 <= c) has a
rate >= I: <P u, P v> - <u, v> splits into independent chi-squares of weights
(1 + rho)/2 and -(1 - rho)/2, whose log-MGF is at most chi2's by convexity. So
the max over the N^2 entries decays at rate I in k, and Lemma D.3's factor 4
and the union's N^2 are the bound's only slack in its prefactor.

Pure math on floats and numpy arrays; no torch.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats


def _check_eps(eps: float) -> None:
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must lie in (0, 1) (the bound uses eps^2 - eps^3 > 0), got {eps}")


def jl_pair_bound(k: float, eps: float) -> float:
    """[KV] Lemma D.3: 4 exp(-(eps^2 - eps^3) k / 4), the tail for one pair (u, v). Not clipped at 1."""
    _check_eps(eps)
    return 4.0 * math.exp(-(eps**2 - eps**3) * k / 4.0)


def jl_tail_bound(n_samples: int, k: float, eps: float) -> float:
    """[KV] Thm D.2 / D.5: 4 N^2 exp(-(eps^2 - eps^3) k / 4), the union bound over N^2 pairs.

    The probability that some kernel entry moves by c' eps or more. Values
    above 1 are vacuous; they are returned as is (use ``min(1, .)`` to compare
    with a probability). Decreasing in k, increasing in N.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    return n_samples**2 * jl_pair_bound(k, eps)


def jl_tail_bound_layers(n_samples: int, k: float, eps: float, n_layers: int, form: str = "paper") -> float:
    """The L-layer form of the bound when LoRA is applied to L layers (threshold L c^2 eps).

    form="paper": [KV] Remark D.6 as printed,
        Pr[exists i, j: |K_LoRA - K| >= L c^2 eps] <= 4 N^2 exp(-L (eps^2 - eps^3) k / 4);
      it relies on the L layers' deviations being independent (a Chernoff
      bound for their sum), which holds for independent A's at fixed dh, x.
    form="union": what Lemma D.3 and a union bound over layers give without
      independence: if every layer stays within c^2 eps the sum stays within
      L c^2 eps, so the probability is <= L * 4 N^2 exp(-(eps^2 - eps^3) k / 4).
    """
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    if form == "paper":
        return jl_tail_bound(n_samples, n_layers * k, eps)
    if form == "union":
        return n_layers * jl_tail_bound(n_samples, k, eps)
    raise ValueError(f"unknown form {form!r}; expected 'paper' or 'union'")


def remark_d6_failure(n_samples: int, eps: float) -> float:
    """The failure probability Remark D.6's rank buys, in closed form: 4 N^(-3 + 5 eps).

    At k = 20 log N / eps^2 (c = 1) the exponent of Thm D.5 is (eps^2 - eps^3) k / 4
    = 5 (1 - eps) log N, so 4 N^2 exp(-.) = 4 N^(2 - 5 (1 - eps)): polynomially small in N
    for eps < 3/5 - log(4) / (5 log N). Written out, not through ``jl_tail_bound``, so the
    remark's promise does not move with the bound's implementation.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    _check_eps(eps)
    return 4.0 * float(n_samples) ** (-3.0 + 5.0 * eps)


def remark_d6_rank(n_samples: int, eps: float, c: float = 1.0) -> float:
    """[KV] Remark D.6: k >= 20 c^4 log N / eps^2 keeps every LoRA kernel entry within eps w.h.p.

    Here eps is the absolute deviation; in the units of Thm D.5 it is
    eps' = eps / c^2, and at this rank the bound is 4 N^2 N^(-5 (1 - eps')),
    i.e. 4 N^(-3 + 5 eps') (see ``bound_at_remark_rank``).
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    return 20.0 * c**4 * math.log(n_samples) / eps**2


def bound_at_remark_rank(n_samples: int, eps: float, c: float = 1.0) -> float:
    """jl_tail_bound(N, remark_d6_rank(N, eps, c), eps / c^2): the failure probability Remark D.6 buys."""
    return jl_tail_bound(n_samples, remark_d6_rank(n_samples, eps, c), eps / c**2)


def rank_for_confidence(n_samples: int, eps: float, delta: float) -> float:
    """Smallest k with 4 N^2 exp(-(eps^2 - eps^3) k / 4) <= delta: k = 4 log(4 N^2 / delta) / (eps^2 - eps^3)."""
    _check_eps(eps)
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    return 4.0 * math.log(4.0 * n_samples**2 / delta) / (eps**2 - eps**3)


def deviation_scale(n_samples: int, k: float) -> float:
    """sqrt(log N / k): the order of max_ij |K_sub - K| / c' over N^2 pairs (inverting the bound at delta ~ 1).

    Solving 4 N^2 exp(-eps^2 k / 4) = 1 for small eps gives eps = sqrt(4 log(4 N^2) / k),
    so the maximal deviation scales as k^(-1/2) at fixed N: slope -1/2 on log-log axes.
    """
    return math.sqrt(math.log(max(n_samples, 2)) / k)


def empirical_exceedance(deviations: np.ndarray, eps: float | np.ndarray) -> np.ndarray:
    """Fraction of draws whose maximal normalized deviation is >= eps.

    deviations: [D] = max_ij |K_sub(i, j) - K(i, j)| / c' for D independent projections.
    eps: scalar or [E]. Returns an array of shape eps.shape.
    """
    d = np.asarray(deviations, dtype=float).reshape(-1, 1)
    e = np.atleast_1d(np.asarray(eps, dtype=float)).reshape(1, -1)
    out = (d >= e).mean(axis=0)
    return out.reshape(np.shape(eps))


def cramer_rate(eps: float | np.ndarray) -> float | np.ndarray:
    """Cramer's rate of the chi-square upper tail: I(eps) = (eps - log(1 + eps)) / 2, eps > 0.

    -log Pr[chi2_k / k >= 1 + eps] / k -> I(eps) as k -> infinity (the Legendre transform of
    chi2_1's log-MGF -log(1 - 2 t) / 2 - t at 1 + eps). I >= (eps^2 - eps^3) / 4 on (0, 1):
    the JL exponent is a lower bound on it, equal to second order at small eps.
    """
    e = np.asarray(eps, dtype=float)
    if np.any(e <= 0):
        raise ValueError(f"eps must be positive, got {eps}")
    out = (e - np.log1p(e)) / 2.0
    return float(out) if np.ndim(out) == 0 else out


def chi2_deviation_tail(k: float | np.ndarray, eps: float) -> float | np.ndarray:
    """Pr[|chi2_k / k - 1| >= eps] = Pr[chi2_k >= k (1 + eps)] + Pr[chi2_k <= k (1 - eps)], exactly.

    The tail of the worst pair of Lemma D.3 under a Gaussian N(0, 1/k) projection: u = v with
    ||u||^2 = c, whose normalized deviation |(||P u||^2 - ||u||^2)| / c is |chi2_k / k - 1|.
    k may be an array; the lower term is 0 for eps >= 1.
    """
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    k = np.asarray(k, dtype=float)
    if np.any(k <= 0):
        raise ValueError(f"k must be positive, got {k}")
    lower = stats.chi2.cdf(k * (1.0 - eps), k) if eps < 1 else np.zeros_like(k)
    out = stats.chi2.sf(k * (1.0 + eps), k) + lower
    return float(out) if np.ndim(out) == 0 else out


def bahadur_rao_tail(k: float | np.ndarray, eps: float) -> float | np.ndarray:
    """exp(-k I(eps)) / (eps sqrt(pi k)): Bahadur-Rao's asymptotic of Pr[chi2_k / k >= 1 + eps].

    The tilt theta = eps / (2 (1 + eps)) and the tilted variance 2 (1 + eps)^2 of chi2_1 give the
    prefactor 1 / (theta sigma sqrt(2 pi k)) = 1 / (eps sqrt(pi k)); the ratio to the exact tail is
    1 + O(1 / k). So log(Pr * sqrt(k)) falls linearly in k at Cramer's rate: the model of a rate fit.
    """
    k = np.asarray(k, dtype=float)
    out = np.exp(-k * cramer_rate(eps)) / (eps * np.sqrt(np.pi * k))
    return float(out) if np.ndim(out) == 0 else out


def cramer_pair_bound(k: float | np.ndarray, eps: float) -> float | np.ndarray:
    """4 exp(-k I(eps)): Lemma D.3's form with Cramer's rate in place of (eps^2 - eps^3) / 4.

    The reference a sharp per-pair bound is held to: its slack over the worst pair's exact tail,
    4 exp(-k I) / ``chi2_deviation_tail``, is what Lemma D.3's constant 4 and the Chernoff step cost;
    the JL bound adds k (I - (eps^2 - eps^3) / 4) ~ k eps^3 / 12 on top.
    """
    k = np.asarray(k, dtype=float)
    out = 4.0 * np.exp(-k * cramer_rate(eps))
    return float(out) if np.ndim(out) == 0 else out

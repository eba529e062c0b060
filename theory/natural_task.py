"""[KV] App. C.5: one SGD step of the three-layer linear network f(xi) = V^T W U xi, in closed form.

With V frozen (eta_V = 0), output derivative chi = dl/df at the step's example xi_1,

    dU = -eta_U chi W^T V xi_1^T,        dW = -eta_W chi V (U xi_1)^T,

and because f is bilinear in (W, U) the change of f on any input xi is exactly

    f_1(xi) - f_0(xi) = kernel term + second-order term,                     ([KV] eq. 10)
    kernel term       = -chi [eta_W ||V||^2 <U xi_1, U xi> + eta_U ||W^T V||^2 <xi_1, xi>]
                      = -chi K(xi, xi_1),
    second-order term = eta_U eta_W chi^2 ||V||^2 <xi_1, xi> f_0(xi_1).

([KV] App. C.5 prints the second-order term with f_{t-1}(xi), the evaluated input; expanding
V^T dW dU xi gives f_0 at the step's own input xi_1, which the natural_task check confirms:
autograd steps of the network match kernel + second to 1e-13.)
So |second / kernel| = Theta(chi) when f_0 and K are Theta(1): Theta(1) in pretraining
(feature learning) and o(1) in fine-tuning on a natural task (chi -> 0, Def. 5.3).
Pure numpy; shapes: U [n, d], W [n, n], V [n], xi [d].
"""
from __future__ import annotations

import numpy as np


def natural_shift(width: int, d: float) -> float:
    """n^-d: the size of the downstream task's departure from the pretrained model, y = f_PT + n^-d g,
    for which chi_max = Theta(n^-d) ([KV] Def. 5.3: a natural task has chi_max -> 0)."""
    return float(width) ** (-float(d))


def linear3_forward(U: np.ndarray, W: np.ndarray, V: np.ndarray, xi: np.ndarray) -> float:
    """f(xi) = V^T W U xi."""
    return float(V @ (W @ (U @ xi)))


def linear3_kernel(U: np.ndarray, W: np.ndarray, V: np.ndarray, xi: np.ndarray, xi1: np.ndarray,
                   eta_U: float, eta_W: float) -> float:
    """K(xi, xi_1) = eta_W ||V||^2 <U xi_1, U xi> + eta_U ||W^T V||^2 <xi_1, xi> (lr-weighted NTK, V frozen)."""
    WtV = W.T @ V
    return float(eta_W * (V @ V) * ((U @ xi1) @ (U @ xi)) + eta_U * (WtV @ WtV) * (xi1 @ xi))


def linear3_step(U: np.ndarray, W: np.ndarray, V: np.ndarray, xi1: np.ndarray, chi: float,
                 eta_U: float, eta_W: float) -> tuple[np.ndarray, np.ndarray]:
    """(U_1, W_1) after one SGD step on example xi_1 with output derivative chi (V frozen)."""
    dU = -eta_U * chi * np.outer(W.T @ V, xi1)
    dW = -eta_W * chi * np.outer(V, U @ xi1)
    return U + dU, W + dW


def linear3_step_terms(U: np.ndarray, W: np.ndarray, V: np.ndarray, xi: np.ndarray, xi1: np.ndarray,
                       chi: float, eta_U: float, eta_W: float) -> tuple[float, float]:
    """(kernel term, second-order term) of f_1(xi) - f_0(xi) for the step on xi_1 (see module docstring)."""
    kernel = -chi * linear3_kernel(U, W, V, xi, xi1, eta_U, eta_W)
    second = eta_U * eta_W * chi**2 * float(V @ V) * float(xi1 @ xi) * linear3_forward(U, W, V, xi1)
    return kernel, second

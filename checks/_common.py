"""What several checks share that is neither model nor theory: synthetic data, small statistics, threads.

Not a check (the name starts with "_"). Everything runs in float64 and draws
randomness only from explicit generators.
"""
from __future__ import annotations

import contextlib
import ctypes
import math
from dataclasses import dataclass
from typing import Iterator

import torch

DTYPE = torch.float64


# ---------------------------------------------------------------- data
def sphere_inputs(n: int, d_in: int, g: torch.Generator, seq_len: int | None = None) -> torch.Tensor:
    """n inputs with ||x|| = sqrt(d_in) (per token when seq_len is given): [n, d_in] or [n, seq_len, d_in]."""
    shape = (n, d_in) if seq_len is None else (n, seq_len, d_in)
    x = torch.randn(*shape, generator=g, dtype=DTYPE)
    return x / x.norm(dim=-1, keepdim=True) * math.sqrt(d_in)


@dataclass(frozen=True)
class Teacher:
    """A fixed, width-independent smooth target g(x) = 2 scale a^T tanh(B x / sqrt(d)) / sqrt(m).

    Token inputs [n, T, d] are mean-pooled first, matching the students' mean pooling.
    """

    B: torch.Tensor
    a: torch.Tensor
    scale: float = 1.0

    @classmethod
    def draw(cls, d_in: int, g: torch.Generator, m: int = 64, scale: float = 1.0) -> "Teacher":
        return cls(torch.randn(m, d_in, generator=g, dtype=DTYPE), torch.randn(m, 1, generator=g, dtype=DTYPE),
                   scale)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.mean(dim=1)
        h = torch.tanh(x @ self.B.T / math.sqrt(x.shape[-1]))
        return h @ self.a / math.sqrt(self.a.shape[0]) * 2.0 * self.scale


# ---------------------------------------------------------------- memory estimates
#: float64 copies of a network's parameters a training point holds at once: the parameters, their
#: gradient, the update and the new parameters, Adam's two moments, a pretrained copy and a jvp tangent
PARAM_COPIES = 10


def mlp_params(width: int, d_in: int, depth: int, d_out: int = 1) -> int:
    """Parameter count of the factory's MLP: d_in n + (depth - 1) n^2 + n d_out (+ biases, at most depth n + d_out)."""
    return d_in * width + (depth - 1) * width * width + width * d_out + depth * width + d_out


def transformer_params(width: int, d_in: int, depth: int, n_heads: int, mlp: bool = False) -> int:
    """Parameter count of the factory's transformer: embedding, per block Q, K, V, O (H n x n each), readout."""
    block = 4 * n_heads * width * width + (2 * width * width if mlp else 0)
    return d_in * width + depth * block + width


def network_bytes(n_params: int, copies: int = PARAM_COPIES) -> int:
    """Bytes of ``copies`` float64 copies of a network with n_params parameters."""
    return 8 * copies * int(n_params)


# ---------------------------------------------------------------- statistics
def rms(x: torch.Tensor) -> float:
    return float(x.double().pow(2).mean().sqrt())


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||a||."""
    return float((a - b).norm() / a.norm())


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean())


def series(rows, key: str, x: str = "width", **where):
    """(x, |y|) lists of the rows matching where, for checks.plots.loglog_panels."""
    sel = [r for r in rows if all(r.get(k) == v for k, v in where.items())]
    return [r[x] for r in sel], [abs(float(r[key])) for r in sel]


# ---------------------------------------------------------------- threads
@contextlib.contextmanager
def limit_threads(n: int = 1) -> Iterator[None]:
    """Run a block with n torch intra-op threads and n OpenBLAS threads (numpy, scipy), then restore both.

    The checks' matrices are small (batches of 1-64 rows, Grams of <= 2048): thread parallelism does
    not pay, and on a shared 2-core machine spinning threads made them 10x slower (a 512 x 512 eigh
    4-8 s against 0.1 s single-threaded). OpenBLAS is found through /proc/self/maps; where that
    fails only torch is limited. n <= 0 leaves both alone.
    """
    if n <= 0:
        yield
        return
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(n)
    libs = []
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "openblas" in line.lower() and line.strip().endswith(".so")}
        for path in sorted(paths):
            lib = ctypes.CDLL(path)
            for get, put in (("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
                             ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
                             ("openblas_get_num_threads", "openblas_set_num_threads")):
                if hasattr(lib, get) and hasattr(lib, put):
                    libs.append((getattr(lib, put), int(getattr(lib, get)())))
                    break
    except OSError:
        libs = []
    for put, _ in libs:
        put(ctypes.c_int(n))
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        for put, k in libs:
            put(ctypes.c_int(k))


# ---------------------------------------------------------------- kernel behavior of fine-tuning
def finetune_kernel_behavior(f, p_start, optimizer, x, y, x_test, y_test, x_kernel, steps: int,
                             checkpoints: int) -> dict:
    """Fine-tune from p_start (full batch (x, y), ``steps`` steps of ``optimizer``) and measure how
    kernel-like it was ([KV] Def. 3.2, Table 1, Table 6; [ES] eq. 14, 17, 98):

    e_lin = rms_x |f_FT(x) - f_lin(x)| and e_lin_rel = ||f_FT - f_lin|| / ||f_FT - f_start|| on x_test,
      f_lin the jvp expansion at p_start; ft_change = rms |f_FT - f_start|;
    drift = max over ``checkpoints`` points of the trajectory of ||K_start - K_t||_F / ||K_start||_F
      (eNTK on x_kernel);
    table6 = mean_ij |K_FT - K_start|_ij / |K_start|_ij;
    movement = ||theta_FT - theta_start|| / ||theta_start||;
    lin_frac = (L_start - L_lin) / (L_start - L_FT) (test MSE), lin_gap = |1 - lin_frac|.
    """
    from ntkcheck.models import train
    from ntkcheck.models.functional import linearize, output, sq_norm
    from ntkcheck.models.kernels import kernel_distance, make_kernel_fn

    kernel_fn = make_kernel_fn(f, p_start)     # planned once, evaluated at every checkpoint
    K0 = kernel_fn(x_kernel)
    every = max(1, steps // checkpoints)
    drifts = []

    def on_step(step) -> None:
        if step.t % every == 0 or step.t == steps:
            drifts.append(kernel_distance(K0, kernel_fn(x_kernel, params=step.params), reduction="frobenius"))

    p_ft = train(f, p_start, optimizer, (x, y), steps, callback=on_step)
    K1 = kernel_fn(x_kernel, params=p_ft)
    f0, f1 = output(f, p_start, x_test), output(f, p_ft, x_test)
    with torch.no_grad():
        f_lin = linearize(f, p_start)(p_ft, x_test).detach()
    L0, L1, Llin = mse(f0, y_test), mse(f1, y_test), mse(f_lin, y_test)
    frac = (L0 - Llin) / (L0 - L1)
    delta = {k: p_ft[k] - p_start[k] for k in p_start}
    return {"e_lin": rms(f1 - f_lin), "e_lin_rel": float((f1 - f_lin).norm() / (f1 - f0).norm()),
            "ft_change": rms(f1 - f0), "drift": max(drifts),
            # eps: a saturated network (a diverged run) can have exactly zero kernel entries
            "table6": kernel_distance(K0, K1, eps=1e-12 * float(K0.abs().max())),
            "movement": (sq_norm(delta) / sq_norm(p_start)) ** 0.5, "lin_frac": frac, "lin_gap": abs(1.0 - frac),
            "loss_start": L0, "loss_ft": L1, "loss_lin": Llin}

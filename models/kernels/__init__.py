"""The empirical-kernel engine (see design.md): empirical_kernel and friends.

    K[i, a, j, b] = sum_M eta_M < phi1(grad_M f_a(x1_i)), phi2(grad_M f_b(x2_j)) >   [N1, C, N2, C]

Usage:
    f, params = functional(model.eval())
    kernel_fn = make_kernel_fn(f, params, kind="sgd")                    # plan once, apply many times
    K = kernel_fn(x_test, x_train); K_t = kernel_fn(x_test, x_train, params=theta_t)
    K = empirical_kernel(f, params, x_train)                              # [KV] Def. 3.4, [N, C, N, C]
    K = empirical_kernel(f, params, x_test, x_train, kind="asym_signgd")  # Def. 4.2
    K = empirical_kernel(f, params, x, kind="signgd",                     # Thm. C.4 per-tensor form
                         weights=model.learning_rates("signgd"), eps="auto")
    flatten(K) -> [(N1 C), (N2 C)];  trace_outputs(K) -> [N1, N2]

Methods: ntkcheck.models.kernels.common.KernelMethod. Solvers that consume
these kernels live in ntkcheck.theory.solvers.
"""
from ntkcheck.models.kernels.api import KernelFn, empirical_kernel, gradient_scales, make_kernel_fn
from ntkcheck.models.kernels.common import (SUBSETS, KernelKind, KernelMethod, biases_only, eps_sign, flatten,
                                            lora_only, no_embeddings, no_head, output_block, trace_outputs,
                                            unflatten)
from ntkcheck.models.functional import linearize
from ntkcheck.models.kernels.distance import kernel_distance
from ntkcheck.models.kernels.packed import pack_signs, packed_dot
from ntkcheck.models.kernels.structured import linear_factors
from ntkcheck.models.kernels.sketch import (intrinsic_dimension_kernel, jl_epsilon, jl_failure_probability,
                                            lora_kernel)

__all__ = ["empirical_kernel", "make_kernel_fn", "KernelFn", "gradient_scales", "KernelKind", "KernelMethod", "SUBSETS", "biases_only",
           "lora_only", "no_embeddings", "no_head", "eps_sign", "flatten", "unflatten", "trace_outputs",
           "output_block", "linearize", "kernel_distance", "lora_kernel", "intrinsic_dimension_kernel",
           "jl_epsilon", "jl_failure_probability", "pack_signs", "packed_dot", "linear_factors"]

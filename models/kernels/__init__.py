"""The empirical-kernel engine (see design.md): empirical_kernel and friends."""

"""ntkcheck: measure whether NTK theory of fine-tuning holds.

Subpackages: ntkcheck.theory (what the papers predict), ntkcheck.models
(networks, parametrizations, optimizers, the empirical-kernel engine),
ntkcheck.checks (width sweeps with verdicts), ntkcheck.realmodels
(pretrained language models). This package root holds the CLI and run-store I/O.
"""
__version__ = "0.1.0"

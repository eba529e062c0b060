"""Width-parametrized networks, parametrizations, optimizers and the empirical-kernel engine."""
from ntkcheck.models.attention import Transformer, TransformerConfig
from ntkcheck.models.functional import functional
from ntkcheck.models.mlp import MLP, MLPConfig
from ntkcheck.models.parametrization import MUP, NTK, SP, SP_LR, Parametrization, RoleScaling

__all__ = ["MLP", "MLPConfig", "Transformer", "TransformerConfig", "functional", "Parametrization",
           "RoleScaling", "SP", "SP_LR", "NTK", "MUP"]

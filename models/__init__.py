"""Width-parametrized networks, the one model factory, the training core and the empirical-kernel engine.

    model = build("mlp", width=1024, param=NTK, seed=0, dtype=torch.float64, d_in=8)
    f, params = model.apply, model.params()           # f(params, x) -> [B, C]
    opt = optim.sgd(model.learning_rates("sgd", 1.0))
    params = train(f, params, opt, (x, y), steps=50)
"""
from ntkcheck.models import optim
from ntkcheck.models.factory import ARCHITECTURES, build
from ntkcheck.models.functional import functional, linearize
from ntkcheck.models.layers import ParamLinear, WidthModel
from ntkcheck.models.lora import lora
from ntkcheck.models.mlp import MLP, MLPConfig
from ntkcheck.models.training import Step, mse, train
from ntkcheck.models.transformer import Transformer, TransformerConfig
from ntkcheck.theory.parametrization import MUP, NTK, SP, SP_LR, Parametrization, RoleScaling

__all__ = ["build", "ARCHITECTURES", "WidthModel", "ParamLinear", "MLP", "MLPConfig", "Transformer",
           "TransformerConfig", "functional", "linearize", "lora", "optim", "train", "Step", "mse",
           "Parametrization", "RoleScaling", "SP", "SP_LR", "NTK", "MUP"]

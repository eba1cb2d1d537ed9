"""jgd: gradient-descent variants for JAX as composable, sweepable init/update pairs."""


from jgd.adaptive import adagrad, adam, adamw, rmsprop
from jgd.minimize import LoopState, Result, minimize
from jgd.sweep import SweepResult, sweep
from jgd.smooth import momentum, nesterov, sgd
from jgd.wrappers import (
    accumulate,
    add_decayed_weights,
    apply_updates,
    chain,
    clip,
    clip_by_global_norm,
)

__version__ = "0.1.0"

__all__ = [
    "accumulate",
    "adagrad",
    "adam",
    "adamw",
    "add_decayed_weights",
    "apply_updates",
    "chain",
    "clip",
    "clip_by_global_norm",
    "LoopState",
    "Result",
    "minimize",
    "momentum",
    "nesterov",
    "prox",
    "rmsprop",
    "sgd",
    "sweep",
    "SweepResult",
]

"""jgd: gradient-descent variants for JAX as composable, sweepable init/update pairs."""

from jgd import (
    contrib,
    debug,
    prox,
    schedules,
)
from jgd.adaptive import adagrad, adam, adamw, rmsprop
from jgd.evaluation import Eval
from jgd.flat import flat
from jgd.groups import freeze, masked, multi_transform, partition, selective_transform, set_to_zero
from jgd.halving import halving
from jgd.lift import lift
from jgd.minimize import LoopState, Result, minimize
from jgd.nonsmooth import subgradient
from jgd.optax_zoo import (
    adabelief,
    adadelta,
    adafactor,
    adamax,
    adamaxw,
    adan,
    amsgrad,
    fromage,
    lamb,
    lars,
    lbfgs,
    lion,
    nadam,
    nadamw,
    noisy_sgd,
    novograd,
    optimistic_adam,
    optimistic_adam_v2,
    optimistic_gradient_descent,
    polyak_sgd,
    radam,
    rprop,
    sign_sgd,
    signum,
    sm3,
    yogi,
)
from jgd.proximal import proximal_gradient
from jgd.search import choice, loguniform, uniform
from jgd.smooth import momentum, nesterov, sgd
from jgd.sweep import SweepResult, sweep
from jgd.wrappers import (
    MultiSteps,
    accumulate,
    add_decayed_weights,
    apply_updates,
    chain,
    clip,
    clip_by_global_norm,
    skip_nonfinite,
)

__version__ = "0.2.0"

__all__ = [
    "MultiSteps",
    "freeze",
    "masked",
    "multi_transform",
    "partition",
    "selective_transform",
    "set_to_zero",
    "contrib",
    "debug",
    "lift",
    "adabelief",
    "adadelta",
    "adafactor",
    "adamax",
    "adamaxw",
    "adan",
    "amsgrad",
    "fromage",
    "lamb",
    "lars",
    "lbfgs",
    "lion",
    "nadam",
    "nadamw",
    "noisy_sgd",
    "novograd",
    "optimistic_adam",
    "optimistic_adam_v2",
    "optimistic_gradient_descent",
    "polyak_sgd",
    "radam",
    "rprop",
    "sign_sgd",
    "signum",
    "sm3",
    "yogi",
    "accumulate",
    "adagrad",
    "adam",
    "adamw",
    "add_decayed_weights",
    "apply_updates",
    "chain",
    "clip",
    "clip_by_global_norm",
    "Eval",
    "choice",
    "halving",
    "loguniform",
    "uniform",
    "flat",
    "LoopState",
    "Result",
    "minimize",
    "momentum",
    "nesterov",
    "prox",
    "proximal_gradient",
    "rmsprop",
    "schedules",
    "subgradient",
    "sgd",
    "skip_nonfinite",
    "sweep",
    "SweepResult",
]

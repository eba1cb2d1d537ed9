"""The rules a benchmark compares across libraries: each jgd smooth rule with optax's and
torch.optim's equivalent, all with jgd's default hyperparameters (learning rate 1e-3)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import optax

import jgd

__all__ = ["Rule", "RULES", "TORCH_IMPLEMENTATIONS"]


class Rule(NamedTuple):
    jgd: Callable[[], optax.GradientTransformation]
    optax: Callable[[], optax.GradientTransformation]
    torch: Callable  # (torch, tensors, **implementation) -> torch.optim.Optimizer


RULES = {
    "sgd": Rule(lambda: jgd.sgd(1e-3), lambda: optax.sgd(1e-3),
                lambda torch, ps, **kw: torch.optim.SGD(ps, lr=1e-3, **kw)),
    "momentum": Rule(lambda: jgd.momentum(1e-3), lambda: optax.sgd(1e-3, momentum=0.9),
                     lambda torch, ps, **kw: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, **kw)),
    "nesterov": Rule(lambda: jgd.nesterov(1e-3), lambda: optax.sgd(1e-3, momentum=0.9, nesterov=True),
                     lambda torch, ps, **kw: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, nesterov=True, **kw)),
    "adagrad": Rule(lambda: jgd.adagrad(1e-3), lambda: optax.adagrad(1e-3),
                    lambda torch, ps, **kw: torch.optim.Adagrad(ps, lr=1e-3, initial_accumulator_value=0.1, eps=1e-7, **kw)),
    "rmsprop": Rule(lambda: jgd.rmsprop(1e-3), lambda: optax.rmsprop(1e-3),
                    lambda torch, ps, **kw: torch.optim.RMSprop(ps, lr=1e-3, alpha=0.9, eps=1e-8, **kw)),
    "adam": Rule(lambda: jgd.adam(1e-3), lambda: optax.adam(1e-3),
                 lambda torch, ps, **kw: torch.optim.Adam(ps, lr=1e-3, **kw)),
    "adamw": Rule(lambda: jgd.adamw(1e-3), lambda: optax.adamw(1e-3),
                  lambda torch, ps, **kw: torch.optim.AdamW(ps, lr=1e-3, weight_decay=1e-4, **kw)),
}

# torch.optim's implementations of a rule, by name: the keyword that selects each.
TORCH_IMPLEMENTATIONS = {"forloop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}

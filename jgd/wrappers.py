"""Composition and gradient processing: ``chain``, clipping, weight decay, accumulation.

All of them keep the pytree-of-hyperparameters property: the inner optimizers and the
wrappers' own numbers are leaves, so a chain still compiles once for every value.
Plain optax transforms (closures) may be chained too; they become static parts of
the program.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jgd._transform import (
    Static,
    as_scalar,
    check_scalar,
    global_norm,
    transformation,
)

__all__ = [
    "apply_updates",
    "chain",
    "clip_by_global_norm",
    "clip",
    "add_decayed_weights",
    "accumulate",
    "AccumulateState",
]

apply_updates = optax.apply_updates


def _check_transform(name, opt):
    if not (hasattr(opt, "init") and hasattr(opt, "update")):
        raise TypeError(
            f"{name} must be an optimizer (an optax GradientTransformation), got {opt!r}"
        )
    return opt


def chain(*opts) -> optax.GradientTransformationExtraArgs:
    """Applies ``opts`` one after the other, like ``optax.chain``.

    Example::

      >>> opt = jgd.chain(jgd.clip_by_global_norm(1.0), jgd.adam(1e-3))
    """
    for i, opt in enumerate(opts):
        _check_transform(f"chain argument {i}", opt)
    return transformation(_chain_init, _chain_update, transforms=tuple(opts))


def _chain_init(hp, params):
    return tuple(opt.init(params) for opt in hp.transforms)


def _chain_update(hp, updates, state, params=None, **extra):
    new_state = []
    for opt, opt_state in zip(hp.transforms, state):
        opt = optax.with_extra_args_support(opt)
        updates, opt_state = opt.update(updates, opt_state, params, **extra)
        new_state.append(opt_state)
    return updates, tuple(new_state)


def _stateless_init(hp, params):
    del hp, params
    return optax.EmptyState()


def clip_by_global_norm(max_norm) -> optax.GradientTransformationExtraArgs:
    r"""Rescales the updates so their global norm is at most ``max_norm``:
    :math:`u \leftarrow u \cdot \min(1, c / \|u\|)`. Equals ``optax.clip_by_global_norm``.

    Reference: Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent
    neural networks", ICML 2013.
    """
    check_scalar("max_norm", max_norm, lower=0.0)
    return transformation(_stateless_init, _clip_norm_update, max_norm=max_norm)


def _clip_norm_update(hp, updates, state, params=None, **extra):
    del params, extra
    norm = global_norm(updates)
    max_norm = as_scalar(hp.max_norm)
    keep = norm < max_norm
    factor = jnp.where(keep, jnp.ones_like(norm), max_norm / norm)
    return jax.tree.map(lambda u: u * factor.astype(u.dtype), updates), state


def clip(max_abs) -> optax.GradientTransformationExtraArgs:
    """Clips every coordinate to ``[-max_abs, max_abs]``. Equals ``optax.clip``."""
    check_scalar("max_abs", max_abs, lower=0.0)
    return transformation(_stateless_init, _clip_update, max_abs=max_abs)


def _clip_update(hp, updates, state, params=None, **extra):
    del params, extra

    def leaf(u):
        bound = jnp.asarray(hp.max_abs, u.dtype)
        return jnp.clip(u, -bound, bound)

    return jax.tree.map(leaf, updates), state


def add_decayed_weights(rate) -> optax.GradientTransformationExtraArgs:
    r"""Adds ``rate · params`` to the updates (L2 regularisation's gradient):
    :math:`u \leftarrow u + \lambda x`. Equals ``optax.add_decayed_weights``."""
    check_scalar("rate", rate)
    return transformation(_stateless_init, _decay_update, rate=rate)


def _decay_update(hp, updates, state, params=None, **extra):
    del extra
    if params is None:
        raise ValueError("add_decayed_weights needs params: call update(grads, state, params)")
    return (
        jax.tree.map(lambda u, p: u + jnp.asarray(hp.rate, u.dtype) * p.astype(u.dtype), updates, params),
        state,
    )


class AccumulateState(NamedTuple):
    micro_step: jax.Array
    gradient_sum: Any
    inner: Any


def accumulate(opt, every: int) -> optax.GradientTransformationExtraArgs:
    r"""Micro-batch gradient accumulation: sums ``every`` gradients and, on the last
    one, steps ``opt`` with their mean; the other calls return zero updates.

    Averaging ``every`` micro-batch gradients then stepping equals one step on the whole
    batch. There is no ``lax.cond`` over whole trees: the inner update is computed each
    call and selected with ``jnp.where``, which XLA fuses.

    Example::

      >>> opt = jgd.accumulate(jgd.adam(1e-3), every=4)
    """
    _check_transform("opt", opt)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an int >= 1, got {every!r}")
    return transformation(_accumulate_init, _accumulate_update, opt=opt, every=Static(every))


def _accumulate_init(hp, params):
    return AccumulateState(
        micro_step=jnp.zeros([], jnp.int32),
        gradient_sum=jax.tree.map(jnp.zeros_like, params),
        inner=hp.opt.init(params),
    )


def _accumulate_update(hp, updates, state, params=None, **extra):
    opt = optax.with_extra_args_support(hp.opt)
    every = hp.every
    gradient_sum = jax.tree.map(lambda s, g: s + g.astype(s.dtype), state.gradient_sum, updates)
    emit = state.micro_step == every - 1
    mean = jax.tree.map(lambda s, g: (s / every).astype(g.dtype), gradient_sum, updates)
    inner_updates, inner_state = opt.update(mean, state.inner, params, **extra)
    updates = jax.tree.map(lambda u: jnp.where(emit, u, jnp.zeros_like(u)), inner_updates)
    inner_state = optax.tree.where(emit, inner_state, state.inner)
    gradient_sum = jax.tree.map(
        lambda s: jnp.where(emit, jnp.zeros_like(s), s), gradient_sum
    )
    return updates, AccumulateState(
        micro_step=jnp.where(emit, 0, state.micro_step + 1).astype(jnp.int32),
        gradient_sum=gradient_sum,
        inner=inner_state,
    )

"""Composition and gradient processing: ``chain``, clipping, weight decay, accumulation.

All of them keep the pytree-of-hyperparameters property: the inner optimizers and the
wrappers' own numbers are leaves, so a chain still compiles once for every value.
Plain optax transforms (closures) may be chained too; they become static parts of
the program.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jgd._transform import (
    Static,
    as_scalar,
    check_same_structure,
    check_scalar,
    global_norm,
    transformation,
    wider,
)

__all__ = [
    "apply_updates",
    "chain",
    "clip_by_global_norm",
    "clip",
    "add_decayed_weights",
    "accumulate",
    "AccumulateState",
    "skip_nonfinite",
    "SkipNonfiniteState",
]



def apply_updates(params, updates):
    """``params + updates`` leaf by leaf, as ``optax.apply_updates``: the sum is taken in
    the wider of the two dtypes and cast back to the params' dtype (bf16 params with
    float32 updates round once), and it also works under strict dtype promotion.

    Example::

      >>> jgd.apply_updates({"w": jnp.ones(2, jnp.bfloat16)}, {"w": jnp.full(2, 0.5)})
      {'w': Array([1.5, 1.5], dtype=bfloat16)}
    """

    def leaf(p, u):
        if p is None:
            return None
        p, u = jnp.asarray(p), jnp.asarray(u)
        dtype = wider(p.dtype, u.dtype)
        return (p.astype(dtype) + u.astype(dtype)).astype(p.dtype)

    check_same_structure("updates", updates, "params", params)
    return jax.tree.map(leaf, params, updates, is_leaf=lambda x: x is None)


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

    Example::

      >>> opt = jgd.chain(jgd.clip_by_global_norm(1.0), jgd.sgd(1.0))
      >>> updates, _ = opt.update(jnp.array([3.0, 4.0]), opt.init(jnp.zeros(2)))
      >>> updates  # the gradient (norm 5) rescaled to norm 1, then a step of -1
      Array([-0.6, -0.8], dtype=float32)

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
    """Clips every coordinate to ``[-max_abs, max_abs]``. Equals ``optax.clip``.

    Example::

      >>> opt = jgd.clip(0.5)
      >>> opt.update(jnp.array([-2.0, 0.1, 3.0]), opt.init(jnp.zeros(3)))[0]
      Array([-0.5,  0.1,  0.5], dtype=float32)
    """
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
    :math:`u \leftarrow u + \lambda x`. Equals ``optax.add_decayed_weights``.

    Example::

      >>> opt = jgd.chain(jgd.add_decayed_weights(0.1), jgd.sgd(1.0))  # SGD on f + 0.05‖x‖²
      >>> x = jnp.array([1.0, -2.0])
      >>> opt.update(jnp.zeros(2), opt.init(x), x)[0]
      Array([-0.1,  0.2], dtype=float32)
    """
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


def _zero_unless(flag, updates):
    """``updates`` where ``flag`` holds, zeros otherwise (a select XLA fuses, no cond)."""
    return jax.tree.map(lambda u: jnp.where(flag, u, jnp.zeros_like(u)), updates)


def _keep_unless(flag, new_state, old_state):
    """``new_state`` where ``flag`` holds, else ``old_state``; every leaf keeps the old
    state's dtype, so an inner rule that promotes (bf16 state, f32 grads) still fits."""
    return jax.tree.map(
        lambda new, old: jnp.where(flag, jnp.asarray(new).astype(jnp.result_type(old)), old),
        new_state,
        old_state,
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
    check_same_structure("updates", updates, "the optimizer state's gradient sum", state.gradient_sum)
    gradient_sum = jax.tree.map(lambda s, g: s + g.astype(s.dtype), state.gradient_sum, updates)
    emit = state.micro_step == every - 1
    mean = jax.tree.map(lambda s, g: (s / every).astype(g.dtype), gradient_sum, updates)
    inner_updates, inner_state = opt.update(mean, state.inner, params, **extra)
    updates = _zero_unless(emit, inner_updates)
    inner_state = _keep_unless(emit, inner_state, state.inner)
    gradient_sum = jax.tree.map(
        lambda s: jnp.where(emit, jnp.zeros_like(s), s), gradient_sum
    )
    return updates, AccumulateState(
        micro_step=jnp.where(emit, 0, state.micro_step + 1).astype(jnp.int32),
        gradient_sum=gradient_sum,
        inner=inner_state,
    )


class SkipNonfiniteState(NamedTuple):
    inner: Any
    skipped: jax.Array  # how many updates were skipped so far (int32)


def skip_nonfinite(opt) -> optax.GradientTransformationExtraArgs:
    r"""Skips updates whose gradients (or ``value=``) are not finite.

    When any gradient entry or the loss passed as ``value=`` is NaN or infinite, the
    update is zero and the inner state is kept; ``state.skipped`` counts such steps.
    Otherwise it is ``opt``'s update. Like :func:`accumulate` it selects with
    ``jnp.where`` rather than ``lax.cond`` over whole trees, and every state leaf keeps
    its dtype, so bf16 params with float32 gradients work (the case that broke optax's
    ``apply_if_finite`` and ``MultiSteps``, optax #377 and #1038).

    Example::

      >>> opt = jgd.skip_nonfinite(jgd.adam(1e-3))
      >>> params = jnp.zeros(2)
      >>> state = opt.init(params)
      >>> updates, state = opt.update(jnp.array([1.0, jnp.nan]), state, params)
      >>> updates, state.skipped
      (Array([0., 0.], dtype=float32), Array(1, dtype=int32))
    """
    _check_transform("opt", opt)
    return transformation(_skip_init, _skip_update, opt=opt)


def _skip_init(hp, params):
    return SkipNonfiniteState(inner=hp.opt.init(params), skipped=jnp.zeros([], jnp.int32))


def _all_finite(tree):
    checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return functools.reduce(jnp.logical_and, checks, jnp.ones([], bool))


def _skip_update(hp, updates, state, params=None, **extra):
    opt = optax.with_extra_args_support(hp.opt)
    finite = _all_finite((updates, extra.get("value")))
    inner_updates, inner_state = opt.update(updates, state.inner, params, **extra)
    return _zero_unless(finite, inner_updates), SkipNonfiniteState(
        inner=_keep_unless(finite, inner_state, state.inner),
        skipped=state.skipped + (~finite).astype(jnp.int32),
    )

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
    "MultiSteps",
    "skip_nonfinite",
    "SkipNonfiniteState",
]



def apply_updates(params, updates):
    """``params + updates`` leaf by leaf, as ``optax.apply_updates``: the sum is taken in
    the wider of the two dtypes and cast back to the params' dtype (bf16 params with
    float32 updates round once), and it also works under strict dtype promotion.

    Args:
      params: the params (a pytree).
      updates: the updates, a pytree like ``params``.

    Returns:
      The new params, with the params' dtypes.

    Examples:
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

    Examples:
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
    $u \leftarrow u \cdot \min(1, c / \|u\|)$. Equals ``optax.clip_by_global_norm``.

    Args:
      max_norm: $c$, the largest global norm (``> 0``; a leaf).

    Returns:
      The rule (an `optax.GradientTransformationExtraArgs` whose numbers are pytree leaves).

    Examples:
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

    Args:
      max_abs: the largest absolute value of a coordinate (``> 0``; a leaf).

    Returns:
      The rule (an `optax.GradientTransformationExtraArgs` whose numbers are pytree leaves).

    Examples:
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
    $u \leftarrow u + \lambda x$. Equals ``optax.add_decayed_weights``.

    Args:
      rate: $\lambda$ (``>= 0``; a leaf).

    Returns:
      The rule (an `optax.GradientTransformationExtraArgs` whose numbers are pytree leaves).

    Examples:
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
    """optax.MultiSteps' fields, with their meaning."""

    mini_step: jax.Array  # micro-batches accumulated since the last inner step (0 .. every-1)
    gradient_step: jax.Array  # inner steps taken so far
    inner_opt_state: Any
    acc_grads: Any  # the mean of this window's micro-batch gradients so far (their sum without use_grad_mean)


def accumulate(opt, every: int, *, use_grad_mean: bool = True, accumulator_dtype=None
               ) -> optax.GradientTransformationExtraArgs:
    r"""Micro-batch gradient accumulation: averages ``every`` gradients and, on the last
    one, steps ``opt`` with their mean; the other calls return zero updates.

    Averaging ``every`` micro-batch gradients then stepping equals one step on the whole
    batch. The state has ``optax.MultiSteps``' fields (``mini_step``, ``gradient_step``,
    ``inner_opt_state``, ``acc_grads``) and the same running mean
    $a \leftarrow (g + n\,a)/(n + 1)$ (``use_grad_mean=False``: the sum), so the numbers
    are MultiSteps'. There is no ``lax.cond`` over whole trees: the inner update is computed
    each call and selected with ``jnp.where``, which XLA fuses.

    Args:
      opt: the inner optimizer.
      every: micro-batches per inner step (a Python int >= 1).
      use_grad_mean: average (True, as optax) or sum the micro-batch gradients.
      accumulator_dtype: ``acc_grads``' dtype (default: the params').

    Examples:
      >>> opt = jgd.accumulate(jgd.adam(1e-3), every=4)
    """
    _check_transform("opt", opt)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an int >= 1, got {every!r}")
    if not isinstance(use_grad_mean, bool):
        raise TypeError(f"use_grad_mean must be a bool, got {use_grad_mean!r}")
    return transformation(_accumulate_init, _accumulate_update, opt=opt, every=Static(every),
                          use_grad_mean=use_grad_mean, accumulator_dtype=Static(accumulator_dtype))


def MultiSteps(opt, every_k_schedule, use_grad_mean: bool = True, should_skip_update_fn=None,
               accumulator_dtype=None):  # noqa: N802 - optax's spelling
    """``optax.MultiSteps`` as optax spells it: [`jgd.accumulate`][jgd.accumulate] with ``every =
    every_k_schedule`` (a Python int; a schedule of k is not supported).

    The result is already a gradient transformation (``.gradient_transformation()`` returns
    it too); ``jgd.MultiSteps.has_updated(state)`` is optax's.

    Args:
      opt: the rule applied every ``every_k_schedule`` steps to the accumulated gradient.
      every_k_schedule: k, a Python int ``>= 1``.
      use_grad_mean: apply the mean (``True``) or the sum of the k gradients.
      should_skip_update_fn: not supported (must be ``None``; see [`jgd.skip_nonfinite`][jgd.skip_nonfinite]).
      accumulator_dtype: the accumulated gradient's dtype (default: the gradients').

    Returns:
      The rule (an `optax.GradientTransformationExtraArgs` whose numbers are pytree leaves).

    Examples:
      >>> opt = jgd.MultiSteps(jgd.adam(1e-3), every_k_schedule=4)
      >>> opt.init(jnp.zeros(2)).mini_step
      Array(0, dtype=int32)
    """
    if callable(every_k_schedule):
        raise TypeError("jgd.MultiSteps takes every_k_schedule as a Python int; a schedule of k is not supported "
                        "(use optax.MultiSteps for that)")
    if should_skip_update_fn is not None:
        raise TypeError("jgd.MultiSteps does not take should_skip_update_fn; wrap the inner optimizer in "
                        "jgd.skip_nonfinite to skip non-finite steps")
    return accumulate(opt, every_k_schedule, use_grad_mean=use_grad_mean, accumulator_dtype=accumulator_dtype)


def _has_updated(state) -> jax.Array:
    """Whether the last update stepped the inner optimizer (optax's ``MultiSteps.has_updated``)."""
    return jnp.logical_and(state.mini_step == 0, state.gradient_step > 0)


MultiSteps.has_updated = _has_updated  # type: ignore[attr-defined]


def _running_mean(g, a, n):
    dtype = wider(g.dtype, a.dtype)
    count = n.astype(dtype)
    return ((g.astype(dtype) + count * a.astype(dtype)) / (count + 1)).astype(a.dtype)


def _accumulate_init(hp, params):
    dtype = hp.accumulator_dtype
    return AccumulateState(
        mini_step=jnp.zeros([], jnp.int32),
        gradient_step=jnp.zeros([], jnp.int32),
        inner_opt_state=hp.opt.init(params),
        acc_grads=jax.tree.map(lambda p: jnp.zeros_like(p, dtype), params),
    )


def _accumulate_update(hp, updates, state, params=None, **extra):
    opt = optax.with_extra_args_support(hp.opt)
    every = hp.every
    check_same_structure("updates", updates, "the optimizer state's acc_grads", state.acc_grads)
    n = state.mini_step
    if hp.use_grad_mean:  # optax's running mean, term by term
        acc_grads = jax.tree.map(lambda g, a: _running_mean(g, a, n), updates, state.acc_grads)
    else:
        acc_grads = jax.tree.map(lambda g, a: (a + g).astype(a.dtype), updates, state.acc_grads)
    emit = n == every - 1
    inner_updates, inner_state = opt.update(
        jax.tree.map(lambda a, g: a.astype(g.dtype), acc_grads, updates), state.inner_opt_state, params, **extra)
    return _zero_unless(emit, inner_updates), AccumulateState(
        mini_step=jnp.where(emit, 0, n + 1).astype(jnp.int32),
        gradient_step=(state.gradient_step + emit.astype(jnp.int32)).astype(jnp.int32),
        inner_opt_state=_keep_unless(emit, inner_state, state.inner_opt_state),
        acc_grads=jax.tree.map(lambda a: jnp.where(emit, jnp.zeros_like(a), a), acc_grads),
    )


class SkipNonfiniteState(NamedTuple):
    inner: Any
    skipped: jax.Array  # how many updates were skipped so far (int32)


def skip_nonfinite(opt) -> optax.GradientTransformationExtraArgs:
    r"""Skips updates whose gradients (or ``value=``) are not finite.

    When any gradient entry or the loss passed as ``value=`` is NaN or infinite, the
    update is zero and the inner state is kept; ``state.skipped`` counts such steps.
    Otherwise it is ``opt``'s update. Like [`jgd.accumulate`][jgd.accumulate] it selects with
    ``jnp.where`` rather than ``lax.cond`` over whole trees, and every state leaf keeps
    its dtype, so bf16 params with float32 gradients work (the case that broke optax's
    ``apply_if_finite`` and ``MultiSteps``, optax #377 and #1038).

    Args:
      opt: the rule to protect.

    Returns:
      The rule (an `optax.GradientTransformationExtraArgs` whose numbers are pytree leaves).

    Examples:
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

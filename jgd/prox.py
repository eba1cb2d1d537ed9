"""Proximal operators ``prox(x, step) -> x`` over pytrees, for [`jgd.proximal_gradient`][jgd.proximal_gradient].

``prox_{step·h}(x) = argmin_z h(z)·step + ½‖z − x‖²``. Each factory returns a
``jax.tree_util.Partial`` over its numeric parameters, so a strength is a pytree leaf
(sweepable, no recompiles). A strength (or a box bound) is a number for every leaf, or a
pytree shaped like the params with one per leaf (jaxopt's per-leaf ``l1reg``). Any
function ``(x, step) -> x`` may be used instead. Projections reuse ``optax.projections``.

Examples:
  >>> jgd.prox.l1(1.0)(jnp.array([3.0, -0.5, 1.5]), 0.5)  # soft threshold at 0.5
  Array([ 2.5, -0. ,  1. ], dtype=float32)
  >>> jgd.prox.box(0.0, 1.0)({"a": jnp.array([-1.0, 2.0])}, 1.0)
  {'a': Array([0., 1.], dtype=float32)}
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jgd._transform import check_scalar, global_norm, scalar_dtype

__all__ = ["l1", "l2", "nonnegative", "box", "l2_ball", "objective"]


def _cast(value, like):
    return jnp.asarray(value).astype(jnp.result_type(like))


def _is_tree(value) -> bool:
    return isinstance(value, (dict, list, tuple)) or (
        not isinstance(value, (jax.Array, np.ndarray, np.generic, float, int)) and len(jax.tree.leaves(value)) > 1)


def _check_strength(name, value, **bounds):
    """A number, or a pytree of numbers checked leaf by leaf (concrete leaves only)."""
    if not jax.tree.leaves(value):
        raise ValueError(f"{name} must be a number or a pytree of numbers, got {value!r}")
    for path, leaf in jax.tree_util.tree_flatten_with_path(value)[0]:
        check_scalar(f"{name}{jax.tree_util.keystr(path)}", leaf, **bounds)
    return value


def _per_leaf(name, value, x):
    """``value`` as a pytree like ``x``: a number (or array) repeated for every leaf, or a
    pytree of the same structure as ``x`` taken as it is."""
    if not _is_tree(value):
        return jax.tree.map(lambda _: value, x)
    if jax.tree.structure(value) != jax.tree.structure(x):
        raise ValueError(
            f"{name} is a pytree, so it must match the params' structure (one value per leaf); got "
            f"{jax.tree.structure(value)} for params {jax.tree.structure(x)}"
        )
    return value


def l1(strength):
    r"""Soft thresholding, the prox of $\lambda\|x\|_1$:
    $\operatorname{sign}(x)\max(|x| - \text{step}\cdot\lambda, 0)$.

    Args:
      strength: $\lambda$ (``>= 0``), a number or a pytree like the params.

    Returns:
      The operator ``prox(x, step)``, a pytree whose numbers are leaves.

    Example: ``jgd.proximal_gradient(lr, prox=jgd.prox.l1(0.1))`` solves the Lasso.
    """
    _check_strength("strength", strength, lower=0.0)
    return jax.tree_util.Partial(_soft_threshold, strength)


def _soft_threshold(strength, x, step):
    def leaf(v, s):
        threshold = _cast(step, v) * _cast(s, v)
        return jnp.sign(v) * jnp.maximum(jnp.abs(v) - threshold, jnp.zeros((), v.dtype))

    return jax.tree.map(leaf, x, _per_leaf("strength", strength, x))


def l2(strength):
    r"""The prox of $\frac{\lambda}{2}\|x\|^2$: $x / (1 + \text{step}\cdot\lambda)$.

    Args:
      strength: $\lambda$ (``>= 0``), a number or a pytree like the params.

    Returns:
      The operator ``prox(x, step)``, a pytree whose numbers are leaves.

    """
    _check_strength("strength", strength, lower=0.0)
    return jax.tree_util.Partial(_shrink, strength)


def _shrink(strength, x, step):
    return jax.tree.map(lambda v, s: v / (1 + _cast(step, v) * _cast(s, v)), x, _per_leaf("strength", strength, x))


def nonnegative():
    r"""Projection onto the non-negative orthant, the prox of its indicator.

    Returns:
      The operator ``prox(x, step)``, a pytree whose numbers are leaves.

    """
    return jax.tree_util.Partial(_nonnegative)


def _nonnegative(x, step):
    del step
    return optax.projections.projection_non_negative(x)


def box(lower, upper):
    """Projection onto ``[lower, upper]`` (scalars or pytrees like ``x``).

    Args:
      lower: the lower bound, a number or a pytree like ``x``.
      upper: the upper bound, likewise (``>= lower``).

    Returns:
      The operator ``prox(x, step)``, a pytree whose numbers are leaves.

    """
    for name, value in (("lower", lower), ("upper", upper)):
        _check_strength(name, value)
    concrete = not any(_is_tree(v) or isinstance(v, jax.core.Tracer) for v in (lower, upper))
    if concrete and np.any(np.asarray(lower) > np.asarray(upper)):
        raise ValueError(f"lower must be <= upper, got lower={lower!r}, upper={upper!r}")
    return jax.tree_util.Partial(_box, lower, upper)


def _box(lower, upper, x, step):
    del step
    return jax.tree.map(lambda v, lo, hi: jnp.clip(v, _cast(lo, v), _cast(hi, v)), x,
                        _per_leaf("lower", lower, x), _per_leaf("upper", upper, x))


def l2_ball(radius):
    r"""Projection onto the Euclidean ball of ``radius`` (the whole pytree as one vector):
    $x \cdot \min(1, r / \|x\|)$.

    Args:
      radius: the ball's radius (``>= 0``).

    Returns:
      The operator ``prox(x, step)``, a pytree whose numbers are leaves.

    """
    check_scalar("radius", radius, lower=0.0)
    return jax.tree_util.Partial(_l2_ball, radius)


def _l2_ball(radius, x, step):
    del step
    return optax.projections.projection_l2_ball(x, radius)


# --------------------------------------------------------------------------- g itself


def objective(prox, x):
    """The non-smooth term ``g(x)`` whose prox ``prox`` is, when ``prox`` is one of this
    module's operators (``l1``: λ‖x‖₁, ``l2``: (λ/2)‖x‖², the projections: 0 inside the set
    and ``inf`` outside); ``None`` for any other function (then the loop knows only f).

    Args:
      prox: a proximal operator.
      x: the point (a pytree like the params).

    Returns:
      $g(x)$ as a scalar, or ``None`` when ``prox`` is not one of this module's.

    Examples:
      >>> float(jgd.prox.objective(jgd.prox.l1(0.5), jnp.array([1.0, -2.0])))
      1.5
      >>> jgd.prox.objective(lambda x, step: x, jnp.zeros(2)) is None
      True
    """
    if isinstance(prox, jax.tree_util.Partial) and prox.func in _OBJECTIVES:
        return _OBJECTIVES[prox.func](*prox.args, x)
    return None


def _total(terms):
    dtype = scalar_dtype()
    return sum((jnp.sum(t).astype(dtype) for t in jax.tree.leaves(terms)), jnp.zeros((), dtype))


def _indicator(inside):
    dtype = scalar_dtype()
    return jnp.where(inside, jnp.zeros((), dtype), jnp.full((), jnp.inf, dtype))


def _all(flags):
    return functools.reduce(jnp.logical_and, [jnp.all(f) for f in jax.tree.leaves(flags)], jnp.ones((), bool))


def _l1_value(strength, x):
    return _total(jax.tree.map(lambda v, s: _cast(s, v) * jnp.abs(v), x, _per_leaf("strength", strength, x)))


def _l2_value(strength, x):
    return _total(jax.tree.map(lambda v, s: 0.5 * _cast(s, v) * jnp.square(v), x, _per_leaf("strength", strength, x)))


def _nonnegative_value(x):
    return _indicator(_all(jax.tree.map(lambda v: v >= 0, x)))


def _box_value(lower, upper, x):
    inside = jax.tree.map(lambda v, lo, hi: (v >= _cast(lo, v)) & (v <= _cast(hi, v)), x,
                          _per_leaf("lower", lower, x), _per_leaf("upper", upper, x))
    return _indicator(_all(inside))


def _l2_ball_value(radius, x):
    norm = global_norm(x)
    # the projection's output may overshoot the radius by rounding
    slack = 1 + 16 * jnp.finfo(norm.dtype).eps
    return _indicator(norm <= jnp.asarray(radius, norm.dtype) * slack)


_OBJECTIVES = {_soft_threshold: _l1_value, _shrink: _l2_value, _nonnegative: _nonnegative_value, _box: _box_value,
               _l2_ball: _l2_ball_value}

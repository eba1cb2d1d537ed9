"""Proximal operators ``prox(x, step) -> x`` over pytrees, for :func:`jgd.proximal_gradient`.

``prox_{step·h}(x) = argmin_z h(z)·step + ½‖z − x‖²``. Each factory returns a
``jax.tree_util.Partial`` over its numeric parameters, so a strength is a pytree leaf
(sweepable, no recompiles). Any function ``(x, step) -> x`` may be used instead.
Projections reuse ``optax.projections``.

Example::

  >>> jgd.prox.l1(1.0)(jnp.array([3.0, -0.5, 1.5]), 0.5)  # soft threshold at 0.5
  Array([ 2.5, -0. ,  1. ], dtype=float32)
  >>> jgd.prox.box(0.0, 1.0)({"a": jnp.array([-1.0, 2.0])}, 1.0)
  {'a': Array([0., 1.], dtype=float32)}
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jgd._transform import check_scalar

__all__ = ["l1", "l2", "nonnegative", "box", "l2_ball"]


def _cast(value, like):
    return jnp.asarray(value).astype(jnp.result_type(like))


def l1(strength):
    r"""Soft thresholding, the prox of :math:`\lambda\|x\|_1`:
    :math:`\operatorname{sign}(x)\max(|x| - \text{step}\cdot\lambda, 0)`.

    Example: ``jgd.proximal_gradient(lr, prox=jgd.prox.l1(0.1))`` solves the Lasso.
    """
    check_scalar("strength", strength, lower=0.0)
    return jax.tree_util.Partial(_soft_threshold, strength)


def _soft_threshold(strength, x, step):
    def leaf(v):
        threshold = _cast(step, v) * _cast(strength, v)
        return jnp.sign(v) * jnp.maximum(jnp.abs(v) - threshold, jnp.zeros((), v.dtype))

    return jax.tree.map(leaf, x)


def l2(strength):
    r"""The prox of :math:`\frac{\lambda}{2}\|x\|^2`: :math:`x / (1 + \text{step}\cdot\lambda)`."""
    check_scalar("strength", strength, lower=0.0)
    return jax.tree_util.Partial(_shrink, strength)


def _shrink(strength, x, step):
    return jax.tree.map(lambda v: v / (1 + _cast(step, v) * _cast(strength, v)), x)


def nonnegative():
    """Projection onto the non-negative orthant, the prox of its indicator."""
    return jax.tree_util.Partial(_nonnegative)


def _nonnegative(x, step):
    del step
    return optax.projections.projection_non_negative(x)


def box(lower, upper):
    """Projection onto ``[lower, upper]`` (scalars or pytrees like ``x``)."""
    for name, value in (("lower", lower), ("upper", upper)):
        if not jax.tree.leaves(value):
            raise ValueError(f"{name} must be a number or a pytree of arrays, got {value!r}")
        if not isinstance(value, (dict, list, tuple)):
            check_scalar(name, value)
    concrete = not any(isinstance(v, (dict, list, tuple, jax.core.Tracer)) for v in (lower, upper))
    if concrete and np.any(np.asarray(lower) > np.asarray(upper)):
        raise ValueError(f"lower must be <= upper, got lower={lower!r}, upper={upper!r}")
    return jax.tree_util.Partial(_box, lower, upper)


def _box(lower, upper, x, step):
    del step
    if not isinstance(lower, (dict, list, tuple)):
        lower = jax.tree.map(lambda v: _cast(lower, v), x)
        upper = jax.tree.map(lambda v: _cast(upper, v), x)
    return jax.tree.map(lambda v, lo, hi: jnp.clip(v, lo.astype(v.dtype), hi.astype(v.dtype)), x, lower, upper)


def l2_ball(radius):
    r"""Projection onto the Euclidean ball of ``radius`` (the whole pytree as one vector):
    :math:`x \cdot \min(1, r / \|x\|)`."""
    check_scalar("radius", radius, lower=0.0)
    return jax.tree_util.Partial(_l2_ball, radius)


def _l2_ball(radius, x, step):
    del step
    return optax.projections.projection_l2_ball(x, radius)

"""Gradient descent and its momentum variants: ``sgd``, ``momentum``, ``nesterov``."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jgd._transform import (
    CountState,
    check_decay,
    check_learning_rate,
    check_state_dtype,
    compute_dtype,
    increment,
    learning_rate_at,
    map_leaves,
    moments_like,
    transformation,
    zero_count,
)

__all__ = ["sgd", "momentum", "nesterov", "MomentumState"]


def sgd(learning_rate, momentum=None, nesterov: bool = False, accumulator_dtype=None
        ) -> optax.GradientTransformationExtraArgs:
    r"""(Stochastic) gradient descent: $u_t = -\eta_t\, g_t$.

    Full-batch GD, SGD or mini-batch GD depending on the gradient it is fed
    (see [`jgd.minimize`][jgd.minimize.minimize]). Equals ``optax.sgd`` with the same arguments: with
    ``momentum`` it is [`jgd.momentum`][jgd.momentum] (``beta=momentum``, ``nesterov``, the trace in
    ``accumulator_dtype``).

    Args:
      learning_rate: a number ``>= 0`` or a schedule ``count -> scalar``.
      momentum: ``None`` (plain gradient descent) or the momentum coefficient in ``[0, 1)``.
      nesterov: Nesterov's look-ahead form (needs ``momentum``).
      accumulator_dtype: the momentum trace's dtype (default: the params').

    Returns:
      The rule (an `optax.GradientTransformationExtraArgs` whose numbers are pytree leaves).

    Examples:
      >>> import jax.numpy as jnp, jgd
      >>> opt = jgd.sgd(0.1)
      >>> params = jnp.array([1.0, -2.0])
      >>> updates, state = opt.update(2 * params, opt.init(params))
      >>> jgd.apply_updates(params, updates)
      Array([ 0.8, -1.6], dtype=float32)

    Reference: Robbins & Monro, "A stochastic approximation method", 1951.
    """
    if momentum is not None:
        return _heavy_ball(learning_rate, momentum, nesterov, mu_dtype=accumulator_dtype)
    if nesterov:
        raise ValueError("sgd: nesterov=True needs momentum= (as optax.sgd, which would ignore it)")
    check_learning_rate(learning_rate)
    return transformation(_sgd_init, _sgd_update, learning_rate=learning_rate)


def _sgd_init(hp, params):
    del hp, params
    return CountState(count=zero_count())


def _sgd_update(hp, updates, state, params=None, **extra):
    del params, extra
    lr = learning_rate_at(hp.learning_rate, state.count)
    updates = jax.tree.map(lambda g: (-lr).astype(g.dtype) * g, updates)
    return updates, CountState(count=increment(state.count))


class MomentumState(NamedTuple):
    count: jax.Array  # type: ignore[assignment]
    trace: optax.Params


def momentum(
    learning_rate, beta=0.9, nesterov: bool = False, *, state_dtype=None, mu_dtype=None
) -> optax.GradientTransformationExtraArgs:
    r"""Heavy-ball momentum, optionally Nesterov's accelerated form.

    $$
    m_t = g_t + \beta m_{t-1}, \qquad
    u_t = -\eta_t m_t \quad\text{or, with Nesterov,}\quad
    u_t = -\eta_t (g_t + \beta m_t).
    $$

    Equals ``optax.sgd(learning_rate, momentum=beta, nesterov=nesterov)`` and
    ``torch.optim.SGD(lr, momentum=beta, nesterov=nesterov)``.

    Args:
      learning_rate: a number ``>= 0`` or a schedule.
      beta: momentum coefficient in ``[0, 1)``.
      nesterov: use Nesterov's look-ahead form.
      state_dtype: the trace's dtype (default: the params'); up (float32 for bf16
        params) or down (bf16 for float32 params: half the memory).
      mu_dtype: the same, under optax's name for a first moment (``accumulator_dtype``
        in ``optax.sgd``); wins over ``state_dtype``.

    Returns:
      The rule (an `optax.GradientTransformationExtraArgs` whose numbers are pytree leaves).

    Examples:
      >>> opt = jgd.momentum(1e-2, beta=0.9)
      >>> state = opt.init({"w": jnp.zeros(3)})

    References: Polyak, "Some methods of speeding up the convergence of iteration
    methods", 1964; Nesterov, "A method for solving the convex programming problem
    with convergence rate O(1/k²)", 1983; Sutskever et al., ICML 2013.
    """
    check_learning_rate(learning_rate)
    check_decay("beta", beta)
    if not isinstance(nesterov, bool):
        raise TypeError(f"nesterov must be a bool, got {nesterov!r}")
    return transformation(
        _momentum_init,
        _momentum_update,
        learning_rate=learning_rate,
        beta=beta,
        nesterov=nesterov,
        state_dtype=check_state_dtype(mu_dtype, "mu_dtype") or check_state_dtype(state_dtype),
    )


_heavy_ball = momentum  # sgd's ``momentum`` argument shadows the function's name there


def nesterov(learning_rate, beta=0.9, *, state_dtype=None, mu_dtype=None):
    r"""Nesterov momentum: ``momentum(learning_rate, beta, nesterov=True)``.

    $$
    m_t = g_t + \beta m_{t-1}, \qquad u_t = -\eta_t (g_t + \beta m_t).
    $$

    Args:
      learning_rate: a number ``>= 0`` or a schedule ``count -> scalar`` (from [`jgd.schedules`][jgd.schedules]).
      beta: the momentum coefficient in ``[0, 1)``.
      state_dtype: the trace's dtype (default: the params').
      mu_dtype: the first moment's dtype alone (optax's name); wins over ``state_dtype``.

    Returns:
      The rule (an `optax.GradientTransformationExtraArgs` whose numbers are pytree leaves).

    Examples:
      >>> opt = jgd.nesterov(0.1, beta=0.5)
      >>> updates, state = opt.update(jnp.ones(2), opt.init(jnp.zeros(2)))
      >>> updates  # -0.1·(1 + 0.5·1)
      Array([-0.15, -0.15], dtype=float32)

    Reference: Nesterov 1983; Sutskever et al., ICML 2013.
    """
    return momentum(learning_rate, beta, nesterov=True, state_dtype=state_dtype, mu_dtype=mu_dtype)


def _momentum_init(hp, params):
    return MomentumState(count=zero_count(), trace=moments_like(params, hp.state_dtype))


def _momentum_update(hp, updates, state, params=None, **extra):
    del params, extra
    lr = learning_rate_at(hp.learning_rate, state.count)
    nesterov_ = hp.nesterov

    def leaf(g, m):
        dtype = compute_dtype(g, m)
        beta = jnp.asarray(hp.beta, dtype)
        g_ = g.astype(dtype)
        new_m = g_ + (jnp.asarray(hp.beta, m.dtype) * m).astype(dtype)  # beta·m in m's dtype, as optax
        direction = g_ + beta * new_m if nesterov_ else new_m
        return ((-lr).astype(dtype) * direction).astype(g.dtype), new_m.astype(m.dtype)

    updates, trace = map_leaves(leaf, 2, updates, state.trace)
    return updates, MomentumState(count=increment(state.count), trace=trace)

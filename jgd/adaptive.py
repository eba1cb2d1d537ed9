"""Adaptive per-coordinate step sizes: ``adagrad``, ``rmsprop``, ``adam``, ``adamw``.

Each leaf's new moments and its update are computed in one expression, so XLA emits a
single fused pass per leaf; bias corrections are folded into scalars.

Complements such as ``1 - b2`` are computed inside ``update`` from the one leaf each
decay rate is: from a Python float (an eager call, or an optimizer closed over by a jitted
function) they keep double precision, as optax's closed-over constants do; from a traced
float32 leaf (an optimizer passed into ``jit``) they are float32's ``1 - float32(0.999)``,
as with optax's ``inject_hyperparams``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jgd._transform import (
    as_scalar,
    check_decay,
    check_learning_rate,
    check_scalar,
    check_state_dtype,
    increment,
    learning_rate_at,
    map_leaves,
    moments_like,
    refuse_complex,
    sqrt,
    transformation,
    zero_count,
)

__all__ = [
    "adagrad",
    "rmsprop",
    "adam",
    "adamw",
    "AdagradState",
    "RMSPropState",
    "AdamState",
]


class AdagradState(NamedTuple):
    count: jax.Array  # type: ignore[assignment]
    sum_of_squares: optax.Params


def adagrad(
    learning_rate, initial_accumulator_value=0.1, eps=1e-7, *, state_dtype=None
) -> optax.GradientTransformationExtraArgs:
    r"""Adagrad: step sizes shrink with the sum of squared gradients.

    .. math:: s_t = s_{t-1} + g_t^2, \qquad u_t = -\eta_t\, g_t / \sqrt{s_t + \epsilon}

    with :math:`s_0` = ``initial_accumulator_value``. Equals ``optax.adagrad``.

    Example::

      >>> opt = jgd.adagrad(0.1)

    Reference: Duchi, Hazan & Singer, "Adaptive subgradient methods for online
    learning and stochastic optimization", JMLR 2011.
    """
    check_learning_rate(learning_rate)
    check_scalar("initial_accumulator_value", initial_accumulator_value, lower=0.0)
    check_scalar("eps", eps, lower=0.0)
    return transformation(
        _adagrad_init,
        _adagrad_update,
        learning_rate=learning_rate,
        initial_accumulator_value=initial_accumulator_value,
        eps=eps,
        state_dtype=check_state_dtype(state_dtype),
    )


def _adagrad_init(hp, params):
    refuse_complex("adagrad", params)
    return AdagradState(
        count=zero_count(),
        sum_of_squares=jax.tree.map(
            lambda s: s + jnp.asarray(hp.initial_accumulator_value, s.dtype),
            moments_like(params, hp.state_dtype),
        ),
    )


def _adagrad_update(hp, updates, state, params=None, **extra):
    del params, extra
    lr = learning_rate_at(hp.learning_rate, state.count)

    def leaf(g, s):
        g_ = g.astype(s.dtype)
        s = s + g_ * g_
        eps = jnp.asarray(hp.eps, s.dtype)
        scale = jnp.where(s > 0, jax.lax.rsqrt(s + eps), jnp.zeros((), s.dtype))
        return ((-lr).astype(s.dtype) * g_ * scale).astype(g.dtype), s

    updates, sum_of_squares = map_leaves(leaf, 2, updates, state.sum_of_squares)
    return updates, AdagradState(count=increment(state.count), sum_of_squares=sum_of_squares)


class RMSPropState(NamedTuple):
    count: jax.Array  # type: ignore[assignment]
    nu: optax.Params
    mu: optax.Params  # None unless centered


def rmsprop(
    learning_rate, decay=0.9, eps=1e-8, centered: bool = False, *, state_dtype=None
) -> optax.GradientTransformationExtraArgs:
    r"""RMSProp: divide by a running root-mean-square of the gradients.

    .. math::
       v_t = \rho v_{t-1} + (1-\rho) g_t^2, \qquad
       u_t = -\eta_t\, g_t / \sqrt{v_t + \epsilon}.

    ``centered=True`` also tracks :math:`m_t = \rho m_{t-1} + (1-\rho) g_t` and divides by
    :math:`\sqrt{v_t - m_t^2 + \epsilon}` (Graves 2013). Equals ``optax.rmsprop``.

    Example::

      >>> opt = jgd.rmsprop(1e-3, decay=0.9, centered=True)

    Reference: Tieleman & Hinton, Lecture 6.5, COURSERA: Neural Networks for ML, 2012.
    """
    check_learning_rate(learning_rate)
    check_decay("decay", decay)
    check_scalar("eps", eps, lower=0.0)
    if not isinstance(centered, bool):
        raise TypeError(f"centered must be a bool, got {centered!r}")
    return transformation(
        _rmsprop_init,
        _rmsprop_update,
        learning_rate=learning_rate,
        decay=decay,
        eps=eps,
        centered=centered,
        state_dtype=check_state_dtype(state_dtype),
    )


def _rmsprop_init(hp, params):
    refuse_complex("rmsprop", params)
    nu = moments_like(params, hp.state_dtype)
    mu = moments_like(params, hp.state_dtype) if hp.centered else None
    return RMSPropState(count=zero_count(), nu=nu, mu=mu)


def _rmsprop_update(hp, updates, state, params=None, **extra):
    del params, extra
    lr = learning_rate_at(hp.learning_rate, state.count)

    def step(g, v, m=None):
        decay = jnp.asarray(hp.decay, v.dtype)
        one_minus_decay = jnp.asarray(1 - hp.decay, v.dtype)
        eps = jnp.asarray(hp.eps, v.dtype)
        g_ = g.astype(v.dtype)
        v = one_minus_decay * (g_ * g_) + decay * v
        if m is None:
            denominator = v + eps
        else:
            m = one_minus_decay * g_ + decay * m
            denominator = v - m * m + eps
        u = ((-lr).astype(v.dtype) * g_ * jax.lax.rsqrt(denominator)).astype(g.dtype)
        return (u, v) if m is None else (u, v, m)

    if hp.centered:
        updates, nu, mu = map_leaves(step, 3, updates, state.nu, state.mu)
    else:
        (updates, nu), mu = map_leaves(step, 2, updates, state.nu), None
    return updates, RMSPropState(count=increment(state.count), nu=nu, mu=mu)


class AdamState(NamedTuple):
    count: jax.Array  # type: ignore[assignment]
    mu: optax.Params
    nu: optax.Params


def adam(
    learning_rate, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, *, state_dtype=None
) -> optax.GradientTransformationExtraArgs:
    r"""Adam: bias-corrected first and second moment estimates.

    .. math::
       m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
       v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \quad
       u_t = -\eta_t \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t / (1-\beta_2^t) + \epsilon_{root}} + \epsilon}.

    Equals ``optax.adam`` (``eps_root`` included) and ``torch.optim.Adam`` (up to float
    rounding). A small ``eps_root`` keeps the square root's derivative finite, which
    meta-learning through the update needs; with the default ``0`` a coordinate whose
    gradients are all exactly zero still gets a zero (not NaN) hypergradient.

    Example::

      >>> opt = jgd.adam(3e-4)
      >>> state = opt.init({"w": jnp.zeros((2, 3))})

    Reference: Kingma & Ba, "Adam: A method for stochastic optimization", ICLR 2015.
    """
    return _adam_family(learning_rate, b1, b2, eps, eps_root, None, state_dtype)


def adamw(
    learning_rate, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, weight_decay=1e-4, *, state_dtype=None
) -> optax.GradientTransformationExtraArgs:
    r"""AdamW: Adam with decoupled weight decay.

    .. math:: u_t = -\eta_t \left(\frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}
              + \lambda\, x_t\right)

    with :math:`\hat m_t, \hat v_t` and ``eps_root`` as in :func:`adam` (the same
    argument order as ``optax.adamw``). Needs ``params`` in ``update``.
    Equals ``optax.adamw`` (whose default :math:`\lambda` is also ``1e-4``).

    Example::

      >>> opt = jgd.adamw(1e-3, weight_decay=1e-2)

    Reference: Loshchilov & Hutter, "Decoupled weight decay regularization", ICLR 2019.
    """
    check_scalar("weight_decay", weight_decay, lower=0.0)
    return _adam_family(learning_rate, b1, b2, eps, eps_root, weight_decay, state_dtype)


def _adam_family(learning_rate, b1, b2, eps, eps_root, weight_decay, state_dtype):
    check_learning_rate(learning_rate)
    check_decay("b1", b1)
    check_decay("b2", b2)
    check_scalar("eps", eps, lower=0.0)
    check_scalar("eps_root", eps_root, lower=0.0)
    return transformation(
        _adam_init,
        _adam_update,
        learning_rate=learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        eps_root=eps_root,
        weight_decay=weight_decay,
        state_dtype=check_state_dtype(state_dtype),
    )


def _adam_init(hp, params):
    refuse_complex("adam/adamw", params)
    return AdamState(
        count=zero_count(),
        mu=moments_like(params, hp.state_dtype),
        nu=moments_like(params, hp.state_dtype),
    )


def _adam_update(hp, updates, state, params=None, **extra):
    del extra
    weight_decay = hp.weight_decay
    if weight_decay is not None and params is None:
        raise ValueError("adamw needs params: call update(grads, state, params)")
    lr = learning_rate_at(hp.learning_rate, state.count)
    count = increment(state.count)
    b1, b2 = as_scalar(hp.b1), as_scalar(hp.b2)
    # Bias corrections folded into two scalars: u = -a·m / (sqrt(v·c + eps_root) + eps).
    t = count.astype(lr.dtype)
    step_scale = -lr / (1 - b1**t)
    root_scale = 1 / (1 - b2**t)

    def leaf(g, m, v, p=None):
        dtype = m.dtype
        b1_, b2_ = b1.astype(dtype), b2.astype(dtype)
        g_ = g.astype(dtype)
        m = b1_ * m + jnp.asarray(1 - hp.b1, dtype) * g_
        v = b2_ * v + jnp.asarray(1 - hp.b2, dtype) * (g_ * g_)
        u = step_scale.astype(dtype) * m / (
            sqrt(v * root_scale.astype(dtype) + jnp.asarray(hp.eps_root, dtype)) + jnp.asarray(hp.eps, dtype)
        )
        if p is not None:
            u = u - (lr * as_scalar(weight_decay)).astype(dtype) * p.astype(dtype)
        return u.astype(g.dtype), m, v

    trees = (updates, state.mu, state.nu) + (() if weight_decay is None else (params,))
    updates, mu, nu = map_leaves(leaf, 3, *trees)
    return updates, AdamState(count=count, mu=mu, nu=nu)

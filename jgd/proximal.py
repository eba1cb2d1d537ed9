"""Proximal gradient descent (ISTA) and its accelerated form (FISTA)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jgd._transform import (
    check_learning_rate,
    check_same_structure,
    increment,
    learning_rate_at,
    transformation,
    zero_count,
)

__all__ = ["proximal_gradient", "ProximalGradientState"]


class ProximalGradientState(NamedTuple):
    count: jax.Array  # type: ignore[assignment]
    iterate: Any  # x_k, the point to report (for ISTA it equals the params)
    momentum: jax.Array  # Beck–Teboulle's t_k


def _identity(x, step):
    del step
    return x


def proximal_gradient(learning_rate, prox=None, accelerated: bool = False) -> optax.GradientTransformationExtraArgs:
    r"""Proximal gradient descent for :math:`\min_x f(x) + h(x)`, f smooth, h with a prox.

    ISTA (``accelerated=False``): :math:`x_{k+1} = \operatorname{prox}_{\eta h}(x_k - \eta\nabla f(x_k))`.

    FISTA (``accelerated=True``), with :math:`t_1 = 1`, :math:`y_1 = x_0`:

    .. math::
       x_k = \operatorname{prox}_{\eta h}(y_k - \eta \nabla f(y_k)),\quad
       t_{k+1} = \tfrac{1 + \sqrt{1 + 4 t_k^2}}{2},\quad
       y_{k+1} = x_k + \tfrac{t_k - 1}{t_{k+1}} (x_k - x_{k-1}).

    With :math:`\eta \le 1/L` FISTA reaches :math:`F(x_k) - F^\star \le 2L\|x_0-x^\star\|^2/(k+1)^2`.
    The params follow the points where gradients are taken (:math:`y_k`; :math:`x_k` for
    ISTA); ``state.iterate`` holds the latest :math:`x_k`, the point to report. Needs
    ``params`` in ``update``. ``prox(x, step)`` is any function from :mod:`jgd.prox` or
    your own; ``None`` is the identity (plain gradient descent / Nesterov's method).

    Example::

      >>> A = jnp.array([[2.0, 0.0], [0.0, 1.0]])
      >>> smooth = lambda x: 0.5 * jnp.sum((A @ x - jnp.array([2.0, 0.05])) ** 2)
      >>> L = 4.0  # the largest eigenvalue of AᵀA
      >>> opt = jgd.proximal_gradient(1 / L, prox=jgd.prox.l1(0.1), accelerated=True)
      >>> r = jgd.minimize(smooth, jnp.zeros(2), opt, steps=200)
      >>> [round(v, 4) for v in r.state.opt_state.iterate.tolist()]  # the small coefficient is exactly 0
      [0.975, 0.0]

    References: Beck & Teboulle, "A fast iterative shrinkage-thresholding algorithm for
    linear inverse problems", SIAM J. Imaging Sci. 2009; Nesterov, "A method for solving
    the convex programming problem with convergence rate O(1/k²)", 1983.
    """
    check_learning_rate(learning_rate)
    if prox is not None and not callable(prox):
        raise TypeError(f"prox must be a function prox(x, step) -> x, got {prox!r}")
    if not isinstance(accelerated, bool):
        raise TypeError(f"accelerated must be a bool, got {accelerated!r}")
    return transformation(
        _proximal_init,
        _proximal_update,
        learning_rate=learning_rate,
        prox=jax.tree_util.Partial(_identity) if prox is None else prox,
        accelerated=accelerated,
    )


def _proximal_init(hp, params):
    del hp
    # A copy, so that donating both params and state in a jitted step never donates
    # one buffer twice.
    iterate = jax.tree.map(jnp.copy, params)
    return ProximalGradientState(count=zero_count(), iterate=iterate, momentum=jnp.ones([], jnp.float32))


def _proximal_update(hp, updates, state, params=None, **extra):
    del extra
    if params is None:
        raise ValueError("proximal_gradient needs params: call update(grads, state, params)")
    check_same_structure("updates", updates, "the optimizer state's iterate", state.iterate)
    lr = learning_rate_at(hp.learning_rate, state.count)
    x = hp.prox(jax.tree.map(lambda y, g: y - lr.astype(y.dtype) * g.astype(y.dtype), params, updates), lr)
    if hp.accelerated:
        t = state.momentum
        t_next = (1 + jnp.sqrt(1 + 4 * t * t)) / 2
        beta = (t - 1) / t_next
        y_next = jax.tree.map(lambda a, b: a + beta.astype(a.dtype) * (a - b), x, state.iterate)
    else:
        t_next, y_next = state.momentum, x
    updates = jax.tree.map(lambda n, p, g: (n - p).astype(g.dtype), y_next, params, updates)
    return updates, ProximalGradientState(count=increment(state.count), iterate=x, momentum=t_next)

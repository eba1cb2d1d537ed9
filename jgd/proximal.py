"""Proximal gradient descent (ISTA) and its accelerated form (FISTA), with a fixed step or
Beck–Teboulle backtracking."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jgd._transform import (
    check_learning_rate,
    check_same_structure,
    global_norm,
    increment,
    learning_rate_at,
    scalar_dtype,
    transformation,
    zero_count,
)
from jgd.prox import objective

__all__ = ["proximal_gradient", "ProximalGradientState"]

# Backtracking: the first step is searched from 1 upwards (doubling) and downwards
# (halving); later steps only shrink from the last accepted one (Beck–Teboulle).
_SHRINK = 0.5
_MAX_HALVINGS = 60
_MAX_DOUBLINGS = 60


class ProximalGradientState(NamedTuple):
    count: jax.Array  # type: ignore[assignment]
    iterate: Any  # x_k, the point to report (for ISTA it equals the params)
    momentum: jax.Array  # Beck–Teboulle's t_k
    step: jax.Array  # the step size η_k last used
    residual: jax.Array  # ‖y − prox(y − η∇f(y), η)‖ / η at the last y
    # g at the params the next step sees, when the prox knows its g (jgd.prox's do), else None
    objective_term: Any = None


def _identity(x, step):
    del step
    return x


def proximal_gradient(learning_rate=None, prox=None, accelerated: bool = False) -> optax.GradientTransformationExtraArgs:
    r"""Proximal gradient descent for $\min_x f(x) + h(x)$, f smooth, h with a prox.

    ISTA (``accelerated=False``): $x_{k+1} = \operatorname{prox}_{\eta h}(x_k - \eta\nabla f(x_k))$.

    FISTA (``accelerated=True``), with $t_1 = 1$, $y_1 = x_0$:

    $$
    x_k = \operatorname{prox}_{\eta h}(y_k - \eta \nabla f(y_k)),\quad
    t_{k+1} = \tfrac{1 + \sqrt{1 + 4 t_k^2}}{2},\quad
    y_{k+1} = x_k + \tfrac{t_k - 1}{t_{k+1}} (x_k - x_{k-1}).
    $$

    With $\eta \le 1/L$ FISTA reaches $F(x_k) - F^\star \le 2L\|x_0-x^\star\|^2/(k+1)^2$.
    ``learning_rate=None`` finds the step by backtracking (Beck & Teboulle 2009, §4): the
    step $\eta_k$ is halved until
    $f(x) \le f(y) + \langle\nabla f(y), x - y\rangle + \|x - y\|^2 / (2\eta_k)$
    at $x = \operatorname{prox}_{\eta_k h}(y - \eta_k\nabla f(y))$; steps never grow
    again after the first (which is also searched upwards from 1), so the rate above holds
    with $L$ replaced by $2L$. It needs ``update(..., value=f(y),
    value_fn=f)`` (optax's convention; [`jgd.minimize`][jgd.minimize.minimize] passes both) and is not
    reverse-differentiable (a while loop).

    The params follow the points where gradients are taken ($y_k$; $x_k$ for
    ISTA); ``state.iterate`` holds the latest $x_k$, the point to report, and
    ``state.residual`` the prox-gradient residual
    $\|y - \operatorname{prox}_{\eta h}(y - \eta\nabla f(y))\|/\eta$, which is 0
    exactly at a minimizer (``jgd.minimize``'s ``tol`` tests it). Needs ``params`` in
    ``update``. ``prox(x, step)`` is any function from [`jgd.prox`][jgd.prox] or your own;
    ``None`` is the identity (plain gradient descent / Nesterov's method).

    Args:
      learning_rate: the step $\eta$ (``<= 1/L`` for f with an L-Lipschitz gradient), a schedule,
        or ``None`` to find it by backtracking (needs ``value_fn`` in ``update``).
      prox: the proximal operator ``prox(x, step) -> x'`` of $h$ (``jgd.prox.l1(λ)``, ``box``, ...);
        ``None`` is plain gradient descent.
      accelerated: FISTA (``True``) or ISTA (``False``).

    Returns:
      The rule (an `optax.GradientTransformationExtraArgs` whose numbers are pytree leaves).

    Examples:
      >>> A = jnp.array([[2.0, 0.0], [0.0, 1.0]])
      >>> smooth = lambda x: 0.5 * jnp.sum((A @ x - jnp.array([2.0, 0.05])) ** 2)
      >>> L = 4.0  # the largest eigenvalue of AᵀA
      >>> opt = jgd.proximal_gradient(1 / L, prox=jgd.prox.l1(0.1), accelerated=True)
      >>> r = jgd.minimize(smooth, jnp.zeros(2), opt, steps=200)
      >>> [round(v, 4) for v in r.state.opt_state.iterate.tolist()]  # the small coefficient is exactly 0
      [0.975, 0.0]
      >>> r = jgd.minimize(smooth, jnp.zeros(2), jgd.proximal_gradient(prox=jgd.prox.l1(0.1), accelerated=True),
      ...                  steps=200, tol=1e-5)  # no step size; stops on the prox-gradient residual
      >>> [round(v, 4) for v in r.state.opt_state.iterate.tolist()], bool(r.converged)
      ([0.975, 0.0], True)

    References: Beck & Teboulle, "A fast iterative shrinkage-thresholding algorithm for
    linear inverse problems", SIAM J. Imaging Sci. 2009; Nesterov, "A method for solving
    the convex programming problem with convergence rate O(1/k²)", 1983.
    """
    if learning_rate is not None:
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
    # A copy, so that donating both params and state in a jitted step never donates
    # one buffer twice.
    iterate = jax.tree.map(jnp.copy, params)
    dtype = scalar_dtype()
    return ProximalGradientState(count=zero_count(), iterate=iterate, momentum=jnp.ones([], jnp.float32),
                                 step=jnp.ones([], dtype), residual=jnp.full([], jnp.inf, dtype),
                                 objective_term=objective(hp.prox, params))


def _prox_step(hp, y, g, eta):
    """``prox(y − η·g, η)``: the proximal gradient step from ``y`` with step ``η``."""
    return hp.prox(jax.tree.map(lambda a, b: a - eta.astype(a.dtype) * b.astype(a.dtype), y, g), eta)


def _backtrack(hp, y, g, value, value_fn, state):
    """Beck–Teboulle's step: the largest η = η₀·2^k (k ≤ 0 after the first update) whose
    prox step satisfies the quadratic upper bound of f at y."""
    dtype = scalar_dtype()  # float64 under x64: the test is as precise as the params
    value = jnp.asarray(value, dtype)
    slack = 4 * jnp.finfo(dtype).eps * (1 + jnp.abs(value))  # float rounding, not a larger step

    g_ = jax.tree.map(lambda b: b.astype(dtype), g)

    def bound_holds(eta):
        x = _prox_step(hp, y, g, eta)
        d = jax.tree.map(lambda a, b: (a - b).astype(dtype), x, y)
        linear = optax.tree.vdot(g_, d)
        quadratic = global_norm(d).astype(dtype) ** 2 / (2 * eta)
        return jnp.asarray(value_fn(x), dtype) <= value + linear + quadratic + slack

    first = state.count == 0
    grow = jax.lax.while_loop(lambda c: first & (c[1] < _MAX_DOUBLINGS) & bound_holds(2 * c[0]),
                              lambda c: (2 * c[0], c[1] + 1), (state.step, jnp.zeros([], jnp.int32)))[0]
    eta = jax.lax.while_loop(lambda c: (c[1] < _MAX_HALVINGS) & ~bound_holds(c[0]),
                             lambda c: (_SHRINK * c[0], c[1] + 1), (grow, jnp.zeros([], jnp.int32)))[0]
    return eta


def _proximal_update(hp, updates, state, params=None, *, value=None, value_fn=None, **extra):
    del extra
    if params is None:
        raise ValueError("proximal_gradient needs params: call update(grads, state, params)")
    check_same_structure("updates", updates, "the optimizer state's iterate", state.iterate)
    if hp.learning_rate is None:
        if value is None or value_fn is None:
            raise ValueError(
                "proximal_gradient(learning_rate=None) backtracks on the smooth part: call "
                "update(grads, state, params, value=f(params), value_fn=f) (jgd.minimize passes both)"
            )
        lr = _backtrack(hp, params, updates, value, value_fn, state)
    else:
        lr = learning_rate_at(hp.learning_rate, state.count)
    x = _prox_step(hp, params, updates, lr)
    dtype = scalar_dtype()
    residual = global_norm(jax.tree.map(lambda a, b: a - b, x, params)).astype(dtype) / lr.astype(dtype)
    if hp.accelerated:
        t = state.momentum
        t_next = (1 + jnp.sqrt(1 + 4 * t * t)) / 2
        beta = (t - 1) / t_next
        y_next = jax.tree.map(lambda a, b: a + beta.astype(a.dtype) * (a - b), x, state.iterate)
    else:
        t_next, y_next = state.momentum, x
    updates = jax.tree.map(lambda n, p, g: (n - p).astype(g.dtype), y_next, params, updates)
    return updates, ProximalGradientState(count=increment(state.count), iterate=x, momentum=t_next,
                                          step=lr.astype(dtype), residual=residual,
                                          objective_term=objective(hp.prox, y_next))

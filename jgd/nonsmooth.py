"""The subgradient method and its classic step-size rules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jgd._transform import (
    CountState,
    as_scalar,
    check_learning_rate,
    check_scalar,
    global_norm,
    increment,
    learning_rate_at,
    transformation,
    zero_count,
)

__all__ = ["subgradient", "SUBGRADIENT_RULES"]

SUBGRADIENT_RULES = ("constant", "length", "sqrt", "harmonic", "polyak")


def subgradient(
    learning_rate, rule: str = "sqrt", f_star=None, max_learning_rate=None
) -> optax.GradientTransformationExtraArgs:
    r"""The subgradient method $u_t = -\alpha_t g_t$ for non-smooth convex objectives,
    with $g_t \in \partial f(x_t)$ and the step $\alpha_t$ chosen by ``rule``
    ($t = 1, 2, \dots$, $\eta$ = ``learning_rate``):

    | ``rule`` | step $\alpha_t$ |
    |---|---|
    | ``constant`` | $\alpha_t = \eta$ |
    | ``length`` | $\alpha_t = \eta / \Vert g_t\Vert$ (constant step length) |
    | ``sqrt`` | $\alpha_t = \eta / \sqrt{t}$ |
    | ``harmonic`` | $\alpha_t = \eta / t$ |
    | ``polyak`` | $\alpha_t = \eta\,(f(x_t) - f^\star) / \Vert g_t\Vert^2$ (Polyak's step for $\eta = 1$) |

    Polyak's step needs ``update(..., value=f(x_t))`` and ``f_star``.

    ``max_learning_rate`` caps Polyak's step, $\min(\alpha_t, \text{cap})$ (optax's
    ``polyak_sgd(max_learning_rate=)``): far from the optimum, or with a loose ``f_star``,
    the uncapped step can be huge. Norms are global over the pytree. Where $g_t = 0$
    the update is 0 (no 0/0).
    It is not a descent method: keep the best iterate (``jgd.minimize`` reports it).

    Args:
      learning_rate: $\eta$ (a number ``> 0``; for ``polyak``, the fraction of Polyak's step).
      rule: the step rule: ``"constant"``, ``"length"``, ``"sqrt"``, ``"harmonic"`` or ``"polyak"``.
      f_star: the optimal value $f^\star$ (or a lower bound), needed by ``rule="polyak"``.
      max_learning_rate: ``None`` or a cap on Polyak's step.

    Returns:
      The rule (an `optax.GradientTransformationExtraArgs` whose numbers are pytree leaves).

    Examples:
      >>> f = lambda x: jnp.sum(jnp.abs(x - 1.0))  # non-smooth, f* = 0
      >>> opt = jgd.subgradient(1.0, rule="polyak", f_star=0.0)
      >>> x = jnp.zeros(2)
      >>> state = opt.init(x)
      >>> updates, state = opt.update(jax.grad(f)(x), state, x, value=f(x))
      >>> jgd.apply_updates(x, updates).round(4)  # Polyak's step lands on the kink
      Array([1., 1.], dtype=float32)

    References: N. Z. Shor, "Minimization Methods for Non-Differentiable Functions",
    1985; B. T. Polyak, "Introduction to Optimization", 1987, §5.3; S. Boyd,
    "Subgradient Methods" (Stanford EE364b notes), 2003.
    """
    if rule not in SUBGRADIENT_RULES:
        raise ValueError(f"rule must be one of {SUBGRADIENT_RULES}, got {rule!r}")
    check_learning_rate(learning_rate)
    if rule == "polyak":
        if f_star is None:
            raise ValueError("rule='polyak' needs f_star, the optimal value (or a lower bound)")
        check_scalar("f_star", f_star)
        if max_learning_rate is not None:
            check_scalar("max_learning_rate", max_learning_rate, lower=0.0)
    elif f_star is not None or max_learning_rate is not None:
        raise ValueError(f"f_star and max_learning_rate are only used by rule='polyak', got rule={rule!r}")
    return transformation(
        _subgradient_init, _subgradient_update, learning_rate=learning_rate, rule=rule, f_star=f_star,
        max_learning_rate=max_learning_rate,
    )


def _subgradient_init(hp, params):
    del hp, params
    return CountState(count=zero_count())


def _subgradient_update(hp, updates, state, params=None, *, value=None, **extra):
    del params, extra
    rule = hp.rule
    lr = learning_rate_at(hp.learning_rate, state.count)
    count = increment(state.count)
    t = count.astype(lr.dtype)
    if rule == "constant":
        step = lr
    elif rule == "sqrt":
        step = lr / jnp.sqrt(t)
    elif rule == "harmonic":
        step = lr / t
    else:
        norm = global_norm(updates).astype(lr.dtype)
        safe = jnp.where(norm > 0, norm, jnp.ones_like(norm))
        if rule == "length":
            step = lr / safe
        else:
            if value is None:
                raise ValueError(
                    "rule='polyak' needs the objective value: call update(grads, state, params, value=loss)"
                )
            gap = as_scalar(value) - as_scalar(hp.f_star)
            step = lr * gap / (safe * safe)
            if hp.max_learning_rate is not None:
                step = jnp.minimum(step, as_scalar(hp.max_learning_rate))
        step = jnp.where(norm > 0, step, jnp.zeros_like(step))
    updates = jax.tree.map(lambda g: (-step).astype(g.dtype) * g, updates)
    return updates, CountState(count=count)

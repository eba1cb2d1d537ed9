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

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jgd._transform import (
    Static,
    as_scalar,
    check_decay,
    check_learning_rate,
    check_same_structure,
    check_scalar,
    check_state_dtype,
    compute_dtype,
    increment,
    learning_rate_at,
    map_leaves,
    moments_like,
    refuse_complex,
    sqrt,
    transformation,
    zero_count,
)
from jgd.lift import lift

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

    $$
    s_t = s_{t-1} + g_t^2, \qquad u_t = -\eta_t\, g_t / \sqrt{s_t + \epsilon}
    $$

    with $s_0$ = ``initial_accumulator_value``. Equals ``optax.adagrad``.

    Args:
      learning_rate: a number ``>= 0`` or a schedule ``count -> scalar`` (from [`jgd.schedules`][jgd.schedules]).
      initial_accumulator_value: $s_0$, the starting sum of squares (``>= 0``).
      eps: $\epsilon$ inside the square root (``>= 0``).
      state_dtype: the moments' dtype (default: the params'); up (float32 for bf16 params) or down (half the memory).

    Returns:
      The rule (an `optax.GradientTransformationExtraArgs` whose numbers are pytree leaves).

    Examples:
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
        dtype = compute_dtype(g, s)
        g_ = g.astype(dtype)
        total = s.astype(dtype) + g_ * g_
        eps = jnp.asarray(hp.eps, dtype)
        scale = jnp.where(total > 0, jax.lax.rsqrt(total + eps), jnp.zeros((), dtype))
        return ((-lr).astype(dtype) * g_ * scale).astype(g.dtype), total.astype(s.dtype)

    updates, sum_of_squares = map_leaves(leaf, 2, updates, state.sum_of_squares)
    return updates, AdagradState(count=increment(state.count), sum_of_squares=sum_of_squares)


class RMSPropState(NamedTuple):
    count: jax.Array  # type: ignore[assignment]
    nu: optax.Params
    mu: optax.Params  # None unless centered
    trace: optax.Params = None  # None unless momentum


def rmsprop(
    learning_rate, decay=0.9, eps=1e-8, initial_scale=0.0, eps_in_sqrt: bool = True, centered: bool = False,
    momentum=None, nesterov: bool = False, bias_correction: bool = False, *, state_dtype=None,
) -> optax.GradientTransformationExtraArgs:
    r"""RMSProp: divide by a running root-mean-square of the gradients.

    $$
    v_t = \rho v_{t-1} + (1-\rho) g_t^2, \qquad
    u_t = -\eta_t\, g_t / \sqrt{v_t + \epsilon}.
    $$

    ``centered=True`` also tracks $m_t = \rho m_{t-1} + (1-\rho) g_t$ and divides by
    $\sqrt{v_t - m_t^2 + \epsilon}$ (Graves 2013). ``momentum=\mu`` then
    accumulates the steps, $b_t = u_t + \mu b_{t-1}$, and applies $b_t$ (or
    $u_t + \mu b_t$ with ``nesterov``). Equals ``optax.rmsprop`` with the same
    arguments, in optax's order; ``initial_scale != 0``, ``eps_in_sqrt=False`` and
    ``bias_correction=True`` run optax's own rule through [`jgd.lift`][jgd.lift] (the same
    numbers, still one leaf per hyperparameter).

    Args:
      learning_rate: a number ``>= 0`` or a schedule ``count -> scalar`` (from [`jgd.schedules`][jgd.schedules]).
      decay: $\rho$, the running average's decay in ``[0, 1)``.
      eps: $\epsilon$ (``>= 0``), inside the square root (``eps_in_sqrt=True``) or added after it.
      initial_scale: the running average's starting value $v_0$.
      eps_in_sqrt: whether $\epsilon$ goes inside the square root (optax's default) or after it.
      centered: divide by the centered second moment $v_t - m_t^2$ (Graves 2013).
      momentum: ``None`` or the step accumulation's coefficient $\mu$ in ``[0, 1)``.
      nesterov: Nesterov's form of the momentum (needs ``momentum``).
      bias_correction: correct $v_t$ (and $m_t$) for their zero start, as Adam does.
      state_dtype: the moments' dtype (default: the params'); up (float32 for bf16 params) or down (half the memory).

    Returns:
      The rule (an `optax.GradientTransformationExtraArgs` whose numbers are pytree leaves).

    Examples:
      >>> opt = jgd.rmsprop(1e-3, decay=0.9, centered=True)

    Reference: Tieleman & Hinton, Lecture 6.5, COURSERA: Neural Networks for ML, 2012.
    """
    check_learning_rate(learning_rate)
    check_decay("decay", decay)
    check_scalar("eps", eps, lower=0.0)
    for name, flag in (("centered", centered), ("nesterov", nesterov)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {flag!r}")
    if momentum is not None:
        check_decay("momentum", momentum)
    elif nesterov:
        raise ValueError("nesterov=True needs momentum= (the coefficient of the accumulated steps)")
    if not (_is_zero(initial_scale) and eps_in_sqrt is True and bias_correction is False):
        if state_dtype is not None:
            raise ValueError("rmsprop: state_dtype is not supported with initial_scale, eps_in_sqrt=False or "
                             "bias_correction (optax's rule has no such argument)")
        return _optax_rmsprop(learning_rate, decay, eps, initial_scale, eps_in_sqrt, centered, momentum, nesterov,
                              bias_correction)
    return transformation(
        _rmsprop_init,
        _rmsprop_update,
        learning_rate=learning_rate,
        decay=decay,
        eps=eps,
        centered=centered,
        momentum=momentum,
        nesterov=nesterov,
        state_dtype=check_state_dtype(state_dtype),
    )


_optax_rmsprop = lift(optax.rmsprop, elementwise=True, name="jgd.rmsprop")
_optax_adam = lift(optax.adam, elementwise=True, name="jgd.adam")
_optax_adamw = lift(optax.adamw, elementwise=True, name="jgd.adamw")


def _is_zero(value) -> bool:
    return isinstance(value, (int, float)) and value == 0


def _rmsprop_init(hp, params):
    refuse_complex("rmsprop", params)
    nu = moments_like(params, hp.state_dtype)
    mu = moments_like(params, hp.state_dtype) if hp.centered else None
    trace = None if hp.momentum is None else moments_like(params, hp.state_dtype)
    return RMSPropState(count=zero_count(), nu=nu, mu=mu, trace=trace)


def _rmsprop_update(hp, updates, state, params=None, **extra):
    del params, extra
    lr = learning_rate_at(hp.learning_rate, state.count)

    centered, momentum = hp.centered, hp.momentum

    def step(g, v, *rest):
        rest = list(rest)
        m = rest.pop(0) if centered else None
        b = rest.pop(0) if momentum is not None else None
        dtype = compute_dtype(g, v, *rest)
        decay = jnp.asarray(hp.decay, dtype)
        one_minus_decay = jnp.asarray(1 - hp.decay, dtype)
        eps = jnp.asarray(hp.eps, dtype)
        g_ = g.astype(dtype)
        new_v = one_minus_decay * (g_ * g_) + decay * v.astype(dtype)
        out = [new_v.astype(v.dtype)]
        if m is None:
            denominator = new_v + eps
        else:
            new_m = one_minus_decay * g_ + decay * m.astype(dtype)
            denominator = new_v - new_m * new_m + eps
            out.append(new_m.astype(m.dtype))
        u = (-lr).astype(dtype) * g_ * jax.lax.rsqrt(denominator)
        if b is not None:  # optax's trace of the scaled steps
            mu_ = jnp.asarray(momentum, dtype)
            new_b = u + mu_ * b.astype(dtype)
            u = u + mu_ * new_b if hp.nesterov else new_b
            out.append(new_b.astype(b.dtype))
        return (u.astype(g.dtype), *out)

    trees = (updates, state.nu) + ((state.mu,) if centered else ()) + ((state.trace,) if momentum is not None else ())
    out = list(map_leaves(step, len(trees), *trees))
    updates, nu = out.pop(0), out.pop(0)
    mu = out.pop(0) if centered else None
    trace = out.pop(0) if momentum is not None else None
    return updates, RMSPropState(count=increment(state.count), nu=nu, mu=mu, trace=trace)


class AdamState(NamedTuple):
    count: jax.Array  # type: ignore[assignment]
    mu: optax.Params
    nu: optax.Params


def adam(
    learning_rate, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, mu_dtype=None, *, nesterov: bool = False,
    state_dtype=None,
) -> optax.GradientTransformationExtraArgs:
    r"""Adam: bias-corrected first and second moment estimates.

    $$
    m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
    v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \quad
    u_t = -\eta_t \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t / (1-\beta_2^t) + \epsilon_{root}} + \epsilon}.
    $$

    Equals ``optax.adam`` (``eps_root`` and ``mu_dtype`` included, in optax's argument
    order) and ``torch.optim.Adam`` (up to float rounding). ``state_dtype`` sets both
    moments' dtype (up, or down to halve the state), ``mu_dtype`` the first moment's alone
    (it wins over ``state_dtype``); updates are computed in the wider of the gradient's
    and the state's dtypes and keep the params' dtypes. A small ``eps_root`` keeps the square root's derivative finite, which
    meta-learning through the update needs; with the default ``0`` a coordinate whose
    gradients are all exactly zero still gets a zero (not NaN) hypergradient.

    Args:
      learning_rate: a number ``>= 0`` or a schedule ``count -> scalar`` (from [`jgd.schedules`][jgd.schedules]).
      b1: $\beta_1$, the first moment's decay in ``[0, 1)``.
      b2: $\beta_2$, the second moment's decay in ``[0, 1)``.
      eps: $\epsilon$ added to the denominator (``>= 0``).
      eps_root: $\epsilon_{root}$ added inside the square root (``>= 0``; for meta-learning).
      mu_dtype: the first moment's dtype alone (optax's name); wins over ``state_dtype``.
      nesterov: NAdam's look-ahead first moment (optax's ``adam(nesterov=True)``).
      state_dtype: the moments' dtype (default: the params'); up (float32 for bf16 params) or down (half the memory).

    Returns:
      The rule (an `optax.GradientTransformationExtraArgs` whose numbers are pytree leaves).

    Examples:
      >>> opt = jgd.adam(3e-4)
      >>> state = opt.init({"w": jnp.zeros((2, 3))})

    ``nesterov=True`` (NAdam's look-ahead first moment) runs ``optax.adam``'s rule through
    [`jgd.lift`][jgd.lift].

    Reference: Kingma & Ba, "Adam: A method for stochastic optimization", ICLR 2015.
    """
    if nesterov:
        _no_state_dtype("adam", state_dtype)
        return _optax_adam(learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov=True)
    return _adam_family(learning_rate, b1, b2, eps, eps_root, None, None, state_dtype, mu_dtype)


def adamw(
    learning_rate, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, mu_dtype=None, weight_decay=1e-4, mask=None, *,
    nesterov: bool = False, state_dtype=None,
) -> optax.GradientTransformationExtraArgs:
    r"""AdamW: Adam with decoupled weight decay.

    $$
    u_t = -\eta_t \left(\frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}
    + \lambda\, x_t\right)
    $$

    with $\hat m_t, \hat v_t$ and ``eps_root`` as in [`jgd.adam`][jgd.adam] (the same
    argument order as ``optax.adamw``). Needs ``params`` in ``update``.
    ``mask`` (a pytree of bools like the params, or a function params → such a pytree)
    decays only the leaves where it is True — e.g. not biases and norms. Equals
    ``optax.adamw`` (whose default $\lambda$ is also ``1e-4``), ``mask`` included;
    wrapping adamw in ``optax.masked`` would mask the whole update instead.

    Args:
      learning_rate: a number ``>= 0`` or a schedule ``count -> scalar`` (from [`jgd.schedules`][jgd.schedules]).
      b1: $\beta_1$, the first moment's decay in ``[0, 1)``.
      b2: $\beta_2$, the second moment's decay in ``[0, 1)``.
      eps: $\epsilon$ added to the denominator (``>= 0``).
      eps_root: $\epsilon_{root}$ added inside the square root (``>= 0``).
      mu_dtype: the first moment's dtype alone (optax's name); wins over ``state_dtype``.
      weight_decay: $\lambda$, the decoupled decay's strength (``>= 0``).
      mask: ``None`` (decay every leaf), a pytree of bools like the params, or a function params → such a pytree.
      nesterov: NAdam's look-ahead first moment.
      state_dtype: the moments' dtype (default: the params'); up (float32 for bf16 params) or down (half the memory).

    Returns:
      The rule (an `optax.GradientTransformationExtraArgs` whose numbers are pytree leaves).

    Examples:
      >>> opt = jgd.adamw(1e-3, weight_decay=1e-2)

    Reference: Loshchilov & Hutter, "Decoupled weight decay regularization", ICLR 2019.
    """
    check_scalar("weight_decay", weight_decay, lower=0.0)
    if nesterov:
        _no_state_dtype("adamw", state_dtype)
        return _optax_adamw(learning_rate, b1, b2, eps, eps_root, mu_dtype, weight_decay, mask, nesterov=True)
    return _adam_family(learning_rate, b1, b2, eps, eps_root, weight_decay, _as_mask(mask), state_dtype, mu_dtype)


def _no_state_dtype(rule, state_dtype):
    if state_dtype is not None:
        raise ValueError(f"{rule}: state_dtype is not supported with nesterov=True (use mu_dtype, as optax)")


@dataclasses.dataclass(frozen=True)
class _Mask:
    """A pytree of Python bools, held hashably (it is part of the compiled program)."""

    treedef: Any
    values: tuple

    def tree(self):
        return jax.tree.unflatten(self.treedef, self.values)


def _bools(mask):
    """``mask`` as a pytree of Python bools, or a TypeError naming the leaf that is not one."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(mask)[0]:
        if not isinstance(leaf, (bool, np.bool_)):
            raise TypeError(f"mask{jax.tree_util.keystr(path)} must be a Python bool (one per leaf), got {leaf!r}")
    return jax.tree.map(bool, mask)


def _as_mask(mask):
    if mask is None or callable(mask):
        return mask
    leaves, treedef = jax.tree.flatten(_bools(mask))
    return _Mask(treedef, tuple(leaves))


def _decay_mask(mask, params):
    """The mask as a pytree of Python bools shaped like ``params``."""
    if isinstance(mask, _Mask):
        tree = mask.tree()
    else:
        tree = _bools(mask(params))
    check_same_structure("mask", tree, "params", params)
    return tree


def _adam_family(learning_rate, b1, b2, eps, eps_root, weight_decay, mask, state_dtype, mu_dtype):
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
        mask=Static(mask),
        state_dtype=check_state_dtype(state_dtype),
        mu_dtype=check_state_dtype(mu_dtype, "mu_dtype"),
    )


def _adam_init(hp, params):
    refuse_complex("adam/adamw", params)
    return AdamState(
        count=zero_count(),
        mu=moments_like(params, hp.mu_dtype or hp.state_dtype),
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

    def ema(g, moment, rate, rate_, dtype, power):
        if moment.dtype == g.dtype:
            return rate_.astype(dtype) * moment + jnp.asarray(1 - rate, dtype) * power.astype(dtype)
        return ((rate_.astype(moment.dtype) * moment).astype(dtype)
                + (jnp.asarray(1 - rate, g.dtype) * power).astype(dtype))

    def leaf(g, m, v, p=None, decay=True):
        dtype = compute_dtype(g, m, v)
        b1_, b2_ = b1.astype(dtype), b2.astype(dtype)
        # each term in its operand's dtype, summed in the wider one (optax's rounding)
        new_m = ema(g, m, hp.b1, b1_, dtype, g)
        new_v = ema(g, v, hp.b2, b2_, dtype, g * g)
        u = step_scale.astype(dtype) * new_m / (
            sqrt(new_v * root_scale.astype(dtype) + jnp.asarray(hp.eps_root, dtype)) + jnp.asarray(hp.eps, dtype)
        )
        if p is not None and decay:
            u = u - (lr * as_scalar(weight_decay)).astype(dtype) * p.astype(dtype)
        return u.astype(g.dtype), new_m.astype(m.dtype), new_v.astype(v.dtype)

    trees = (updates, state.mu, state.nu) + (() if weight_decay is None else (params,))
    if weight_decay is not None and hp.mask is not None:
        trees += (_decay_mask(hp.mask, params),)
    updates, mu, nu = map_leaves(leaf, 3, *trees)
    return updates, AdamState(count=count, mu=mu, nu=nu)

"""The shared problem zoo: pytrees, objectives, data sets and the optimizer tables that
every test file draws from, plus oracles that do not use jgd."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jgd

# --------------------------------------------------------------------------- oracles


def standard_promotion():
    """optax's own code mixes Python floats with int32 counts, which the suite's strict
    promotion forbids; oracle calls run under standard promotion."""
    return jax.numpy_dtype_promotion("standard")


@contextlib.contextmanager
def oracle():
    with standard_promotion(), jax.numpy_rank_promotion("allow"):
        yield


def assert_trees_close(actual, expected, rtol=1e-5, atol=1e-6):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(e, np.float64), rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- pytrees


def mixed_tree(dtype=jnp.float32, seed=0):
    """A nested pytree of many shapes, a scalar leaf and a rank-3 leaf included."""
    rng = np.random.default_rng(seed)

    def leaf(*shape):
        return jnp.asarray(rng.normal(size=shape), dtype)

    return {
        "dense": {"w": leaf(4, 3), "b": leaf(3)},
        "scalar": leaf(),
        "stack": (leaf(2, 2, 2), leaf(1)),
    }


TARGET = 3.0


def quadratic_loss(params, target=None):
    """0.5·Σ c_leaf·‖x − target‖² with a different curvature per leaf (a well-conditioned
    smooth objective whose gradient is known in closed form)."""
    leaves = jax.tree.leaves(params)
    if target is None:
        target = [jnp.full_like(x, TARGET) for x in leaves]
    else:
        target = jax.tree.leaves(target)
    total = jnp.zeros((), jnp.float32)
    for i, (x, t) in enumerate(zip(leaves, target)):
        c = 1.0 + 0.5 * i
        total = total + (0.5 * c * jnp.sum(jnp.square(x - t))).astype(jnp.float32)
    return total


def quadratic_grad_numpy(leaves):
    return [(1.0 + 0.5 * i) * (x - TARGET) for i, x in enumerate(leaves)]


def parabola():
    """optax's acceptance problem (alias_test._setup_parabola)."""
    final = jnp.array([1.0, -1.0, 1.0])
    return jnp.array([-1.0, 10.0, 1.0]), final, lambda p: jnp.sum(jnp.square(p - final))


def rosenbrock():
    """optax's acceptance problem (alias_test._setup_rosenbrock)."""
    def objective(p):
        return jnp.square(1.0 - p[0]) + 100.0 * jnp.square(p[1] - p[0] ** 2)

    return jnp.array([0.0, 0.0]), jnp.array([1.0, 1.0]), objective


def diabetes():
    """sklearn's diabetes data, standardized features and centred target (float32)."""
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    y = (y - y.mean()) / y.std()
    return X.astype(np.float32), y.astype(np.float32)


def least_squares(X, y):
    def loss(w, batch=None):
        Xb, yb = (X, y) if batch is None else batch
        r = Xb @ w - yb
        return 0.5 * jnp.mean(r * r)

    return loss


# --------------------------------------------------------------------------- optimizer tables

# name -> (jgd factory, optax factory, non-default kwargs). Learning rates are given
# separately so every row can be swept over them.
SMOOTH = {
    "sgd": (jgd.sgd, optax.sgd, {}),
    "momentum": (
        jgd.momentum,
        lambda lr, beta=0.9, nesterov=False: optax.sgd(lr, momentum=beta, nesterov=nesterov),
        {"beta": 0.5},
    ),
    "nesterov": (
        jgd.nesterov,
        lambda lr, beta=0.9: optax.sgd(lr, momentum=beta, nesterov=True),
        {"beta": 0.7},
    ),
    "adagrad": (jgd.adagrad, optax.adagrad, {"initial_accumulator_value": 0.5, "eps": 1e-4}),
    "rmsprop": (jgd.rmsprop, optax.rmsprop, {"decay": 0.8, "eps": 1e-4}),
    "rmsprop_centered": (
        lambda learning_rate, **kw: jgd.rmsprop(learning_rate, centered=True, **kw),
        lambda lr, **kw: optax.rmsprop(lr, centered=True, **kw),
        {"decay": 0.95, "eps": 1e-3},
    ),
    "adam": (jgd.adam, optax.adam, {"b1": 0.5, "b2": 0.9, "eps": 1e-3}),
    "adamw": (jgd.adamw, optax.adamw, {"b1": 0.8, "b2": 0.99, "weight_decay": 0.1}),
}

# Learning rates that solve optax's acceptance problems in 10,000 steps
# (optax's alias_test uses the same ones where it has the rule).
ACCEPTANCE_LR = {
    "sgd": 2e-3,
    "momentum": 1e-3,
    "nesterov": 1e-3,
    "adagrad": 1.0,
    "rmsprop": 5e-3,
    "rmsprop_centered": 5e-3,
    "adam": 1e-1,
    "adamw": 1e-1,
}

# name -> (jgd factory, kwargs besides learning_rate whose values may be traced)
NUMERIC_HPARAMS = {
    "sgd": {},
    "momentum": {"beta": 0.9},
    "nesterov": {"beta": 0.9},
    "adagrad": {"initial_accumulator_value": 0.1, "eps": 1e-7},
    "rmsprop": {"decay": 0.9, "eps": 1e-8},
    "rmsprop_centered": {"decay": 0.9, "eps": 1e-8},
    "adam": {"b1": 0.9, "b2": 0.999, "eps": 1e-8},
    "adamw": {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 1e-4},
}


def run(opt, params, grad_fn, steps, jit=True):
    """``steps`` updates of ``opt`` from ``params`` with gradients from ``grad_fn``."""
    def step(carry, _):
        p, s = carry
        u, s = opt.update(grad_fn(p), s, p)
        return (optax.apply_updates(p, u), s), None

    def go(p):
        return jax.lax.scan(step, (p, opt.init(p)), None, length=steps)[0]

    return (jax.jit(go) if jit else go)(params)


class TraceCounter:
    """Wraps a function and counts how often JAX traces it (once per compilation)."""

    def __init__(self, fn):
        self.fn, self.count = fn, 0

    def __call__(self, *args, **kwargs):
        self.count += 1
        return self.fn(*args, **kwargs)


# --------------------------------------------------------------------------- non-smooth problems


def lad_problem(m=60, d=8, seed=0):
    """Least absolute deviations ‖Ax − b‖₁ with its optimum from scipy's linprog:
    min Σ s  s.t.  −s ≤ Ax − b ≤ s."""
    from scipy.optimize import linprog

    rng = np.random.default_rng(seed)
    A = rng.normal(size=(m, d))
    b = A @ rng.normal(size=d) + rng.laplace(size=m)
    c = np.concatenate([np.zeros(d), np.ones(m)])
    eye = np.eye(m)
    A_ub = np.block([[A, -eye], [-A, -eye]])
    b_ub = np.concatenate([b, -b])
    bounds = [(None, None)] * d + [(0, None)] * m
    sol = linprog(c, A_ub=A_ub, b_ub=b_ub, bounds=bounds, method="highs")
    assert sol.success
    return A.astype(np.float32), b.astype(np.float32), float(sol.fun)


def lasso_problem(alpha=0.05, quadratic_features=False):
    """sklearn's Lasso objective on diabetes: (1/2n)‖y − Xw‖² + α‖w‖₁, its solution from
    sklearn's coordinate descent (float64, tight tolerance), and L of the smooth part.
    ``quadratic_features`` adds the degree-2 products (65 correlated, ill-conditioned
    features, where acceleration matters)."""
    from sklearn.linear_model import Lasso
    from sklearn.preprocessing import PolynomialFeatures

    X, y = diabetes()
    X, y = X.astype(np.float64), y.astype(np.float64)
    if quadratic_features:
        X = PolynomialFeatures(2, include_bias=False).fit_transform(X)
        X = (X - X.mean(0)) / X.std(0)
    w = Lasso(alpha=alpha, fit_intercept=False, tol=1e-14, max_iter=100_000).fit(X, y).coef_
    n = X.shape[0]
    L = float(np.linalg.eigvalsh(X.T @ X / n).max())

    def objective(w_):
        r = X @ w_ - y
        return 0.5 * np.mean(r * r) + alpha * np.sum(np.abs(w_))

    return X, y, w, objective(w), L, objective


# --------------------------------------------------------------------------- every public factory

# name -> (lr -> optimizer, what a NaN in one gradient leaf does after two updates):
#   "leaf": NaN in that leaf's updates, every other leaf finite (elementwise rules);
#   "spread": the rule reduces over all leaves (a global norm), so NaN may reach every leaf;
#   "skip": the update is zero and the step is counted as skipped.
# Rules that need ``value=`` get the loss ``0.5·‖g‖²`` in the property tests.
FACTORIES = {
    "sgd": (jgd.sgd, "leaf"),
    "momentum": (jgd.momentum, "leaf"),
    "nesterov": (jgd.nesterov, "leaf"),
    "adagrad": (jgd.adagrad, "leaf"),
    "rmsprop": (jgd.rmsprop, "leaf"),
    "rmsprop_centered": (lambda lr: jgd.rmsprop(lr, centered=True), "leaf"),
    "adam": (jgd.adam, "leaf"),
    "adamw": (jgd.adamw, "leaf"),
    "subgradient_constant": (lambda lr: jgd.subgradient(lr, rule="constant"), "leaf"),
    "subgradient_length": (lambda lr: jgd.subgradient(lr, rule="length"), "spread"),
    "subgradient_sqrt": (lambda lr: jgd.subgradient(lr, rule="sqrt"), "leaf"),
    "subgradient_harmonic": (lambda lr: jgd.subgradient(lr, rule="harmonic"), "leaf"),
    "subgradient_polyak": (lambda lr: jgd.subgradient(lr, rule="polyak", f_star=0.0), "spread"),
    "proximal_gradient_l1": (lambda lr: jgd.proximal_gradient(lr, prox=jgd.prox.l1(0.01)), "leaf"),
    "proximal_gradient_fista_box": (
        lambda lr: jgd.proximal_gradient(lr, prox=jgd.prox.box(-1.0, 1.0), accelerated=True),
        "leaf",
    ),
    "chain": (lambda lr: jgd.chain(jgd.clip(0.5), jgd.nesterov(lr)), "leaf"),
    "clip": (lambda lr: jgd.chain(jgd.clip(0.5), jgd.sgd(lr)), "leaf"),
    "clip_by_global_norm": (lambda lr: jgd.chain(jgd.clip_by_global_norm(1.0), jgd.adam(lr)), "spread"),
    "add_decayed_weights": (lambda lr: jgd.chain(jgd.add_decayed_weights(1e-2), jgd.sgd(lr)), "leaf"),
    "accumulate": (lambda lr: jgd.accumulate(jgd.adam(lr), every=2), "leaf"),
    "skip_nonfinite": (lambda lr: jgd.skip_nonfinite(jgd.momentum(lr)), "skip"),
    "flat": (lambda lr: jgd.flat(jgd.adam(lr)), "leaf"),
    "flat_adamw": (lambda lr: jgd.flat(jgd.adamw(lr)), "leaf"),
    "flat_own_buffers": (lambda lr: jgd.flat(jgd.rmsprop(lr), pack_below=8), "leaf"),
    # lifted optax rules: one representative here; every alias is checked against optax itself
    # in test_optax_zoo.py, the parameter groups in test_groups.py
    "lion": (jgd.lion, "leaf"),
    "MultiSteps": (lambda lr: jgd.MultiSteps(jgd.sgd(lr), 2), "leaf"),
}

# Public callables that are not optimizer factories (the completeness test skips them).
NOT_FACTORIES = {"apply_updates", "minimize", "sweep", "LoopState", "Result", "SweepResult", "prox", "Eval",
                 "halving", "choice", "loguniform", "uniform", "schedules", "lift", "debug", "contrib"}
# Factories tested against optax in their own files (test_optax_zoo.py, test_groups.py)
# rather than through the property table, whose hypothesis runs would multiply by 35.
TESTED_AGAINST_OPTAX = set(jgd.optax_zoo.NAMES) | {"partition", "multi_transform", "masked", "freeze",
                                                   "set_to_zero", "selective_transform"}

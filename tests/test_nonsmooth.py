"""Subgradient step rules, proximal operators, ISTA and FISTA against closed forms,
scipy's linprog and nnls, scikit-learn's Lasso and Beck–Teboulle's bound."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from problems import TraceCounter, diabetes, lad_problem, lasso_problem, mixed_tree
from scipy.optimize import nnls

import jgd

RULES = ["constant", "length", "sqrt", "harmonic", "polyak"]


def _expected_step(rule, lr, t, g_norm, value, f_star):
    return {
        "constant": lr,
        "length": lr / g_norm,
        "sqrt": lr / np.sqrt(t),
        "harmonic": lr / t,
        "polyak": lr * (value - f_star) / g_norm**2,
    }[rule]


@pytest.mark.parametrize("rule", RULES)
def test_each_rule_gives_its_step_times_the_gradient(rule):
    lr, f_star = 0.3, -1.0
    f_star_kw = {"f_star": f_star} if rule == "polyak" else {}
    opt = jgd.subgradient(lr, rule, **f_star_kw)
    params = {"a": jnp.array([1.0, -2.0]), "b": jnp.array(3.0)}
    state = opt.init(params)
    for t, (g, value) in enumerate([((3.0, 4.0, 0.0), 2.0), ((1.0, 0.0, -1.0), 1.5), ((0.0, 0.5, 0.5), 0.7)], 1):
        grads = {"a": jnp.array(g[:2]), "b": jnp.array(g[2])}
        updates, state = opt.update(grads, state, params, value=jnp.float32(value))
        step = _expected_step(rule, lr, t, np.linalg.norm(g), value, f_star)
        np.testing.assert_allclose(np.r_[updates["a"], updates["b"]], -step * np.asarray(g), rtol=1e-6)


@pytest.mark.parametrize("rule", RULES)
def test_zero_gradient_gives_zero_update(rule):
    f_star_kw = {"f_star": 0.0} if rule == "polyak" else {}
    opt = jgd.subgradient(1.0, rule, **f_star_kw)
    params = mixed_tree()
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(opt.update)(zeros, opt.init(params), params, value=jnp.float32(1.0))
    for u in jax.tree.leaves(updates):
        np.testing.assert_array_equal(u, 0.0)


def test_subgradient_errors():
    with pytest.raises(ValueError, match="constant.*length.*sqrt.*harmonic.*polyak"):
        jgd.subgradient(0.1, "cubic")
    with pytest.raises(ValueError, match="f_star"):
        jgd.subgradient(0.1, "polyak")
    with pytest.raises(ValueError, match="learning_rate"):
        jgd.subgradient(-0.1)
    opt = jgd.subgradient(1.0, "polyak", f_star=0.0)
    with pytest.raises(ValueError, match="value="):
        opt.update(jnp.ones(2), opt.init(jnp.ones(2)), jnp.ones(2))


def test_prox_errors():
    with pytest.raises(ValueError, match="lower must be <= upper"):
        jgd.prox.box(1.0, -1.0)
    with pytest.raises(TypeError, match="lower"):
        jgd.prox.box("a", 1.0)
    with pytest.raises(ValueError, match="strength"):
        jgd.prox.l1(-0.1)
    with pytest.raises(ValueError, match="radius"):
        jgd.prox.l2_ball(float("nan"))


def _lad_run(opt, A, b, steps):
    def fun(x):
        return jnp.sum(jnp.abs(A @ x - b))

    return jgd.minimize(fun, jnp.zeros(A.shape[1], jnp.float32), opt, steps=steps)


def test_least_absolute_deviations_reach_linprog_optimum():
    A, b, f_opt = lad_problem()
    # Step sizes scaled by a typical subgradient norm: ‖g‖ ≈ ‖A‖_F.
    scale = 1.0 / np.linalg.norm(A)
    for rule, lr in [("sqrt", 2.0 * scale), ("length", 0.01), ("harmonic", 20.0 * scale)]:
        r = _lad_run(jgd.subgradient(lr, rule), A, b, 4000)
        assert float(r.best_loss) <= f_opt * (1 + 1e-2), rule
    polyak = _lad_run(jgd.subgradient(1.0, "polyak", f_star=f_opt), A, b, 1000)
    sqrt = _lad_run(jgd.subgradient(2.0 * scale, "sqrt"), A, b, 1000)
    assert float(polyak.best_loss) <= f_opt * (1 + 1e-2)
    assert float(polyak.best_loss) - f_opt < float(sqrt.best_loss) - f_opt


def test_each_prox_equals_its_closed_form():
    rng = np.random.default_rng(0)
    x = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=5).astype(np.float32)}
    flat = np.concatenate([x["a"].ravel(), x["b"]])
    step = 0.5

    def flatten(tree):
        return np.concatenate([np.asarray(tree["a"]).ravel(), np.asarray(tree["b"])])

    np.testing.assert_allclose(flatten(jgd.prox.l1(0.4)(x, step)),
                               np.sign(flat) * np.maximum(np.abs(flat) - 0.2, 0), rtol=1e-6)
    np.testing.assert_allclose(flatten(jgd.prox.l2(0.4)(x, step)), flat / 1.2, rtol=1e-6)
    np.testing.assert_allclose(flatten(jgd.prox.nonnegative()(x, step)), np.maximum(flat, 0))
    np.testing.assert_allclose(flatten(jgd.prox.box(-0.5, 0.25)(x, step)), np.clip(flat, -0.5, 0.25))
    radius = 0.5 * np.linalg.norm(flat)
    np.testing.assert_allclose(flatten(jgd.prox.l2_ball(radius)(x, step)), flat * 0.5, rtol=1e-6)
    inside = jgd.prox.l2_ball(2 * np.linalg.norm(flat))(x, step)
    np.testing.assert_allclose(flatten(inside), flat, rtol=1e-6)
    # The l1 prox is the minimiser of its defining problem (checked by perturbation).
    z = flatten(jgd.prox.l1(0.4)(x, step))

    def h(v):
        return 0.2 * np.abs(v).sum() + 0.5 * np.sum((v - flat) ** 2)

    for _ in range(20):
        assert h(z) <= h(z + 1e-3 * rng.normal(size=z.shape)) + 1e-9


def _fista_trace(opt, loss, x0, steps):
    """Runs opt and records F at state.iterate after each step."""

    def body(carry, _):
        y, state = carry
        updates, state = opt.update(jax.grad(loss)(y), state, y)
        return (optax.apply_updates(y, updates), state), state.iterate

    (_, state), iterates = jax.jit(lambda x: jax.lax.scan(body, (x, opt.init(x)), None, length=steps))(x0)
    return state.iterate, iterates


def _lasso_smooth(X, y):
    def loss(w):
        r = X @ w - y
        return 0.5 * jnp.mean(r * r)

    return loss


def test_lasso_equals_sklearn():
    X, y, w_sk, _, L, _ = lasso_problem(alpha=0.05)
    loss = _lasso_smooth(jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.float32))
    opt = jgd.proximal_gradient(1.0 / L, prox=jgd.prox.l1(0.05), accelerated=True)
    w, _ = _fista_trace(opt, loss, jnp.zeros(X.shape[1], jnp.float32), 3000)
    np.testing.assert_allclose(np.asarray(w), w_sk, atol=1e-3)
    assert np.array_equal(np.asarray(w) == 0, w_sk == 0)


def test_nonnegative_least_squares_equals_scipy_nnls():
    X, y = diabetes()
    A, b = X[:, :6].astype(np.float64), y.astype(np.float64)
    expected, _ = nnls(A, b)
    L = float(np.linalg.eigvalsh(A.T @ A).max())
    loss = lambda w: 0.5 * jnp.sum(jnp.square(jnp.asarray(A, jnp.float32) @ w - jnp.asarray(b, jnp.float32)))  # noqa: E731
    opt = jgd.proximal_gradient(1.0 / L, prox=jgd.prox.nonnegative(), accelerated=True)
    w, _ = _fista_trace(opt, loss, jnp.zeros(6, jnp.float32), 3000)
    assert expected.min() == 0.0, "the oracle's solution must touch the constraint"
    np.testing.assert_allclose(np.asarray(w), expected, atol=1e-4)


def test_fista_obeys_beck_teboulle_bound_and_beats_ista(x64):
    X, y, w_star, f_star, L, objective = lasso_problem(alpha=0.003, quadratic_features=True)
    loss = _lasso_smooth(jnp.asarray(X), jnp.asarray(y))
    x0 = jnp.zeros(X.shape[1], jnp.float64)
    steps = 3500
    gaps = {}
    for accelerated in (False, True):
        opt = jgd.proximal_gradient(1.0 / L, prox=jgd.prox.l1(0.003), accelerated=accelerated)
        _, iterates = _fista_trace(opt, loss, x0, steps)
        gaps[accelerated] = np.array([objective(w) for w in np.asarray(iterates)]) - f_star
    k = np.arange(1, steps + 1)
    bound = 2 * L * np.sum((np.asarray(x0) - w_star) ** 2) / (k + 1) ** 2
    assert np.all(gaps[True] <= bound + 1e-12)

    def first_below(g, level=1e-6):
        hits = np.nonzero(g <= level)[0]
        assert hits.size, "did not reach the gap"
        return hits[0] + 1

    assert first_below(gaps[True]) * 3 <= first_below(gaps[False])


@pytest.mark.parametrize("make", [
    lambda lr: jgd.subgradient(lr, "sqrt"),
    lambda lr: jgd.subgradient(lr, "polyak", f_star=0.0),
    lambda lr: jgd.proximal_gradient(lr, jgd.prox.l1(0.1), accelerated=True),
], ids=["subgradient", "polyak", "fista"])
def test_vmap_over_learning_rate_and_one_compile(make):
    A, b, _ = lad_problem()

    def fun(x):
        return jnp.sum(jnp.abs(A @ x - b))

    x0 = jnp.zeros(A.shape[1], jnp.float32)
    lrs = jnp.asarray([1e-3, 1e-2, 3e-2], jnp.float32)
    batched = jax.vmap(lambda lr: jgd.minimize(fun, x0, make(lr), steps=50).losses)(lrs)
    for i, lr in enumerate(lrs):
        np.testing.assert_allclose(batched[i], jgd.minimize(fun, x0, make(lr), steps=50).losses, rtol=1e-5)
    counter = TraceCounter(lambda opt, x, s: opt.update(jax.grad(fun)(x), s, x, value=fun(x)))
    step = jax.jit(counter)
    for lr in (1e-3, 1e-2, 0.1):
        opt = make(lr)
        step(opt, x0, opt.init(x0))
    assert counter.count == 1
    # The prox strength is a leaf too.
    counter.count = 0
    for strength in (0.1, 0.2):
        opt = jgd.proximal_gradient(0.1, jgd.prox.l1(strength))
        step(opt, x0, opt.init(x0))
    assert counter.count == 1


def test_proximal_state_can_be_donated_with_the_params():
    # init used to put the params' own buffers in the state: donating both failed with
    # "Attempt to donate the same buffer twice".
    params = jnp.ones(4)
    opt = jgd.proximal_gradient(0.1, prox=jgd.prox.l1(0.01), accelerated=True)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(p, s):
        u, s = opt.update(p, s, p)
        return jgd.apply_updates(p, u), s

    p, s = step(params, opt.init(params))
    assert bool(jnp.all(jnp.isfinite(p)))


def _first(condition):
    hits = np.nonzero(condition)[0]
    assert hits.size, "never reached"
    return int(hits[0]) + 1


def _lasso_iterates(opt, loss, x0, steps, line_search):
    """Every step's reported iterate and the step size it used."""
    def body(carry, _):
        y, state = carry
        value, g = jax.value_and_grad(loss)(y)
        extra = dict(value=value, value_fn=loss) if line_search else {}
        updates, state = opt.update(g, state, y, **extra)
        return (optax.apply_updates(y, updates), state), (state.iterate, state.step)

    return jax.jit(lambda x: jax.lax.scan(body, (x, opt.init(x)), None, length=steps)[1])(x0)


@pytest.mark.parametrize("accelerated", [False, True])
def test_backtracking_reaches_sklearns_lasso_without_a_step_size(accelerated):
    X, y, w_sk, _, L, _ = lasso_problem(alpha=0.05)
    loss = _lasso_smooth(jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.float32))
    x0 = jnp.zeros(X.shape[1], jnp.float32)
    steps = 3000
    known, _ = _lasso_iterates(jgd.proximal_gradient(1.0 / L, jgd.prox.l1(0.05), accelerated), loss, x0, steps, False)
    searched, etas = _lasso_iterates(jgd.proximal_gradient(None, jgd.prox.l1(0.05), accelerated), loss, x0, steps, True)
    close = lambda w: np.max(np.abs(np.asarray(w) - w_sk), axis=1) <= 1e-3  # noqa: E731
    assert _first(close(searched)) <= 2 * _first(close(known))
    np.testing.assert_allclose(np.asarray(searched[-1]), w_sk, atol=1e-3)
    # Beck–Teboulle: the accepted steps never grow, and stay above 1/(2L)
    etas = np.asarray(etas)
    assert np.all(np.diff(etas) <= 0) and etas[-1] >= 0.5 / L


def test_minimize_stops_on_the_prox_gradient_residual(x64):
    X, y, w_star, f_star, L, objective = lasso_problem(alpha=0.05)
    loss = _lasso_smooth(jnp.asarray(X), jnp.asarray(y))
    x0 = jnp.zeros(X.shape[1])
    tol = 1e-6
    r = jgd.minimize(loss, x0, jgd.proximal_gradient(prox=jgd.prox.l1(0.05), accelerated=True), steps=5000, tol=tol)
    assert bool(r.converged)
    k_stop = int(r.num_steps)
    # grad_norms records the residual; it is the one that met tol
    assert float(r.grad_norms[k_stop - 1]) <= tol < float(np.nanmin(np.asarray(r.grad_norms[: k_stop - 1])))
    # The optimum to float64 precision, independently: 20,000 ISTA steps of 1/L
    # (sklearn's solution agrees to ~1e-6 only).
    w_ref = np.asarray(_lasso_iterates(jgd.proximal_gradient(1.0 / L, jgd.prox.l1(0.05)), loss, x0, 20_000, False)[0][-1])
    np.testing.assert_allclose(w_ref, w_star, atol=1e-5)
    f_star = objective(w_ref)
    # Not premature. At the stop's params y, independently (numpy, step 1/L, where the
    # descent lemma holds globally): p = prox(y − ∇f(y)/L), G = L(y − p). Beck–Teboulle's
    # lemma gives F(p) − F* ≤ ‖G‖·‖y − x*‖, and ‖G_t‖·t grows with t (Beck, First-Order
    # Methods, Thm 10.9), so ‖G_{1/L}‖ ≤ η·L·‖G_η‖ ≤ η·L·tol for the step η the run used.
    y_stop = np.asarray(r.params)
    grad_y = X.T @ (X @ y_stop - y) / X.shape[0]
    z = y_stop - grad_y / L
    p = np.sign(z) * np.maximum(np.abs(z) - 0.05 / L, 0)
    G = L * (y_stop - p)
    eta = float(r.state.opt_state.step)
    rounding = 64 * np.finfo(np.float64).eps * abs(f_star)  # gaps below this are rounding
    assert np.linalg.norm(G) <= eta * L * tol * (1 + 1e-9)
    gap_stop = objective(p) - f_star
    assert gap_stop <= np.linalg.norm(G) * np.linalg.norm(y_stop - w_ref) + rounding
    # Not late: within twice the iterations the same run needs to reach that gap.
    iterates, _ = _lasso_iterates(jgd.proximal_gradient(None, jgd.prox.l1(0.05), True), loss, x0, k_stop, True)
    gaps = np.array([objective(w) for w in np.asarray(iterates)]) - f_star
    assert k_stop <= 2 * _first(gaps <= max(gap_stop, rounding))
    np.testing.assert_allclose(p, w_ref, atol=1e-5)


def test_backtracking_needs_value_and_value_fn():
    opt = jgd.proximal_gradient(prox=jgd.prox.l1(0.1))
    x = jnp.ones(3)
    with pytest.raises(ValueError, match="value=f\\(params\\), value_fn=f"):
        opt.update(x, opt.init(x), x)


@pytest.mark.parametrize("accelerated", [False, True])
def test_lasso_best_params_are_the_lassos(accelerated):
    """A proximal rule reports g to the loop, so minimize's best iterate is by the composite
    objective f + g: best_params = sklearn's Lasso solution (and the final iterate), and
    best_loss = f(best) + g(best). Tracked by f alone it would be an early, less sparse point."""
    X, y, w_sk, _, L, _ = lasso_problem(alpha=0.05)
    loss = _lasso_smooth(jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.float32))
    opt = jgd.proximal_gradient(1.0 / L, prox=jgd.prox.l1(0.05), accelerated=accelerated)
    r = jgd.minimize(loss, jnp.zeros(X.shape[1], jnp.float32), opt, steps=3000)
    np.testing.assert_allclose(np.asarray(r.best_params), w_sk, atol=1e-3)
    np.testing.assert_allclose(np.asarray(r.best_params), np.asarray(r.state.opt_state.iterate), atol=1e-3)
    composite = float(loss(r.best_params)) + 0.05 * float(jnp.sum(jnp.abs(r.best_params)))
    assert float(r.best_loss) == pytest.approx(composite, rel=1e-5)
    # f alone is lowest elsewhere: the least-squares part keeps falling past the Lasso's point
    assert float(jnp.nanmin(r.losses)) < float(loss(r.best_params))


def test_prox_objectives_are_their_gs():
    x = {"a": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
    assert float(jgd.prox.objective(jgd.prox.l1(0.5), x)) == pytest.approx(0.5 * 3.5)
    assert float(jgd.prox.objective(jgd.prox.l2(2.0), x)) == pytest.approx(0.5 * 2.0 * (1 + 4 + 0.25))
    assert float(jgd.prox.objective(jgd.prox.nonnegative(), x)) == np.inf
    assert float(jgd.prox.objective(jgd.prox.box(-2.0, 1.0), x)) == 0.0
    assert float(jgd.prox.objective(jgd.prox.l2_ball(1.0), jgd.prox.l2_ball(1.0)(x, 1.0))) == 0.0
    assert jgd.prox.objective(lambda v, step: v, x) is None

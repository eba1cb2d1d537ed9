"""What optax and jaxopt users count on, each against its optax / closed-form oracle:
rmsprop with momentum, adamw's mask, Polyak's cap, state dtypes, per-leaf prox strengths."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from problems import mixed_tree, quadratic_loss

import jgd

grad = jax.grad(quadratic_loss)


def _trajectory(opt, params, steps=60, value=False):
    state = opt.init(params)
    for _ in range(steps):
        extra = {"value": quadratic_loss(params)} if value else {}
        updates, state = opt.update(grad(params), state, params, **extra)
        params = optax.apply_updates(params, updates)
    return params, state


def _close(a, b, rtol=1e-5, atol=1e-6):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype, (x.dtype, y.dtype)
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol, atol=atol)


@pytest.fixture(autouse=True)
def standard_promotion():
    with jax.numpy_dtype_promotion("standard"):  # optax mixes int counts and floats
        yield


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("nesterov", [False, True])
def test_rmsprop_momentum_equals_optax(centered, nesterov):
    params = mixed_tree()
    ours = jgd.rmsprop(0.01, decay=0.8, centered=centered, momentum=0.7, nesterov=nesterov)
    theirs = optax.rmsprop(0.01, decay=0.8, centered=centered, momentum=0.7, nesterov=nesterov)
    _close(_trajectory(ours, params)[0], _trajectory(theirs, params)[0])


@pytest.mark.parametrize("kind", ["tree", "callable"])
def test_adamw_mask_equals_optax(kind):
    params = mixed_tree()
    tree = jax.tree.map(lambda x: x.ndim >= 2, params)  # decay matrices only
    mask = tree if kind == "tree" else (lambda p: jax.tree.map(lambda x: x.ndim >= 2, p))
    ours = jgd.adamw(0.05, weight_decay=0.5, mask=mask)
    theirs = optax.adamw(0.05, weight_decay=0.5, mask=mask)
    _close(_trajectory(ours, params)[0], _trajectory(theirs, params)[0])
    # and differs from decaying everything (the mask did something)
    everything = _trajectory(jgd.adamw(0.05, weight_decay=0.5), params)[0]
    assert not np.allclose(everything["dense"]["b"], _trajectory(ours, params)[0]["dense"]["b"])


def test_adamw_mask_is_static_and_compiles_once():
    params = mixed_tree()
    mask = jax.tree.map(lambda x: x.ndim >= 2, params)
    traces = []

    @jax.jit
    def step(opt, params):
        traces.append(1)
        state = opt.init(params)
        return opt.update(grad(params), state, params)[0]

    for lr in (0.1, 0.2):
        step(jgd.adamw(lr, mask=mask), params)
    assert len(traces) == 1


def test_polyak_cap_equals_optax():
    params = mixed_tree()
    for cap in (0.05, 10.0):
        ours = jgd.subgradient(1.0, rule="polyak", f_star=0.0, max_learning_rate=cap)
        theirs = optax.polyak_sgd(max_learning_rate=cap, f_min=0.0)
        _close(_trajectory(ours, params, 30, value=True)[0], _trajectory(theirs, params, 30, value=True)[0])


def test_mu_dtype_equals_optax():
    params = mixed_tree()
    ours, state = _trajectory(jgd.adam(0.01, mu_dtype=jnp.bfloat16), params)
    theirs, their_state = _trajectory(optax.adam(0.01, mu_dtype=jnp.bfloat16), params)
    _close(ours, theirs)
    assert {x.dtype for x in jax.tree.leaves(state.mu)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(state.nu)} == {jnp.dtype(jnp.float32)}
    _close(state.mu, their_state[0].mu)
    ours, state = _trajectory(jgd.momentum(0.01, mu_dtype=jnp.bfloat16), params)
    theirs, _ = _trajectory(optax.sgd(0.01, momentum=0.9, accumulator_dtype=jnp.bfloat16), params)
    _close(ours, theirs)
    assert {x.dtype for x in jax.tree.leaves(state.trace)} == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize("make", [jgd.adam, jgd.adamw, jgd.momentum, jgd.adagrad, jgd.rmsprop])
def test_state_dtype_down_halves_the_state_and_stays_close(make):
    params = mixed_tree()
    full, full_state = _trajectory(make(0.01), params)
    half, half_state = _trajectory(make(0.01, state_dtype=jnp.bfloat16), params)
    nbytes = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree) if x.ndim)  # noqa: E731
    assert nbytes(half_state) * 2 == nbytes(full_state)
    assert {x.dtype for x in jax.tree.leaves(half)} == {jnp.dtype(jnp.float32)}  # updates keep the params' dtype
    _close(half, full, rtol=3e-2, atol=3e-2)  # bf16 moments: 8 bits of mantissa


def test_per_leaf_prox_strengths_equal_the_closed_forms():
    x = (jnp.array([3.0, -0.5, 1.5]), jnp.array([[2.0, -4.0]]))
    strengths = (0.5, 2.0)
    soft = lambda v, t: np.sign(v) * np.maximum(np.abs(v) - t, 0)  # noqa: E731
    out = jgd.prox.l1(strengths)(x, 0.5)
    assert [o.shape for o in out] == [(3,), (1, 2)]
    for o, v, s in zip(out, x, strengths):
        np.testing.assert_allclose(o, soft(np.asarray(v), 0.5 * s))
    for o, v, s in zip(jgd.prox.l2(strengths)(x, 0.5), x, strengths):
        np.testing.assert_allclose(o, np.asarray(v) / (1 + 0.5 * s), rtol=1e-6)
    lower, upper = (0.0, -1.0), (1.0, 1.0)
    for o, v, lo, hi in zip(jgd.prox.box(lower, upper)(x, 1.0), x, lower, upper):
        np.testing.assert_allclose(o, np.clip(np.asarray(v), lo, hi))
    # a strength per leaf is a leaf of the optimizer: sweepable without recompiling
    opt = jgd.proximal_gradient(0.1, prox=jgd.prox.l1(strengths))
    assert len(jax.tree.leaves(opt)) == 3


def test_proximal_gradient_with_per_leaf_l1_equals_jaxopt_style_lasso():
    # Two blocks with their own strengths = one block with a per-coordinate strength.
    rng = np.random.default_rng(0)
    A = jnp.asarray(rng.normal(size=(40, 6)), jnp.float32)
    b = jnp.asarray(rng.normal(size=40), jnp.float32)
    split = lambda w: jnp.mean((A @ jnp.concatenate([w[0], w[1]]) - b) ** 2)  # noqa: E731
    whole = lambda w: jnp.mean((A @ w - b) ** 2)  # noqa: E731
    lam = jnp.array([0.1, 0.1, 0.1, 0.4, 0.4, 0.4])
    r1 = jgd.minimize(split, (jnp.zeros(3), jnp.zeros(3)), jgd.proximal_gradient(0.05, prox=jgd.prox.l1((0.1, 0.4))), steps=300)
    r2 = jgd.minimize(whole, jnp.zeros(6), jgd.proximal_gradient(0.05, prox=jgd.prox.l1(lam)), steps=300)
    np.testing.assert_allclose(jnp.concatenate(r1.params), r2.params, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: jgd.rmsprop(0.1, nesterov=True), ValueError, "nesterov=True needs momentum"),
        (lambda: jgd.rmsprop(0.1, momentum=1.5), ValueError, "momentum must be in"),
        (lambda: jgd.adamw(0.1, mask={"a": 1}), TypeError, r"mask\['a'\] must be a Python bool"),
        (lambda: jgd.adam(0.1, mu_dtype=jnp.int32), TypeError, "mu_dtype must be a floating dtype"),
        (lambda: jgd.subgradient(0.1, rule="sqrt", max_learning_rate=1.0), ValueError, "only used by rule='polyak'"),
        (lambda: jgd.subgradient(1.0, rule="polyak", f_star=0.0, max_learning_rate=-1.0), ValueError,
         "max_learning_rate must be >= 0"),
        (lambda: jgd.prox.l1((0.1, -0.2)), ValueError, r"strength\[1\] must be >= 0"),
        (lambda: jgd.prox.l1((0.1, 0.2))({"a": jnp.ones(2)}, 1.0), ValueError, "must match the params' structure"),
    ],
)
def test_bad_input(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_adamw_mask_structure_mismatch_names_both():
    opt = jgd.adamw(0.1, mask={"w": True})
    params = {"w": jnp.ones(2), "b": jnp.ones(1)}
    with pytest.raises(ValueError, match="mask and params must have the same tree structure"):
        opt.update(params, opt.init(params), params)

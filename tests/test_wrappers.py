"""flat(opt) and skip_nonfinite(opt) against the rules they wrap and against optax;
boundary errors of every factory in problems.FACTORIES."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from problems import FACTORIES, SMOOTH, assert_trees_close, mixed_tree, oracle, quadratic_loss, run

import jgd

grad = jax.grad(quadratic_loss)


def two_dtype_tree():
    """float32 and bfloat16 leaves side by side, a scalar and an empty leaf included."""
    tree = mixed_tree()
    tree["half"] = {"w": jnp.linspace(-1, 1, 6, dtype=jnp.bfloat16).reshape(2, 3), "empty": jnp.zeros((0, 4), jnp.bfloat16)}
    return tree


def steps(opt, params, n=20):
    return run(opt, params, grad, n)


@pytest.mark.parametrize("pack_below", [None, 0, 4])
@pytest.mark.parametrize("name", SMOOTH)
def test_flat_equals_the_rule_it_wraps(name, pack_below):
    make = SMOOTH[name][0]
    params = two_dtype_tree()
    expected, _ = steps(make(0.05), params)
    actual, state = steps(jgd.flat(make(0.05), pack_below=pack_below), params)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        assert a.dtype == e.dtype
        # Same arithmetic; XLA may vectorize one layout and not the other (FMA), so
        # allow a few units in the last place over 20 steps.
        ulp = 10 * float(jnp.finfo(a.dtype).eps)
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(e, np.float64), rtol=ulp, atol=ulp)
    moments = [x for x in state.inner if isinstance(x, dict)]
    for moment in moments:
        sizes = {name: x.size for name, x in moment.items()}
        if pack_below == 4:  # leaves of >= 4 entries keep their own buffer
            assert sizes == {"bfloat16": 0, "bfloat16:3": 6, "float32": 5, "float32:1": 12, "float32:5": 8}
        else:  # one buffer per dtype
            assert sizes == {"bfloat16": 6, "float32": 25}


def test_flat_global_norm_rules_agree_to_rounding():
    params = mixed_tree()
    opt = jgd.chain(jgd.clip_by_global_norm(0.5), jgd.adam(0.1))
    expected, _ = steps(opt, params)
    actual, _ = steps(jgd.flat(opt), params)
    assert_trees_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_flat_under_minimize_and_vmap():
    params = mixed_tree()
    run = lambda lr: jgd.minimize(quadratic_loss, params, jgd.flat(jgd.momentum(lr)), steps=50).params  # noqa: E731
    lrs = jnp.asarray([0.05, 0.1], jnp.float32)
    batched = jax.vmap(run)(lrs)
    for i, lr in enumerate(lrs):
        one = jgd.minimize(quadratic_loss, params, jgd.momentum(lr), steps=50).params
        assert_trees_close(jax.tree.map(lambda x: x[i], batched), one, rtol=1e-6, atol=1e-6)


def test_flat_rejects_a_bad_pack_below():
    with pytest.raises(ValueError, match="pack_below"):
        jgd.flat(jgd.sgd(0.1), pack_below=-1)


def test_flat_rejects_a_state_made_for_other_params():
    opt = jgd.flat(jgd.adam(0.1))
    state = opt.init({"a": jnp.ones(3)})
    params = {"a": jnp.ones(3), "b": jnp.ones(2)}
    with pytest.raises(ValueError, match="2 params leaves|1 params leaves"):
        opt.update(params, state, params)


def nan_schedule(params, every=3):
    """Gradients with a NaN (and, once, an inf) on every ``every``-th step."""
    def grads(t, p):
        g = grad(p)
        if t % every == every - 1:
            bad = jnp.inf if t == every - 1 else jnp.nan
            g = dict(g, scalar=jnp.asarray(bad, g["scalar"].dtype))
        return g
    return grads


def test_skip_nonfinite_matches_optax_apply_if_finite():
    params = mixed_tree()
    grads = nan_schedule(params)
    ours = jgd.skip_nonfinite(jgd.adam(0.1))
    theirs = optax.apply_if_finite(optax.adam(0.1), max_consecutive_errors=1000)

    def loop(opt, apply, t_grads):
        @jax.jit
        def step(p, s, g):
            u, s = opt.update(g, s, p)
            return apply(p, u), s

        p, s = params, opt.init(params)
        for t in range(12):
            p, s = step(p, s, t_grads(t, p))
        return p, s

    with oracle():
        p_ref, s_ref = loop(theirs, optax.apply_updates, grads)
    p, s = loop(ours, jgd.apply_updates, grads)
    assert_trees_close(p, p_ref, rtol=1e-5, atol=1e-6)
    assert int(s.skipped) == int(s_ref.total_notfinite) == 4
    assert int(s.inner.count) == 8


def test_skip_nonfinite_checks_the_loss_too():
    params = mixed_tree()
    opt = jgd.skip_nonfinite(jgd.subgradient(1.0, rule="polyak", f_star=0.0))
    state = opt.init(params)
    updates, state = opt.update(grad(params), state, params, value=jnp.float32(jnp.nan))
    assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))
    assert int(state.skipped) == 1


def test_skip_nonfinite_with_bf16_params_and_f32_grads_under_jit():
    # optax #377 / #1038: a cond/where over states whose dtypes change broke here.
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), mixed_tree())
    opt = jgd.skip_nonfinite(jgd.adam(0.1))

    @jax.jit
    def step(p, s, poison):
        g = jax.tree.map(lambda x: x.astype(jnp.float32), grad(p))
        g = dict(g, scalar=jnp.where(poison, jnp.float32(jnp.nan), g["scalar"]))
        u, s = opt.update(g, s, p)
        return jgd.apply_updates(p, u), s

    p, s = params, opt.init(params)
    dtypes = jax.tree.map(jnp.result_type, s)
    for t in range(6):
        p, s = step(p, s, jnp.asarray(t % 2 == 1))
        assert jax.tree.map(jnp.result_type, s) == dtypes
    assert int(s.skipped) == 3 and int(s.inner.count) == 3
    assert all(x.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(p))


# --------------------------------------------------------------------------- boundary errors


@pytest.mark.parametrize("name", FACTORIES)
def test_structure_mismatch_names_both_trees(name):
    opt = FACTORIES[name][0](0.1)
    params = {"a": jnp.ones(3), "b": jnp.ones(2)}
    state = opt.init(params)
    value = jnp.float32(1.0)
    with pytest.raises(ValueError, match="tree structure") as info:
        opt.update({"a": jnp.ones(3)}, state, params, value=value)
    assert "PyTreeDef({'a': *})" in str(info.value) and "'b'" in str(info.value)


@pytest.mark.parametrize(
    "name", [n for n in FACTORIES if n not in {"sgd", "clip", "add_decayed_weights"} and not n.startswith("subgradient")]
)
def test_a_state_for_other_params_is_a_clear_error(name):
    # sgd, clip, weight decay and the subgradient rules keep no per-leaf state: any
    # state fits them.
    opt = FACTORIES[name][0](0.1)
    state = opt.init({"x": jnp.ones(3)})
    params = {"a": jnp.ones(3), "b": jnp.ones(2)}
    with pytest.raises(ValueError, match="state|params leaves"):
        opt.update(params, state, params, value=jnp.float32(1.0))


@pytest.mark.parametrize("name", FACTORIES)
def test_a_string_leaf_is_a_type_error_naming_it(name):
    opt = FACTORIES[name][0](0.1)
    with pytest.raises(TypeError, match=r"params\['b'\]"):
        opt.init({"a": jnp.ones(2), "b": "oops"})
    state = opt.init({"a": jnp.ones(2), "b": jnp.ones(1)})
    with pytest.raises(TypeError, match=r"updates\['b'\]"):
        opt.update({"a": jnp.ones(2), "b": "oops"}, state, {"a": jnp.ones(2), "b": jnp.ones(1)})


def test_a_state_of_another_optimizer_is_a_type_error_naming_it():
    params = {"a": jnp.ones(3)}
    with pytest.raises(TypeError, match="MomentumState.*init"):
        jgd.adam(0.1).update(params, jgd.momentum(0.1).init(params), params)


def test_a_list_of_floats_is_fine():
    opt = jgd.momentum(0.1)
    params = [1.0, 2.0]
    updates, _ = opt.update([0.5, 0.5], opt.init(params), params)
    np.testing.assert_allclose(np.asarray(updates, np.float32), [-0.05, -0.05])


def test_skip_nonfinite_and_flat_reject_non_optimizers():
    with pytest.raises(TypeError, match="opt"):
        jgd.skip_nonfinite(0.1)
    with pytest.raises(TypeError, match="opt"):
        jgd.flat("adam")


# --------------------------------------------------------------------------- flat params in minimize and sweep


def mixed_batch_loss(params, batch):
    X, y = batch
    w = jnp.concatenate([params["dense"]["w"].reshape(-1), params["stack"][0].reshape(-1)])[:16]
    return jnp.mean(jnp.square(X @ w - y)) + quadratic_loss(params)


def regression_data():
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.normal(size=(64, 16)), jnp.float32)
    return X, X @ jnp.asarray(rng.normal(size=16), jnp.float32)


def test_minimize_keeps_flat_params_throughout_and_equals_the_rule():
    params, data = mixed_tree(), regression_data()
    kwargs = dict(steps=60, data=data, batch_size=16, key=jax.random.key(1))
    plain = jgd.minimize(mixed_batch_loss, params, jgd.adam(0.02), **kwargs)
    flat = jgd.minimize(mixed_batch_loss, params, jgd.flat(jgd.adam(0.02)), **kwargs)
    assert_trees_close((flat.params, flat.best_params), (plain.params, plain.best_params), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(flat.losses, plain.losses, rtol=1e-5)
    assert isinstance(flat.state.opt_state, importlib.import_module("jgd.flat").FlatState)
    assert set(flat.state.opt_state.inner.mu) == {"float32"}  # one buffer for the whole tree

    # another learning rate reuses the program; resuming is bit exact
    before = importlib.import_module("jgd._drivers").to_the_end._cache_size()
    jgd.minimize(mixed_batch_loss, params, jgd.flat(jgd.adam(0.05)), **kwargs)
    assert importlib.import_module("jgd._drivers").to_the_end._cache_size() == before
    half = dict(kwargs, steps=30)
    first = jgd.minimize(mixed_batch_loss, params, jgd.flat(jgd.adam(0.02)), **half)
    second = jgd.minimize(mixed_batch_loss, first.params, jgd.flat(jgd.adam(0.02)),
                          **dict(half, key=first.key), init_state=first.state)
    for a, e in zip(jax.tree.leaves(second.params), jax.tree.leaves(flat.params)):
        np.testing.assert_array_equal(a, e)


def test_sweep_with_a_flat_factory_equals_the_plain_sweep():
    params, data = mixed_tree(), regression_data()
    grid = {"learning_rate": [0.01, 0.05], "beta": [0.0, 0.9]}
    kwargs = dict(steps=40, data=data, batch_size=16, key=jax.random.key(2), seeds=2)
    plain = jgd.sweep(mixed_batch_loss, params, jgd.momentum, grid, **kwargs)
    flat = jgd.sweep(mixed_batch_loss, params, lambda learning_rate, beta: jgd.flat(jgd.momentum(learning_rate, beta)), grid, **kwargs)
    np.testing.assert_allclose(flat.losses, plain.losses, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_optimizers_pickle_and_deepcopy_to_identical_updates(name):
    """A round trip through pickle or copy.deepcopy gives an optimizer whose updates equal
    the original's, bit for bit, over a few steps (the oracle: the original optimizer)."""
    import copy
    import pickle

    make, _ = FACTORIES[name]
    opt = make(0.05)
    params = mixed_tree()
    grads = jax.tree.map(lambda x: jnp.cos(x) * 0.5, params)
    for other in (pickle.loads(pickle.dumps(opt)), copy.deepcopy(opt)):
        state, other_state = opt.init(params), other.init(params)
        for _ in range(3):
            updates, state = opt.update(grads, state, params, value=jnp.float32(1.0))
            other_updates, other_state = other.update(grads, other_state, params, value=jnp.float32(1.0))
            for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(other_updates)):
                np.testing.assert_array_equal(a, b)


def _loss_in_dtype(params):
    """quadratic_loss's objective in the params' own dtype (float64 here)."""
    return sum(0.5 * (1.0 + 0.5 * i) * jnp.sum((x - 0.5) ** 2) for i, x in enumerate(jax.tree.leaves(params)))


def _after_three_updates(opt, params):
    state = opt.init(params)
    for _ in range(3):
        loss, g = jax.value_and_grad(_loss_in_dtype)(params)
        updates, state = opt.update(g, state, params, value=loss)
        params = jgd.apply_updates(params, updates)
    return _loss_in_dtype(params)


@pytest.mark.parametrize("name", FACTORIES)
def test_gradient_with_respect_to_the_optimizer_has_each_hyperparameter_once(name, x64):
    make = FACTORIES[name][0]
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), mixed_tree())
    opt = make(0.1)
    grads = jax.grad(_after_three_updates)(opt, params)
    assert jax.tree.structure(grads) == jax.tree.structure(opt)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(opt)[0]]
    assert len(set(paths)) == len(paths)
    # The learning rate is one leaf, and its entry is the whole derivative with respect to
    # the factory's argument (a second copy would leave it a partial derivative).
    where = [i for i, p in enumerate(paths) if p.endswith(".learning_rate")]
    assert len(where) == 1, paths
    whole = jax.grad(lambda lr: _after_three_updates(make(lr), params))(0.1)
    h = 1e-6
    central = (_after_three_updates(make(0.1 + h), params) - _after_three_updates(make(0.1 - h), params)) / (2 * h)
    np.testing.assert_allclose(jax.tree.leaves(grads)[where[0]], whole, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(whole, central, rtol=1e-4, atol=1e-8)


def test_adam_decay_rate_gradients_equal_finite_differences(x64):
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), mixed_tree())
    grads = jax.grad(_after_three_updates)(jgd.adam(0.1, b1=0.8, b2=0.9), params)
    h = 1e-6
    for name, at in (("b1", 0.8), ("b2", 0.9)):
        f = lambda v: _after_three_updates(jgd.adam(0.1, **{"b1": 0.8, "b2": 0.9, name: v}), params)  # noqa: B023, E731
        np.testing.assert_allclose(getattr(grads.hyperparams, name), (f(at + h) - f(at - h)) / (2 * h), rtol=1e-5)


def test_vmap_over_an_optimizer_needs_one_axis_per_hyperparameter():
    lrs = jnp.array([0.01, 0.1])
    opts = jax.vmap(lambda lr: jgd.adam(lr))(lrs)  # built inside vmap: every leaf batched or not
    axes = jax.tree.map(lambda x: 0 if jnp.ndim(x) else None, opts)
    params = mixed_tree()
    batched = jax.vmap(lambda opt: steps(opt, params, 5)[0], in_axes=(axes,))(opts)
    for i, lr in enumerate(lrs):
        # vmap's outputs are arrays: every leaf of opts is float32 (1 - b2 is taken in float32)
        single = jgd.adam(lr, b1=jnp.float32(0.9), b2=jnp.float32(0.999), eps=jnp.float32(1e-8), eps_root=jnp.float32(0))
        assert_trees_close(jax.tree.map(lambda x: x[i], batched), steps(single, params, 5)[0])

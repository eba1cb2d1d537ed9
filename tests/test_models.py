"""Models from flax.nnx and equinox through minimize: params split off the model, batch
norm statistics through model_state (against their closed form under full-batch GD on a
fixed input), dropout through with_key (same key, same run; other key, other run),
nnx.Optimizer with a jgd rule against the same optimizer with the optax rule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from problems import assert_trees_close, diabetes, oracle

import jgd

X, Y = diabetes()
X = X[:128]
Y = Y[:128]
D = X.shape[1]


# --------------------------------------------------------------------------- flax.nnx

nnx = pytest.importorskip("flax.nnx")


class NnxNet(nnx.Module):
    def __init__(self, rngs, rate=0.2):
        self.bn = nnx.BatchNorm(D, momentum=0.9, rngs=rngs)
        self.dropout = nnx.Dropout(rate)
        self.linear = nnx.Linear(D, 1, rngs=rngs)

    def __call__(self, x, key=None):
        h = self.bn(x)
        h = self.dropout(h, rngs=key, deterministic=key is None)
        return self.linear(h)[:, 0]


def nnx_problem(rate=0.2):
    graphdef, params, rest = nnx.split(NnxNet(nnx.Rngs(0), rate), nnx.Param, ...)

    def loss(params, rest, batch, key):
        model = nnx.merge(graphdef, params, rest, copy=True)  # flax 0.12: copy inside a traced loss
        r = model(batch[0], key) - batch[1]
        _, _, new_rest = nnx.split(model, nnx.Param, ...)
        return jnp.mean(r * r), new_rest

    return graphdef, params, rest, loss


def test_nnx_batch_norm_statistics_follow_their_closed_form():
    graphdef, params, rest, loss = nnx_problem()
    r = jgd.minimize(loss, params, jgd.adam(0.01), steps=25, data=(X, Y), model_state=rest, with_key=True)
    model = nnx.merge(graphdef, r.params, r.model_state)
    expected = (1 - 0.9 ** 25) * X.mean(0)  # running mean starts at 0, the input is fixed
    np.testing.assert_allclose(model.bn.mean[...], expected, rtol=1e-5, atol=1e-7)
    assert float(r.losses[-1]) < float(r.losses[0])


def test_nnx_dropout_keys_make_runs_reproducible_and_distinct():
    _, params, rest, loss = nnx_problem()
    kwargs = dict(steps=20, data=(X, Y), batch_size=32, model_state=rest, with_key=True)
    a = jgd.minimize(loss, params, jgd.adam(0.01), key=jax.random.key(0), **kwargs)
    b = jgd.minimize(loss, params, jgd.adam(0.01), key=jax.random.key(0), **kwargs)
    np.testing.assert_array_equal(a.losses, b.losses)
    # The same batches (the sampler's key is the same) with other dropout masks differ: run
    # without dropout, the two runs with dropout must both differ from it.
    _, params0, rest0, loss0 = nnx_problem(rate=0.0)
    none = jgd.minimize(loss0, params0, jgd.adam(0.01), key=jax.random.key(0), **{**kwargs, "model_state": rest0})
    assert not np.allclose(a.losses, none.losses)


def test_nnx_optimizer_with_a_jgd_rule_equals_the_optax_rule():
    def run(tx):
        model = NnxNet(nnx.Rngs(0), rate=0.0)
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

        @nnx.jit
        def step(model, optimizer, x, y):
            grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
            optimizer.update(model, grads)

        for _ in range(10):
            step(model, optimizer, X, Y)
        return nnx.state(model, nnx.Param)

    with oracle():
        expected = run(optax.adam(0.01))
        actual = run(jgd.adam(0.01))
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)


def test_flax_own_nnx_optimizer_with_a_jgd_rule_compiles_once():
    """flax's own ``nnx.Optimizer`` holding a jgd rule: the optimizer is nnx data (jgd
    registers its type with nnx), so ``nnx.jit`` traces its numbers: one trace for two
    learning rates, each with a fresh model; numbers equal nnx.Optimizer with optax.adam.
    The earlier recipe (``optimizer.tx = nnx.data(...)``) still works."""
    class Small(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(D, 1, rngs=rngs)

    traces = {"n": 0}

    def train(model, optimizer):
        optimizer.update(model, nnx.grad(lambda m: jnp.mean((m.linear(X)[:, 0] - Y) ** 2))(model))

    @nnx.jit
    def step(model, optimizer):
        traces["n"] += 1
        train(model, optimizer)

    def run(make_tx, replace=None, steps=3):
        traces["n"] = 0
        params = []
        for lr in (1e-3, 2e-3):
            model = Small(nnx.Rngs(0))
            optimizer = nnx.Optimizer(model, make_tx(lr), wrt=nnx.Param)
            if replace:
                optimizer.tx = replace(lr)
            for _ in range(steps):
                step(model, optimizer)
            params.append(nnx.state(model, nnx.Param))
        return traces["n"], params

    traces_jgd, ours = run(lambda lr: jgd.adam(lr))
    assert traces_jgd == 1
    with oracle():
        _, theirs = run(lambda lr: optax.adam(lr), steps=3)
    for a, b in zip(ours, theirs):
        assert_trees_close(a, b, rtol=1e-4, atol=1e-6)  # traced: float32 1 - b2
    assert run(lambda lr: jgd.adam(1e-3), lambda lr: nnx.data(jgd.adam(jnp.asarray(lr))))[0] <= 1


# --------------------------------------------------------------------------- equinox

eqx = pytest.importorskip("equinox")


class EqxNet(eqx.Module):
    bn: eqx.nn.BatchNorm
    dropout: eqx.nn.Dropout
    linear: eqx.nn.Linear

    def __init__(self, key, rate=0.2):
        self.bn = eqx.nn.BatchNorm(D, axis_name="batch", momentum=0.9, mode="batch")
        self.dropout = eqx.nn.Dropout(rate)
        self.linear = eqx.nn.Linear(D, 1, key=key)

    def __call__(self, x, state, key):
        h, state = self.bn(x, state)
        return self.linear(self.dropout(h, key=key))[0], state


def eqx_problem(rate=0.2):
    model, state = eqx.nn.make_with_state(EqxNet)(jax.random.key(0), rate)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(params, state, batch, key):
        model = eqx.combine(params, static)
        keys = jax.random.split(key, batch[0].shape[0])
        pred, state = jax.vmap(model, axis_name="batch", in_axes=(0, None, 0), out_axes=(0, None))(
            batch[0], state, keys)
        return jnp.mean((pred - batch[1]) ** 2), state

    return params, static, state, loss


def test_equinox_state_and_dropout_through_minimize():
    params, static, state, loss = eqx_problem()
    r = jgd.minimize(loss, params, jgd.adam(0.01), steps=25, data=(X, Y), model_state=state, with_key=True)
    model = eqx.combine(r.params, static)
    # equinox's "batch" mode keeps an exponential average from zero and a step counter:
    # the input is fixed, so after T steps the average is (1 − 0.9^T)·mean.
    hidden_mean, _ = r.model_state.get(model.bn.batch_state_index)
    np.testing.assert_allclose(hidden_mean, (1 - 0.9 ** 25) * X.mean(0), rtol=1e-5, atol=1e-7)
    assert int(r.model_state.get(model.bn.batch_counter)) == 25
    again = jgd.minimize(loss, params, jgd.adam(0.01), steps=25, data=(X, Y), model_state=state, with_key=True)
    np.testing.assert_array_equal(r.losses, again.losses)
    other = jgd.minimize(loss, params, jgd.adam(0.01), steps=25, data=(X, Y), model_state=state, with_key=True,
                         key=jax.random.key(9))
    assert not np.array_equal(r.losses, other.losses)


def test_equinox_filter_jit_compiles_once_with_python_float_hyperparameters():
    """``eqx.filter_jit`` keeps non-arrays static, so it would retrace per Python-float value;
    a jgd optimizer's floats flatten to weakly typed JAX scalars: one trace for three
    learning rates, the numbers of ``jax.jit`` (the same traced program), and eagerly the
    numbers stay the Python floats given (optax's eager update to float32 rounding)."""
    traces = {"n": 0}

    def update(opt, w, state):
        updates, state = opt.update(jax.grad(lambda w: jnp.sum((X @ w - Y) ** 2))(w), state, w)
        return jgd.apply_updates(w, updates), state

    @eqx.filter_jit
    def step(opt, w, state):
        traces["n"] += 1
        return update(opt, w, state)

    w = jnp.zeros(D)
    for lr in (1e-3, 2e-3, 5e-3):
        opt = jgd.adam(lr)
        ours = step(opt, w, opt.init(w))
        with oracle():
            assert_trees_close(ours, jax.jit(update)(opt, w, opt.init(w)), rtol=0, atol=0)
            eager = update(opt, w, opt.init(w))[0]
            g = jax.grad(lambda w: jnp.sum((X @ w - Y) ** 2))(w)
            ref = optax.adam(lr)
            u, _ = ref.update(g, ref.init(w), w)
        np.testing.assert_allclose(eager, optax.apply_updates(w, u), rtol=1e-6)
    assert traces["n"] == 1
    # a filter's partition and combine give the floats back as they were
    dynamic, static = eqx.partition(jgd.adam(3e-4), eqx.is_array)
    again = eqx.combine(dynamic, static)
    assert type(again.hyperparams.learning_rate) is float and again.hyperparams.learning_rate == 3e-4


def test_python_float_leaves_are_weakly_typed_scalars_of_the_default_float():
    """What a float flattens to is what ``jit`` makes of it: weakly typed, float32 (float64
    under x64), so a bfloat16 model's updates stay bfloat16 under filter_jit."""
    leaf = jax.tree.leaves(jgd.sgd(0.1))[0]
    assert leaf.dtype == jnp.float32 and leaf.weak_type and leaf.shape == ()
    with jax.enable_x64(True):
        leaf64 = jax.tree.leaves(jgd.sgd(0.1))[0]
        assert leaf64.dtype == jnp.float64 and leaf64.weak_type
    w = jnp.ones(3, jnp.bfloat16)
    opt = jgd.adam(1e-2)
    updates, _ = eqx.filter_jit(lambda opt, g, s: opt.update(g, s))(opt, w, opt.init(w))
    assert updates.dtype == jnp.bfloat16


def test_a_whole_equinox_model_as_params_says_how_to_split_it():
    model, _ = eqx.nn.make_with_state(EqxNet)(jax.random.key(0))
    with pytest.raises(TypeError, match=r"eqx\.partition\(model, eqx\.is_inexact_array\)"):
        jgd.minimize(lambda m: jnp.sum(m.linear.weight), model, jgd.sgd(0.1), steps=2)


def test_sweep_takes_equinox_params_from_partition_not_as_an_init_function():
    # an eqx.Module is callable; params from eqx.partition hold arrays, so they are params
    model = eqx.nn.MLP(D, 1, 8, 1, key=jax.random.key(0))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    assert callable(params)

    def loss(params, batch):
        pred = jax.vmap(eqx.combine(params, static))(batch[0])[:, 0]
        return jnp.mean((pred - batch[1]) ** 2)

    kwargs = dict(steps=20, data=(X, Y), batch_size=8)
    s = jgd.sweep(loss, params, jgd.adam, grid={"learning_rate": [1e-3, 1e-2]}, key=jax.random.key(4), **kwargs)
    seed_key = jax.random.split(jax.random.key(4), 1)[0]
    for i, lr in enumerate((1e-3, 1e-2)):
        r = jgd.minimize(loss, params, jgd.adam(jnp.float32(lr)), key=seed_key, **kwargs)
        np.testing.assert_allclose(s.losses[i, 0], r.losses, rtol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i, 0], b, rtol=1e-5, atol=1e-7), s.params, r.params)

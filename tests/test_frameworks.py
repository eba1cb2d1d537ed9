"""Compile once in the code people write (DESIGN §6b): flax's TrainState, nnx.Optimizer, the
idioms of real training programs, and jgd.debug.count_compiles. Oracles: the same programs
with flax's own TrainState / nnx.Optimizer and optax's rules; compile counts from JAX's
compile events, trace counts from a counter inside the traced function."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from problems import TraceCounter, assert_trees_close, oracle

import jgd

nn = pytest.importorskip("flax.linen")
nnx = pytest.importorskip("flax.nnx")
from flax.training import train_state  # noqa: E402

import jgd.flax  # noqa: E402
import jgd.nnx  # noqa: E402

LRS = (1e-3, 3e-3, 1e-2)
RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(32, 5)), jnp.float32)
Y = jnp.asarray(RNG.normal(size=(32, 1)), jnp.float32)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(nn.relu(nn.Dense(8)(x)))


MODEL = MLP()
PARAMS = MODEL.init(jax.random.key(0), X)


def mse(params, apply_fn):
    return jnp.mean((apply_fn(params, X) - Y) ** 2)


def train_step(state):
    grads = jax.grad(mse)(state.params, state.apply_fn)
    return state.apply_gradients(grads=grads)


def _train(step, make_state, steps=20):
    state = make_state()
    for _ in range(steps):
        state = step(state)
    return state.params


@pytest.mark.parametrize("transform", ["jit", "pmap", "shard_map"])
def test_flax_train_state_compiles_once_for_three_learning_rates(transform):
    """jgd.flax.TrainState under jit / pmap (one device) / shard_map: one compilation across
    three learning rates; flax's own TrainState recompiles per value. Numbers equal the flax
    TrainState with optax.adam (traced float32 complements: 1e-5)."""
    counter = TraceCounter(train_step)
    if transform == "jit":
        step = jax.jit(counter)
        prepare, finish = (lambda s: s), (lambda p: p)
    elif transform == "pmap":
        step = jax.pmap(counter)
        prepare, finish = (lambda s: jax.tree.map(lambda x: jnp.asarray(x)[None], s)), (
            lambda p: jax.tree.map(lambda x: x[0], p))
    else:
        mesh = jax.make_mesh((1,), ("data",))
        step = jax.jit(jax.shard_map(counter, mesh=mesh, in_specs=jax.P(), out_specs=jax.P()))
        prepare, finish = (lambda s: s), (lambda p: p)
    traces_per_lr = []
    for lr in LRS:
        ours = finish(_train(lambda s: step(s), lambda: prepare(
            jgd.flax.TrainState.create(apply_fn=MODEL.apply, params=PARAMS, tx=jgd.adam(lr)))))
        with oracle():
            theirs = _train(jax.jit(train_step), lambda: train_state.TrainState.create(
                apply_fn=MODEL.apply, params=PARAMS, tx=optax.adam(lr)))
        assert_trees_close(ours, theirs, rtol=1e-4, atol=1e-5)  # traced: float32 1 - b2
        traces_per_lr.append(counter.count)
    # pmap and shard_map trace twice for the first learning rate (the fresh state and the one
    # they return have the same dtypes and weak types; the cause of the second trace is not
    # known yet); no new learning rate traces again
    assert traces_per_lr == [traces_per_lr[0]] * 3 and traces_per_lr[0] <= (1 if transform == "jit" else 2)


def test_flax_own_train_state_recompiles_per_learning_rate():
    """The contrast the adapter removes (so the test above can fail)."""
    counter = TraceCounter(train_step)
    step = jax.jit(counter)
    with oracle():
        for lr in LRS:
            step(train_state.TrainState.create(apply_fn=MODEL.apply, params=PARAMS, tx=jgd.adam(lr)))
    assert counter.count == 3


def test_flax_train_state_holds_an_optax_closure_too():
    state = jgd.flax.TrainState.create(apply_fn=MODEL.apply, params=PARAMS, tx=optax.sgd(0.1))
    ours = _train(jax.jit(train_step), lambda: state, steps=3)
    with oracle():
        theirs = _train(jax.jit(train_step), lambda: train_state.TrainState.create(
            apply_fn=MODEL.apply, params=PARAMS, tx=optax.sgd(0.1)), steps=3)
    assert_trees_close(ours, theirs, rtol=1e-6, atol=1e-7)


class Small(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(5, 8, rngs=rngs)
        self.out = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.hidden(x)))


def _nnx_run(make_optimizer, step, steps=20):
    model = Small(nnx.Rngs(0))  # a fresh model object per run, as a sweep script makes
    optimizer = make_optimizer(model)
    for _ in range(steps):
        step(model, optimizer)
    return nnx.state(model, nnx.Param)


def test_nnx_optimizer_compiles_once_with_a_fresh_model_per_run():
    """jgd.nnx.Optimizer under nnx.jit: one trace across three learning rates, each with a new
    model; numbers equal nnx.Optimizer with optax.adamw (traced float32 complements)."""
    traces = []

    @nnx.jit
    def step(model, optimizer):
        traces.append(1)
        grads = nnx.grad(lambda m: jnp.mean((m(X) - Y) ** 2))(model)
        optimizer.update(model, grads)

    @nnx.jit
    def reference_step(model, optimizer):
        grads = nnx.grad(lambda m: jnp.mean((m(X) - Y) ** 2))(model)
        optimizer.update(model, grads)

    for lr in LRS:
        ours = _nnx_run(lambda m: jgd.nnx.Optimizer(m, jgd.adamw(lr, weight_decay=1e-2), wrt=nnx.Param), step)
        with oracle():
            theirs = _nnx_run(lambda m: nnx.Optimizer(m, optax.adamw(lr, weight_decay=1e-2), wrt=nnx.Param),
                              reference_step)
        assert_trees_close(ours, theirs, rtol=1e-4, atol=1e-5)  # traced: float32 1 - b2
    assert len(traces) == 1


def test_nnx_optimizer_takes_lifted_rules_and_optax_closures():
    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(lambda m: jnp.mean((m(X) - Y) ** 2))(model)
        optimizer.update(model, grads)

    for ours, theirs in [(jgd.lion(1e-3), optax.lion(1e-3)), (optax.sgd(0.05), optax.sgd(0.05))]:
        with oracle():
            a = _nnx_run(lambda m: jgd.nnx.Optimizer(m, ours, wrt=nnx.Param), step, steps=5)
            b = _nnx_run(lambda m: nnx.Optimizer(m, theirs, wrt=nnx.Param), step, steps=5)
        assert_trees_close(a, b, rtol=1e-5, atol=1e-6)


def decay_mask(params, skip_biases):
    return jax.tree.map(lambda x: not (skip_biases and x.ndim == 1), params)


def test_gpt_style_masked_adamw_with_warmup_cosine_compiles_once():
    """A GPT trainer's optimizer: adamw with a weight-decay mask built as a functools.partial
    per call and a warmup-cosine schedule, rebuilt per learning rate inside the jitted step's
    arguments: one compilation (the partials are equal by value), numbers = optax's."""
    params = PARAMS

    @jax.jit
    def step(opt, params, state):
        grads = jax.grad(mse)(params, MODEL.apply)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    def make(ns, lr):
        schedule = (jgd.schedules.warmup_cosine_decay_schedule if ns is jgd else optax.warmup_cosine_decay_schedule)(
            0.0, lr, 5, 50)
        return ns.chain(ns.clip_by_global_norm(1.0),
                        ns.adamw(schedule, weight_decay=0.1, mask=functools.partial(decay_mask, skip_biases=True)))

    with jgd.debug.count_compiles() as compiles:
        for lr in LRS:
            opt, p = make(jgd, lr), params
            state = opt.init(p)
            for _ in range(20):
                p, state = step(opt, p, state)
            ref = make(optax, lr)
            with oracle():
                q, ref_state = params, ref.init(params)
                for _ in range(20):
                    grads = jax.grad(mse)(q, MODEL.apply)
                    updates, ref_state = ref.update(grads, ref_state, q)
                    q = optax.apply_updates(q, updates)
            assert_trees_close(p, q, rtol=1e-4, atol=1e-5)  # traced: float32 1 - b2
    assert compiles.of("step") == 1


def test_count_compiles_counts_what_recompiles():
    """A closure over the optimizer recompiles per value (3), the optimizer as an argument
    does not (1): count_compiles tells them apart."""
    params = jnp.ones(4)
    with jgd.debug.count_compiles() as closed:
        for lr in LRS:
            opt = jgd.adam(lr)

            @jax.jit
            def closed_step(g, s, opt=opt):
                return opt.update(g, s)

            closed_step(params, opt.init(params))
    with jgd.debug.count_compiles() as passed:
        step = jax.jit(lambda opt, g, s: opt.update(g, s))
        for lr in LRS:
            opt = jgd.adam(lr)
            step(opt, params, opt.init(params))
    assert closed.of("closed_step") == 3
    assert passed.of("<lambda>") == 1
    assert int(passed) == passed.count >= 1


def test_init_on_a_model_with_non_array_leaves_says_how_to_split():
    eqx = pytest.importorskip("equinox")
    model = eqx.nn.MLP(2, 2, 4, 1, key=jax.random.key(0))
    with pytest.raises(TypeError, match=r"params\.activation must be an array.*eqx\.partition.*nnx\.split"):
        jgd.adam(1e-3).init(model)
    params, _ = eqx.partition(model, eqx.is_inexact_array)
    opt = jgd.adam(1e-3)
    with pytest.raises(TypeError, match=r"updates\.activation must be an array.*eqx\.partition"):
        opt.update(model, opt.init(params), params)


def test_donated_state_with_equal_float_hyperparameters_steps_again_and_again():
    """A train step that donates its state (flax's examples do) donates the optimizer's
    float leaves too: each optimizer holds its own arrays (two equal floats are two
    buffers, never one donated twice), remade once donated; numbers as without donation."""
    tx = jgd.chain(jgd.clip_by_global_norm(1.0), jgd.adamw(1e-3, b1=0.9, weight_decay=0.9))
    donating = jax.jit(train_step, donate_argnums=0)
    plain = jax.jit(train_step)
    make = lambda: jgd.flax.TrainState.create(apply_fn=MODEL.apply, params=jax.tree.map(jnp.copy, PARAMS), tx=tx)
    state, reference = make(), make()
    for _ in range(3):
        state, reference = donating(state), plain(reference)
    again = donating(make())  # the same optimizer object, its first arrays donated above
    assert_trees_close(state.params, reference.params, rtol=0, atol=0)
    assert_trees_close(again.params, plain(make()).params, rtol=0, atol=0)

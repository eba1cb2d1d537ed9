"""The smooth and adaptive rules against optax, torch.optim's formulas and optax's own
acceptance problems; jit/vmap over hyperparameters; dtypes; schedules; errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from problems import (
    ACCEPTANCE_LR,
    NUMERIC_HPARAMS,
    SMOOTH,
    TraceCounter,
    assert_trees_close,
    mixed_tree,
    oracle,
    parabola,
    quadratic_grad_numpy,
    quadratic_loss,
    rosenbrock,
    run,
)

import jgd

grad = jax.grad(quadratic_loss)
LR = 0.01



@pytest.mark.parametrize("name", SMOOTH)
@pytest.mark.parametrize("defaults", [True, False], ids=["default", "custom"])
def test_matches_optax_over_100_steps(name, defaults):
    make, make_optax, custom = SMOOTH[name]
    kwargs = {} if defaults else custom
    params = mixed_tree()
    ours = run(make(LR, **kwargs), params, grad, 100)
    with oracle():
        theirs = run(make_optax(LR, **kwargs), params, grad, 100)
    assert_trees_close(ours[0], theirs[0])


# torch.optim's update formulas, written out in float64 numpy (torch is not a test
# dependency): SGD with momentum/dampening=0 and Adam (torch/optim/sgd.py, adam.py).
def torch_sgd(params, lr, momentum, nesterov, steps, grad_np):
    params = [p.copy() for p in params]
    bufs = [None] * len(params)
    for _ in range(steps):
        for i, g in enumerate(grad_np(params)):
            bufs[i] = g.copy() if bufs[i] is None else momentum * bufs[i] + g
            d = g + momentum * bufs[i] if nesterov else bufs[i]
            params[i] = params[i] - lr * d
    return params


def torch_adam(params, lr, b1, b2, eps, steps, grad_np):
    params = [p.copy() for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t in range(1, steps + 1):
        for i, g in enumerate(grad_np(params)):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            denom = np.sqrt(v[i]) / np.sqrt(1 - b2**t) + eps
            params[i] = params[i] - (lr / (1 - b1**t)) * m[i] / denom
    return params


@pytest.mark.parametrize(
    "name, make, oracle_fn",
    [
        ("momentum", lambda: jgd.momentum(LR, 0.8), lambda p: torch_sgd(p, LR, 0.8, False, 100, quadratic_grad_numpy)),
        ("nesterov", lambda: jgd.nesterov(LR, 0.8), lambda p: torch_sgd(p, LR, 0.8, True, 100, quadratic_grad_numpy)),
        ("adam", lambda: jgd.adam(LR, 0.85, 0.99, 1e-6), lambda p: torch_adam(p, LR, 0.85, 0.99, 1e-6, 100, quadratic_grad_numpy)),
    ],
)
def test_matches_torch_formulas(name, make, oracle_fn):
    params = mixed_tree()
    ours = jax.tree.leaves(run(make(), params, grad, 100)[0])
    expected = oracle_fn([np.asarray(x, np.float64) for x in jax.tree.leaves(params)])
    for a, e in zip(ours, expected):
        np.testing.assert_allclose(np.asarray(a), e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("problem", [parabola, rosenbrock])
@pytest.mark.parametrize("name", SMOOTH)
def test_optax_acceptance_problems(name, problem):
    make = SMOOTH[name][0]
    initial, final, objective = problem()
    params, _ = run(make(ACCEPTANCE_LR[name]), initial, jax.grad(objective), 10_000)
    np.testing.assert_allclose(params, final, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("name", SMOOTH)
def test_one_compile_across_learning_rates(name):
    make = SMOOTH[name][0]
    params = mixed_tree()

    def step(opt, params, state):
        updates, state = opt.update(grad(params), state, params)
        return optax.apply_updates(params, updates), state

    counter = TraceCounter(step)
    jitted = jax.jit(counter)
    for lr in (1e-3, 3e-2, 0.5):
        opt = make(lr)
        jitted(opt, params, opt.init(params))
    assert counter.count == 1


@pytest.mark.parametrize("name", SMOOTH)
def test_vmap_over_every_hyperparameter_equals_separate_runs(name):
    make = SMOOTH[name][0]
    numeric = NUMERIC_HPARAMS[name]
    params = mixed_tree()
    # Three settings, each hyperparameter varied across them.
    settings = [
        {"learning_rate": lr, **{k: v * f for k, v in numeric.items()}}
        for lr, f in [(0.01, 1.0), (0.03, 0.9), (0.1, 0.5)]
    ]
    stacked = {k: jnp.asarray([s[k] for s in settings], jnp.float32) for k in settings[0]}

    def train(hp):
        return run(make(**hp), params, grad, 20, jit=False)[0]

    batched = jax.jit(jax.vmap(train))(stacked)
    for i, hp in enumerate(settings):
        # The same float32 values the batched run sees (1 - b2 is rounded alike).
        single = run(make(**{k: jnp.float32(v) for k, v in hp.items()}), params, grad, 20)[0]
        assert_trees_close(jax.tree.map(lambda x: x[i], batched), single)


def test_stacked_optimizers_vmap():
    opts = [jgd.adam(lr) for lr in (1e-3, 1e-2, 1e-1)]
    stacked = jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x, jnp.float32) for x in xs]), *opts)
    params = mixed_tree()
    batched = jax.vmap(lambda opt: run(opt, params, grad, 10, jit=False)[0])(stacked)
    for i, opt in enumerate(opts):
        # the same float32 leaves the batched run sees (1 - b2 is taken in float32 alike)
        single = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), opt)
        assert_trees_close(jax.tree.map(lambda x: x[i], batched), run(single, params, grad, 10)[0], rtol=1e-6, atol=1e-7)


def test_hyperparameters_are_the_leaves():
    opt = jgd.adamw(1e-3, b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.01)
    # Each hyperparameter once, in the factory's order of names; no derived leaves (1 - b1).
    assert sorted(jax.tree.leaves(opt)) == sorted([1e-3, 0.8, 0.95, 1e-6, 0.0, 0.01])
    assert isinstance(opt, optax.GradientTransformationExtraArgs)


@pytest.mark.parametrize("name", SMOOTH)
def test_bfloat16_params_keep_bfloat16_state_and_updates(name):
    make = SMOOTH[name][0]
    params = mixed_tree(jnp.bfloat16)
    opt = make(LR)
    state = opt.init(params)
    updates, state = jax.jit(opt.update)(grad(params), state, params)
    for leaf in jax.tree.leaves((updates, state)):
        if leaf.ndim or leaf.dtype != jnp.int32:  # the step count is int32
            assert leaf.dtype == jnp.bfloat16
    # A bf16 run descends like the float32 run: per-step rounding (spacing 2^-7 near 1)
    # forbids comparing iterates, so compare how much of the loss each removes.
    p32 = jax.tree.map(lambda x: x.astype(jnp.float32), params)
    fast = make(0.1)
    loss16 = quadratic_loss(jax.tree.map(lambda x: x.astype(jnp.float32), run(fast, params, grad, 100)[0]))
    loss32 = quadratic_loss(run(fast, p32, grad, 100)[0])
    initial = quadratic_loss(p32)
    assert initial - loss16 >= 0.9 * (initial - loss32)


@pytest.mark.parametrize("name", ["momentum", "adagrad", "rmsprop", "adam"])
def test_state_dtype_raises_bf16_state_to_float32(name):
    make = SMOOTH[name][0]
    params = mixed_tree(jnp.bfloat16)
    opt = make(LR, state_dtype=jnp.float32)
    state = opt.init(params)
    updates, state = opt.update(grad(params), state, params)
    floats = [x for x in jax.tree.leaves(state) if x.dtype != jnp.int32]
    assert floats and all(x.dtype == jnp.float32 for x in floats)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("name", SMOOTH)
def test_float64_under_x64_matches_optax(x64, name):
    make, make_optax, _ = SMOOTH[name]
    params = mixed_tree(jnp.float64)
    ours = run(make(LR), params, grad, 100)
    assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(ours[0]))
    assert all(x.dtype in (jnp.float64, jnp.int32) for x in jax.tree.leaves(ours[1]))
    with oracle():
        theirs = run(make_optax(LR), params, grad, 100)
    assert_trees_close(ours[0], theirs[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "rmsprop"])
def test_optax_schedules(name):
    make, make_optax, _ = SMOOTH[name]
    schedule = optax.exponential_decay(0.1, transition_steps=10, decay_rate=0.5)
    params = mixed_tree()
    ours = run(make(schedule), params, grad, 50)[0]
    with oracle():
        theirs = run(make_optax(schedule), params, grad, 50)[0]
    assert_trees_close(ours, theirs)


def test_traced_schedule_partial_sweeps():
    # A schedule written as a jax Partial keeps its own constants as leaves.
    def warmup(peak, count):
        return peak * jnp.minimum(1.0, (count + 1).astype(jnp.float32) / 10.0)

    params = mixed_tree()
    opt = jgd.sgd(jax.tree_util.Partial(warmup, 0.1))
    with oracle():
        expected = run(optax.sgd(lambda c: warmup(0.1, c)), params, grad, 30)[0]
    assert_trees_close(run(opt, params, grad, 30)[0], expected)


def test_chain_with_optax_transforms():
    params = mixed_tree()
    ours = jgd.chain(optax.clip(0.3), jgd.clip_by_global_norm(1.0), jgd.adam(LR))
    mixed = optax.chain(jgd.add_decayed_weights(0.01), jgd.momentum(LR))
    with oracle():
        theirs = run(optax.chain(optax.clip(0.3), optax.clip_by_global_norm(1.0), optax.adam(LR)), params, grad, 50)[0]
        theirs_mixed = run(optax.chain(optax.add_decayed_weights(0.01), optax.sgd(LR, momentum=0.9)), params, grad, 50)[0]
        mixed_ours = run(mixed, params, grad, 50)[0]
    assert_trees_close(run(ours, params, grad, 50)[0], theirs)
    assert_trees_close(mixed_ours, theirs_mixed)


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (jgd.clip_by_global_norm(0.5), optax.clip_by_global_norm(0.5)),
        (jgd.clip(0.2), optax.clip(0.2)),
        (jgd.add_decayed_weights(0.3), optax.add_decayed_weights(0.3)),
    ],
    ids=["clip_by_global_norm", "clip", "add_decayed_weights"],
)
def test_wrappers_match_optax(ours, theirs):
    params = mixed_tree()
    g = grad(params)
    with oracle():
        expected = theirs.update(g, theirs.init(params), params)[0]
    assert_trees_close(ours.update(g, ours.init(params), params)[0], expected)


def test_chain_compiles_once_across_learning_rates():
    params = mixed_tree()
    counter = TraceCounter(lambda opt, p, s: opt.update(grad(p), s, p))
    jitted = jax.jit(counter)
    for lr, clip in [(1e-3, 1.0), (1e-2, 2.0)]:
        opt = jgd.chain(jgd.clip_by_global_norm(clip), jgd.adamw(lr))
        jitted(opt, params, opt.init(params))
    assert counter.count == 1


@pytest.mark.parametrize("every", [1, 3])
def test_accumulate_equals_one_step_on_the_whole_batch(every):
    # Oracle: the inner optimizer fed the mean gradient directly, and optax.MultiSteps.
    params = mixed_tree()
    micro_grads = [jax.tree.map(lambda x, k=k: x * (k + 1.0) - 0.1 * k, grad(params)) for k in range(every * 4)]
    opt = jgd.accumulate(jgd.adam(LR), every)
    inner = jgd.adam(LR)
    state, p_acc = opt.init(params), params
    inner_state, p_ref = inner.init(params), params
    multi = optax.MultiSteps(optax.adam(LR), every)
    with oracle():
        multi_state, p_multi = multi.init(params), params
    for k, g in enumerate(micro_grads):
        u, state = jax.jit(opt.update)(g, state, p_acc)
        p_acc = optax.apply_updates(p_acc, u)
        with oracle():
            u, multi_state = multi.update(g, multi_state, p_multi)
            p_multi = optax.apply_updates(p_multi, u)
        if (k + 1) % every == 0:
            mean = jax.tree.map(lambda *gs: sum(gs) / every, *micro_grads[k + 1 - every : k + 1])
            u, inner_state = inner.update(mean, inner_state, p_ref)
            p_ref = optax.apply_updates(p_ref, u)
        assert_trees_close(p_acc, p_ref)
    assert_trees_close(p_acc, p_multi)


def _bad(factory, **kwargs):
    return pytest.param(factory, kwargs, id=f"{factory.__name__}-{'-'.join(kwargs)}")


BAD_HYPERPARAMETERS = [
    (jgd.sgd, {"learning_rate": -0.1}, "learning_rate"),
    (jgd.sgd, {"learning_rate": float("nan")}, "learning_rate"),
    (jgd.sgd, {"learning_rate": float("inf")}, "learning_rate"),
    (jgd.momentum, {"learning_rate": 0.1, "beta": 1.0}, "beta"),
    (jgd.momentum, {"learning_rate": 0.1, "beta": -0.1}, "beta"),
    (jgd.nesterov, {"learning_rate": 0.1, "beta": 1.5}, "beta"),
    (jgd.adagrad, {"learning_rate": 0.1, "eps": -1e-3}, "eps"),
    (jgd.adagrad, {"learning_rate": 0.1, "initial_accumulator_value": -1.0}, "initial_accumulator_value"),
    (jgd.rmsprop, {"learning_rate": 0.1, "decay": 1.0}, "decay"),
    (jgd.rmsprop, {"learning_rate": 0.1, "eps": -1.0}, "eps"),
    (jgd.adam, {"learning_rate": 0.1, "b1": 1.0}, "b1"),
    (jgd.adam, {"learning_rate": 0.1, "b2": -0.5}, "b2"),
    (jgd.adam, {"learning_rate": -1e-3}, "learning_rate"),
    (jgd.adamw, {"learning_rate": 0.1, "eps": -1e-8}, "eps"),
    (jgd.adamw, {"learning_rate": 0.1, "weight_decay": -1.0}, "weight_decay"),
    (jgd.clip_by_global_norm, {"max_norm": -1.0}, "max_norm"),
    (jgd.clip, {"max_abs": float("nan")}, "max_abs"),
]


@pytest.mark.parametrize("factory, kwargs, name", BAD_HYPERPARAMETERS)
def test_bad_hyperparameters_raise_value_error_naming_them(factory, kwargs, name):
    with pytest.raises(ValueError, match=name) as info:
        factory(**kwargs)
    assert repr(kwargs[name]) in str(info.value)


def test_bad_types_raise_type_error():
    with pytest.raises(TypeError, match="learning_rate"):
        jgd.adam("fast")
    with pytest.raises(TypeError, match="nesterov"):
        jgd.momentum(0.1, nesterov="yes")
    with pytest.raises(TypeError, match="state_dtype"):
        jgd.adam(0.1, state_dtype=jnp.int32)
    with pytest.raises(ValueError, match="every"):
        jgd.accumulate(jgd.sgd(0.1), 0)
    with pytest.raises(TypeError, match="chain argument 1"):
        jgd.chain(jgd.sgd(0.1), 3.0)


def test_traced_hyperparameters_are_not_validated():
    # A negative traced learning rate is the user's business; it must not crash.
    params = mixed_tree()
    out = jax.jit(lambda lr, b1: run(jgd.adam(lr, b1=b1), params, grad, 2, jit=False)[0])(-0.1, 1.0)
    assert jax.tree.structure(out) == jax.tree.structure(params)


def test_adamw_without_params_is_a_clear_error():
    params = mixed_tree()
    opt = jgd.adamw(0.1)
    with pytest.raises(ValueError, match="params"):
        opt.update(grad(params), opt.init(params))


def test_inputs_are_not_mutated():
    params = mixed_tree()
    before = jax.tree.map(np.array, params)
    opt = jgd.adam(0.1)
    state = opt.init(params)
    opt.update(grad(params), state, params)
    assert_trees_close(params, before, rtol=0, atol=0)

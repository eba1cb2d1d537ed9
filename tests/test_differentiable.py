"""Differentiating through a descent: ``minimize(differentiable=True)``.

Oracles: central finite differences in float64, ``jax.jacfwd`` / ``jax.jvp`` through the
normal (while-loop) program, and the normal program's results."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jgd


def _regression(dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 5))
    y = x @ np.arange(1.0, 6.0) + 0.3 * rng.normal(size=48)
    return jnp.asarray(x[:32], dtype), jnp.asarray(y[:32], dtype), jnp.asarray(x[32:], dtype), jnp.asarray(y[32:], dtype)


def _train_loss(w, batch):
    x, y = batch
    return jnp.mean((x @ w - y) ** 2)


def _validation(opt, *, differentiable=True, w0=None, data=None, **kwargs):
    x, y, xv, yv = _regression(jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32)
    data = (x, y) if data is None else data
    w0 = jnp.zeros(5, x.dtype) if w0 is None else w0
    kwargs = {"steps": 24, "batch_size": 8, "key": jax.random.key(3), **kwargs}
    if differentiable:
        kwargs.setdefault("checkpoint_every", 6)
    r = jgd.minimize(_train_loss, w0, opt, data=data, differentiable=differentiable, **kwargs)
    return jnp.mean((xv @ r.params - yv) ** 2)


# Hyperparameters chosen so every leaf moves the result measurably (eps and eps_root are
# not negligible), which keeps central differences well conditioned.
RULES = {
    "sgd": lambda: jgd.sgd(0.02),
    "momentum": lambda: jgd.momentum(0.01, beta=0.8),
    "nesterov": lambda: jgd.momentum(0.01, beta=0.8, nesterov=True),
    "adam": lambda: jgd.adam(0.2, b1=0.8, b2=0.9, eps=1e-2, eps_root=1e-3),
    "adamw": lambda: jgd.adamw(0.2, b1=0.8, b2=0.9, eps=1e-2, eps_root=1e-3, weight_decay=0.1),
    "adagrad": lambda: jgd.adagrad(0.5, initial_accumulator_value=0.5, eps=1e-3),
    "rmsprop": lambda: jgd.rmsprop(0.05, decay=0.8, eps=1e-2),
}


@pytest.mark.parametrize("name", RULES)
def test_hypergradient_equals_finite_differences_and_forward_mode(name, x64):
    opt = RULES[name]()
    grad = jax.grad(_validation)(opt)
    # an optimizer-shaped gradient: one entry per hyperparameter
    assert jax.tree.structure(grad) == jax.tree.structure(opt)
    forward = jax.jacfwd(lambda o: _validation(o, differentiable=False))(opt)
    leaves, treedef = jax.tree.flatten(opt)
    for i, (value, g, f) in enumerate(zip(leaves, jax.tree.leaves(grad), jax.tree.leaves(forward))):
        h = 1e-5 * abs(value)
        shifted = lambda d: jax.tree.unflatten(treedef, [v + d if j == i else v for j, v in enumerate(leaves)])  # noqa: B023
        central = (_validation(shifted(h)) - _validation(shifted(-h))) / (2 * h)
        np.testing.assert_allclose(g, central, rtol=1e-4, err_msg=f"{name} leaf {i} = {value}")
        np.testing.assert_allclose(g, f, rtol=1e-6, err_msg=f"{name} leaf {i} = {value}")


def test_gradient_with_respect_to_factory_arguments(x64):
    def val(lr, wd):
        return _validation(jgd.adamw(lr, eps_root=1e-6, weight_decay=wd))

    g = jax.grad(val, (0, 1))(0.1, 0.05)
    h = 1e-6
    np.testing.assert_allclose(g[0], (val(0.1 + h, 0.05) - val(0.1 - h, 0.05)) / (2 * h), rtol=1e-4)
    np.testing.assert_allclose(g[1], (val(0.1, 0.05 + h) - val(0.1, 0.05 - h)) / (2 * h), rtol=1e-4)


def test_gradient_with_respect_to_initial_params_and_data_equals_forward_mode(x64):
    x, y, _, _ = _regression(jnp.float64)
    w0 = jnp.linspace(-1.0, 1.0, 5)
    opt = jgd.momentum(0.02, beta=0.5)
    grad_w, grad_x = jax.grad(lambda w, x: _validation(opt, w0=w, data=(x, y)), (0, 1))(w0, x)
    rng = np.random.default_rng(1)
    dw, dx = jnp.asarray(rng.normal(size=w0.shape)), jnp.asarray(rng.normal(size=x.shape))
    _, tangent = jax.jvp(lambda w, x: _validation(opt, differentiable=False, w0=w, data=(x, y)), (w0, x), (dw, dx))
    np.testing.assert_allclose(jnp.vdot(grad_w, dw) + jnp.vdot(grad_x, dx), tangent, rtol=1e-8)


def test_adam_hypergradient_is_finite_where_a_gradient_entry_is_always_zero(x64):
    # The last coordinate never moves the loss: its gradient is exactly 0 at every step,
    # so sqrt(v) is taken at 0. Finite differences give a finite hypergradient.
    def val(lr, eps_root=0.0):
        loss = lambda w: jnp.sum((w[:2] - 1.0) ** 2) + 0.0 * w[2]  # noqa: E731
        r = jgd.minimize(loss, jnp.zeros(3), jgd.adam(lr, eps_root=eps_root), steps=20, differentiable=True)
        return jnp.sum((r.params[:2] - 2.0) ** 2)

    h = 1e-6
    central = (val(0.1 + h) - val(0.1 - h)) / (2 * h)
    np.testing.assert_allclose(jax.grad(val)(0.1), central, rtol=1e-5)
    np.testing.assert_allclose(jax.grad(val)(0.1, 1e-12), central, rtol=1e-4)


def test_eps_root_equals_optax():
    params = {"w": jnp.array([0.5, -1.0, 0.0]), "b": jnp.array([[2.0]])}
    grads = [jax.tree.map(lambda p: jnp.sin(p * (k + 1)) + 0.1 * k, params) for k in range(5)]
    for ours, theirs in [
        (jgd.adam(0.1, eps_root=1e-3), optax.adam(0.1, eps_root=1e-3)),
        (jgd.adamw(0.1, eps_root=1e-2, weight_decay=0.1), optax.adamw(0.1, eps_root=1e-2, weight_decay=0.1)),
    ]:
        p, q, s, t = params, params, ours.init(params), theirs.init(params)
        for g in grads:
            u, s = ours.update(g, s, p)
            with jax.numpy_dtype_promotion("standard"):  # optax mixes int counts and floats
                v, t = theirs.update(g, t, q)
            p, q = optax.apply_updates(p, u), optax.apply_updates(q, v)
        for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(q)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def _mlp_loss(params, state, batch, key):
    x, y = batch
    h = jnp.tanh(x @ params["w1"])
    keep = jax.random.bernoulli(key, 0.8, h.shape)
    h = jnp.where(keep, h / 0.8, 0.0)
    loss = jnp.mean((h @ params["w2"] - y) ** 2)
    return loss, {"calls": state["calls"] + 1, "mean": 0.9 * state["mean"] + 0.1 * jnp.mean(h)}


@pytest.mark.parametrize("tol", [None, 6.0])
def test_differentiable_loop_equals_the_normal_loop(tol):
    x, y, xv, yv = _regression(jnp.float32)
    rng = np.random.default_rng(2)
    params = {"w1": jnp.asarray(rng.normal(size=(5, 8)) * 0.3, jnp.float32),
              "w2": jnp.asarray(rng.normal(size=(8,)) * 0.3, jnp.float32)}
    state = {"calls": jnp.zeros([], jnp.int32), "mean": jnp.zeros([], jnp.float32)}
    evaluate = jgd.Eval(lambda p, s, d: {"mse": jnp.mean((jnp.tanh(d[0] @ p["w1"]) @ p["w2"] - d[1]) ** 2)},
                        data=(xv, yv), every=6, monitor="mse", patience=3)
    common = dict(steps=36, data=(x, y), batch_size=8, microbatches=2, key=jax.random.key(5), model_state=state,
                  with_key=True, evaluate=evaluate, tol=tol)
    normal = jgd.minimize(_mlp_loss, params, jgd.adam(0.05), **common)
    for checkpoint_every in ((None, 4) if tol is None else (12,)):
        ours = jgd.minimize(_mlp_loss, params, jgd.adam(0.05), differentiable=True,
                            checkpoint_every=checkpoint_every, **common)
        for a, b in zip(jax.tree.leaves(ours._replace(key=None)), jax.tree.leaves(normal._replace(key=None))):
            np.testing.assert_array_equal(a, b)
    if tol is not None:  # the stop froze the params
        assert bool(normal.converged) and int(normal.num_steps) < 36


def test_differentiable_loop_resumes_like_the_normal_loop():
    x, y, _, _ = _regression(jnp.float32)
    common = dict(data=(x, y), batch_size=8, key=jax.random.key(1))
    first = jgd.minimize(_train_loss, jnp.zeros(5), jgd.adam(0.1), steps=10, **common)
    whole = jgd.minimize(_train_loss, jnp.zeros(5), jgd.adam(0.1), steps=30, **common)
    # a resumed start (10) is not on a segment boundary (4): one segment more is needed
    rest = jgd.minimize(_train_loss, first.params, jgd.adam(0.1), steps=20, init_state=first.state,
                        differentiable=True, checkpoint_every=4, **common)
    np.testing.assert_array_equal(rest.params, whole.params)
    np.testing.assert_array_equal(rest.losses, whole.losses[10:])


def test_rematerialisation_bounds_the_gradients_memory():
    # The compiled gradient keeps the loop state once per segment instead of every step's
    # intermediate values (the goal's 2,000-step measurement is benchmarks/hypergradient.py).
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(256, 16)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(256,)), jnp.float32)
    params = {"w1": jnp.zeros((16, 64)), "w2": jnp.zeros(64)}

    def loss(p, batch):
        return jnp.mean((jnp.tanh(batch[0] @ p["w1"]) @ p["w2"] - batch[1]) ** 2)

    def temp_bytes(checkpoint_every):
        def val(lr):
            r = jgd.minimize(loss, params, jgd.sgd(lr), steps=400, data=(x, y), differentiable=True,
                             checkpoint_every=checkpoint_every)
            return r.losses[-1]

        return jax.jit(jax.grad(val)).lower(0.1).compile().memory_analysis().temp_size_in_bytes

    # one step keeps at least the (256, 64) activations; 400 steps of them ≥ 26 MB
    assert temp_bytes(None) > 400 * 256 * 64 * 4
    assert temp_bytes(20) * 5 < temp_bytes(None)


def test_vmap_over_learning_rates_of_the_hypergradient():
    lrs = jnp.array([0.01, 0.02, 0.04])
    batched = jax.vmap(jax.grad(lambda lr: _validation(jgd.sgd(lr))))(lrs)
    for lr, g in zip(lrs, batched):
        np.testing.assert_allclose(g, jax.grad(lambda lr: _validation(jgd.sgd(lr)))(lr), rtol=1e-5)


def test_reverse_mode_without_differentiable_says_what_to_pass():
    with pytest.raises(ValueError, match="differentiable=True"):
        jax.grad(lambda lr: _validation(jgd.sgd(lr), differentiable=False))(0.1)
    with pytest.raises(ValueError, match="differentiable=True"):
        jax.jit(jax.grad(lambda lr: _validation(jgd.sgd(lr), differentiable=False)))(0.1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(differentiable=True, checkpoint_every=5), "checkpoint_every=5 must divide steps=24"),
        (dict(differentiable=True, checkpoint_every=0), "checkpoint_every must be >= 1"),
        (dict(differentiable=False, checkpoint_every=6), "needs differentiable=True"),
        (dict(differentiable="yes"), "differentiable must be a bool"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        _validation(jgd.sgd(0.1), **kwargs)


def test_differentiable_refuses_save_dir(tmp_path):
    with pytest.raises(ValueError, match="save_dir"):
        jgd.minimize(lambda w: jnp.sum(w ** 2), jnp.ones(2), jgd.sgd(0.1), steps=4, differentiable=True,
                     save_dir=tmp_path, save_every=2)

"""``minimize(loop="host")``: the device loop's steps as compiled segments called from
Python. Oracle: the device loop (the default), run for run — losses, params, best
iterates, evaluations, stops and resume equal to float rounding — and compile counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from problems import diabetes

import jgd

X, Y = diabetes()
KEY = jax.random.key(3)


def batch_loss(w, batch):
    Xb, yb = batch
    r = Xb @ w - yb
    return 0.5 * jnp.mean(r * r)


def assert_results_close(host, device, rtol=2e-5, atol=1e-6):
    for field in ("losses", "grad_norms", "best_loss"):
        np.testing.assert_allclose(getattr(host, field), getattr(device, field), rtol=rtol, atol=atol, err_msg=field)
    for field in ("num_steps", "converged", "diverged", "stopped_early", "best_step"):
        np.testing.assert_array_equal(getattr(host, field), getattr(device, field), err_msg=field)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)  # noqa: E731
    jax.tree.map(close, (host.params, host.best_params, host.state.opt_state, host.model_state),
                 (device.params, device.best_params, device.state.opt_state, device.model_state))
    assert int(host.state.step) == int(device.state.step)
    if device.evals is not None:
        jax.tree.map(close, host.evals, device.evals)
        np.testing.assert_array_equal(host.eval_steps, device.eval_steps)


def _conv_problem():
    """A 2-conv-layer net on 8x8 images with a batch-statistics model state."""
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(96, 8, 8, 1)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 3, size=96))
    keys = jax.random.split(jax.random.key(1), 3)
    params = {"c1": 0.3 * jax.random.normal(keys[0], (3, 3, 1, 4)),
              "c2": 0.2 * jax.random.normal(keys[1], (3, 3, 4, 4)),
              "w": 0.05 * jax.random.normal(keys[2], (8 * 8 * 4, 3))}

    def logits(p, x):
        conv = lambda h, k: jax.lax.conv_general_dilated(  # noqa: E731
            h, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        h = jax.nn.relu(conv(jax.nn.relu(conv(x, p["c1"])), p["c2"]))
        return h.reshape(h.shape[0], -1) @ p["w"]

    def loss(p, mean, batch, key):
        x, t = batch
        keep = jax.random.bernoulli(key, 0.9, x.shape)  # dropout on the input
        x = jnp.where(keep, x / 0.9, 0.0)
        ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits(p, x)), t[:, None], axis=1))
        return ce, 0.9 * mean + 0.1 * jnp.mean(x)

    def accuracy(p, mean, data):
        x, t = data
        return {"accuracy": jnp.mean(jnp.argmax(logits(p, x), axis=1) == t), "mean": mean}

    return loss, accuracy, params, (images, labels)


def test_a_conv_net_with_dropout_model_state_and_evaluation_equals_the_device_loop():
    loss, accuracy, params, data = _conv_problem()
    kwargs = dict(steps=45, data=data, batch_size=16, key=KEY, with_key=True, model_state=jnp.float32(0.0),
                  evaluate=jgd.Eval(accuracy, data, every=15, monitor="accuracy", mode="max"))
    device = jgd.minimize(loss, params, jgd.adam(3e-3), **kwargs)
    host = jgd.minimize(loss, params, jgd.adam(3e-3), loop="host", **kwargs)
    assert_results_close(host, device)
    assert np.isfinite(device.evals["accuracy"]).all()


@pytest.mark.parametrize("case", ["microbatches", "record_aux", "tol", "diverges", "patience", "proximal"])
def test_every_kind_of_run_equals_the_device_loop(case):
    opt = jgd.momentum(0.05, 0.9)
    fun, params = batch_loss, jnp.zeros(X.shape[1], jnp.float32)
    kwargs = dict(steps=70, data=(X, Y), batch_size=32, key=KEY)
    if case == "microbatches":
        kwargs.update(microbatches=4)
    elif case == "record_aux":
        fun = lambda w, b: (batch_loss(w, b), {"w0": w[0]})  # noqa: E731
        kwargs.update(has_aux=True, record_aux=True)
    elif case == "tol":  # stops in the middle of a segment (and of a host call)
        kwargs = dict(steps=200, tol=1e-2)
        fun = lambda w: batch_loss(w, (X, Y))  # noqa: E731
        opt = jgd.sgd(0.1)
    elif case == "diverges":
        opt = jgd.sgd(50.0)
    elif case == "patience":
        val = lambda w: {"mse": batch_loss(w, (X[:50], Y[:50]))}  # noqa: E731
        kwargs.update(evaluate=jgd.Eval(val, every=5, monitor="mse", patience=2))
        opt = jgd.sgd(1.5)
    elif case == "proximal":  # the rule reports its residual and g to the loop
        kwargs = dict(steps=150, tol=1e-3)
        fun = lambda w: batch_loss(w, (X, Y))  # noqa: E731
        opt = jgd.proximal_gradient(0.5, jgd.prox.l1(0.01))
    device = jgd.minimize(fun, params, opt, **kwargs)
    host = jgd.minimize(fun, params, opt, loop="host", **kwargs)
    assert_results_close(host, device)
    if case in ("tol", "proximal"):
        assert bool(device.converged) and int(device.num_steps) % 4 != 0
    if case == "diverges":
        assert bool(device.diverged)
    if case == "patience":
        assert bool(device.stopped_early)


def test_resumed_in_pieces_equals_one_device_run():
    params = jnp.zeros(X.shape[1], jnp.float32)
    val = lambda w: batch_loss(w, (X[:50], Y[:50]))  # noqa: E731
    kwargs = dict(data=(X, Y), batch_size=32, evaluate=jgd.Eval(val, every=10, monitor="eval"))
    whole = jgd.minimize(batch_loss, params, jgd.adam(0.05), steps=100, key=KEY, **kwargs)
    first = jgd.minimize(batch_loss, params, jgd.adam(0.05), steps=30, key=KEY, loop="host", **kwargs)
    second = jgd.minimize(batch_loss, first.params, jgd.adam(0.05), steps=70, key=first.key, loop="host",
                          init_state=first.state, **kwargs)
    np.testing.assert_allclose(np.concatenate([first.losses, second.losses]), whole.losses, rtol=2e-5)
    np.testing.assert_allclose(np.concatenate([first.evals["eval"], second.evals["eval"]]), whole.evals["eval"],
                               rtol=2e-5)
    np.testing.assert_allclose(second.params, whole.params, rtol=2e-5, atol=1e-6)
    assert int(second.best_step) == int(whole.best_step)


def test_flat_and_saved_runs_take_the_host_loop(tmp_path):
    params = {"a": jnp.zeros(4, jnp.float32), "b": jnp.zeros(X.shape[1] - 4, jnp.float32)}
    fun = lambda p, b: batch_loss(jnp.concatenate([p["a"], p["b"]]), b)  # noqa: E731
    kwargs = dict(steps=40, data=(X, Y), batch_size=32, key=KEY)
    device = jgd.minimize(fun, params, jgd.adam(0.05), **kwargs)
    flat = jgd.minimize(fun, params, jgd.flat(jgd.adam(0.05)), loop="host", **kwargs)
    saved = jgd.minimize(fun, params, jgd.adam(0.05), loop="host", save_dir=tmp_path, save_every=20, **kwargs)
    for host in (flat, saved):
        np.testing.assert_allclose(host.losses, device.losses, rtol=2e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6), host.params, device.params)


def test_three_learning_rates_compile_once():
    params = jnp.zeros(X.shape[1], jnp.float32)
    kwargs = dict(steps=20, data=(X, Y), batch_size=16, key=KEY, loop="host")
    jgd.minimize(batch_loss, params, jgd.adam(1e-3), **kwargs)
    with jgd.debug.count_compiles() as compiles:
        for lr in (3e-3, 1e-2):
            jgd.minimize(batch_loss, params, jgd.adam(lr), **kwargs)
    assert int(compiles) == 0, compiles


def test_progress_bar(capsys):
    jgd.minimize(lambda w: batch_loss(w, (X, Y)), jnp.zeros(X.shape[1], jnp.float32), jgd.sgd(0.1), steps=64,
                 progress=True, loop="host")
    err = capsys.readouterr().err
    assert "minimize" in err and "64/64" in err


@pytest.mark.parametrize("kwargs, match", [
    (dict(loop="gpu"), "loop must be one of"),
    (dict(loop="host", differentiable=True), "differentiable"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jgd.minimize(lambda w: jnp.sum(w ** 2), jnp.ones(2), jgd.sgd(0.1), steps=5, **kwargs)


def test_under_a_transformation_is_refused():
    def run(lr):
        return jgd.minimize(lambda w: jnp.sum(w ** 2), jnp.ones(2), jgd.sgd(lr), steps=5, loop="host").params

    for transform in (jax.jit, jax.vmap):
        with pytest.raises(ValueError, match="loop='host' runs segments from Python"):
            transform(run)(jnp.asarray([0.1]) if transform is jax.vmap else 0.1)


def test_auto_takes_the_host_loop_for_convolutions_on_cpu_and_the_device_loop_otherwise():
    import importlib

    drivers = importlib.import_module("jgd._drivers")
    loss, _, params, data = _conv_problem()
    conv_loss = lambda p, b: loss(p, jnp.float32(0.0), b, jax.random.key(0))[0]  # noqa: E731
    kwargs = dict(steps=16, data=data, batch_size=16, key=KEY)
    host_programs = drivers._host_steps._cache_size()  # the host loop's steps compile for this problem
    auto = jgd.minimize(conv_loss, params, jgd.adam(3e-3), loop="auto", **kwargs)
    assert drivers._host_steps._cache_size() == host_programs + 1
    assert_results_close(auto, jgd.minimize(conv_loss, params, jgd.adam(3e-3), **kwargs))

    # no convolution: the device loop; under vmap: the device loop (a host loop cannot be traced)
    device_programs = drivers.to_the_end._cache_size()
    w0 = jnp.zeros(X.shape[1], jnp.float32)
    jgd.minimize(batch_loss, w0, jgd.adam(0.1), loop="auto", steps=8, data=(X, Y), batch_size=8, key=KEY)
    assert drivers.to_the_end._cache_size() == device_programs + 1
    batched = jax.vmap(lambda lr: jgd.minimize(conv_loss, params, jgd.adam(lr), loop="auto", **kwargs).losses)
    np.testing.assert_allclose(batched(jnp.asarray([3e-3]))[0], auto.losses, rtol=2e-5)


# ---- sweeps and halving through the host loop: oracle, the same sweep through the device loop

def assert_sweeps_close(host, device, rtol=2e-5, atol=1e-6):
    for field in ("losses", "final_loss", "best_loss"):
        np.testing.assert_allclose(getattr(host, field), getattr(device, field), rtol=rtol, atol=atol, err_msg=field)
    for field in ("num_steps", "converged", "diverged", "stopped_early", "best_step", "eval_steps"):
        np.testing.assert_array_equal(getattr(host, field), getattr(device, field), err_msg=field)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)  # noqa: E731
    jax.tree.map(close, (host.params, host.best_params, host.model_state, host.evals),
                 (device.params, device.best_params, device.model_state, device.evals))


def test_a_conv_net_sweep_with_dropout_model_state_and_evaluation_equals_the_device_loop():
    loss, accuracy, params, data = _conv_problem()
    kwargs = dict(steps=30, data=data, batch_size=16, key=KEY, with_key=True, model_state=jnp.float32(0.0),
                  seeds=2, evaluate=jgd.Eval(accuracy, data, every=10, monitor="accuracy", mode="max"))
    grid = {"learning_rate": [1e-3, 3e-3, 1e-2]}
    device = jgd.sweep(loss, params, jgd.adam, grid, **kwargs)
    host = jgd.sweep(loss, params, jgd.adam, grid, loop="host", **kwargs)
    assert_sweeps_close(host, device)
    assert np.isfinite(device.evals["accuracy"]).all()


def test_a_sweep_whose_runs_stop_at_different_steps_equals_the_device_loop():
    # tol met mid-call by some runs, divergence by others, patience by others: each run
    # stops on its own while the rest of its chunk goes on
    val = lambda w: {"mse": batch_loss(w, (X[:50], Y[:50]))}  # noqa: E731
    kwargs = dict(steps=60, data=(X, Y), batch_size=32, key=KEY, tol=0.3, seeds=2, chunk_size=4,
                  evaluate=jgd.Eval(val, every=5, monitor="mse", patience=2))
    grid = {"learning_rate": [1e-3, 0.05, 0.3, 1.5, 60.0]}
    fun, params = batch_loss, jnp.zeros(X.shape[1], jnp.float32)
    device = jgd.sweep(fun, params, jgd.sgd, grid, **kwargs)
    host = jgd.sweep(fun, params, jgd.sgd, grid, loop="host", **kwargs)
    assert_sweeps_close(host, device)
    # in segments from the host (a progress bar): the stopped runs keep their state
    in_segments = jgd.sweep(fun, params, jgd.sgd, grid, loop="host", progress=True, **kwargs)
    assert_sweeps_close(in_segments, device)
    assert device.converged.any() and device.diverged.any() and device.stopped_early.any()
    assert (device.num_steps == 60).any() and (device.num_steps % 2).any()  # some mid-call (2 steps a call)


def test_an_init_function_and_proximal_rule_sweep_equals_the_device_loop():
    init = lambda k: 0.1 * jax.random.normal(k, (X.shape[1],))  # noqa: E731
    fun = lambda w: batch_loss(w, (X, Y))  # noqa: E731
    factory = lambda learning_rate: jgd.proximal_gradient(learning_rate, jgd.prox.l1(0.01))  # noqa: E731
    kwargs = dict(steps=150, tol=1e-3, seeds=3, key=KEY)
    device = jgd.sweep(fun, init, factory, {"learning_rate": [0.1, 0.5]}, **kwargs)
    host = jgd.sweep(fun, init, factory, {"learning_rate": [0.1, 0.5]}, loop="host", **kwargs)
    assert_sweeps_close(host, device)
    assert device.converged.any()


class _Preempted(Exception):
    pass


def test_a_saved_host_sweep_resumed_after_a_crash_equals_it_uninterrupted_and_the_device_sweep(tmp_path,
                                                                                               monkeypatch):
    from jgd import checkpoint

    kwargs = dict(steps=40, data=(X, Y), batch_size=16, key=KEY, seeds=2, loop="host", save_every=10)
    grid = {"learning_rate": [0.01, 0.05], "beta": [0.0, 0.9]}
    params = jnp.zeros(X.shape[1], jnp.float32)
    whole = jgd.sweep(batch_loss, params, jgd.momentum, grid, save_dir=tmp_path / "whole", **kwargs)
    save, saves = checkpoint.Saver.save, []

    def crash_after_two(self, step, state):
        if len(saves) == 2:
            raise _Preempted
        saves.append(step)
        save(self, step, state)

    monkeypatch.setattr(checkpoint.Saver, "save", crash_after_two)
    with pytest.raises(_Preempted):
        jgd.sweep(batch_loss, params, jgd.momentum, grid, save_dir=tmp_path / "cut", **kwargs)
    monkeypatch.setattr(checkpoint.Saver, "save", save)
    resumed = jgd.sweep(batch_loss, params, jgd.momentum, grid, save_dir=tmp_path / "cut", **kwargs)
    assert saves == [10, 20]
    for field in ("losses", "params", "best_params", "num_steps"):  # bit for bit
        jax.tree.map(np.testing.assert_array_equal, getattr(resumed, field), getattr(whole, field))
    device = jgd.sweep(batch_loss, params, jgd.momentum, grid, **{**kwargs, "loop": "device", "save_every": None})
    assert_sweeps_close(whole, device)


def test_halving_through_the_host_loop_equals_the_device_loop():
    val = lambda w: {"mse": batch_loss(w, (X[:50], Y[:50]))}  # noqa: E731
    kwargs = dict(steps=36, min_steps=4, eta=3, data=(X, Y), batch_size=16, key=KEY,
                  evaluate=jgd.Eval(val, every=4, monitor="mse"))
    grid = {"learning_rate": list(np.logspace(-3, -0.5, 9))}
    params = jnp.zeros(X.shape[1], jnp.float32)
    device = jgd.halving(batch_loss, params, jgd.sgd, grid, **kwargs)
    host = jgd.halving(batch_loss, params, jgd.sgd, grid, loop="host", **kwargs)
    np.testing.assert_array_equal(host.rung, device.rung)
    assert_sweeps_close(host, device)


def test_a_host_sweep_compiles_once_for_every_learning_rate():
    params = jnp.zeros(X.shape[1], jnp.float32)
    kwargs = dict(steps=12, data=(X, Y), batch_size=16, key=KEY, loop="host")
    jgd.sweep(batch_loss, params, jgd.adam, points={"learning_rate": [1e-3, 3e-3, 1e-2]}, **kwargs)
    with jgd.debug.count_compiles() as compiles:
        jgd.sweep(batch_loss, params, jgd.adam, points={"learning_rate": [2e-3, 5e-3, 2e-2]}, **kwargs)
    assert int(compiles) == 0, compiles


def test_a_sweep_with_auto_takes_the_host_loop_for_convolutions_on_cpu():
    import importlib

    phases = importlib.import_module("jgd._sweep_host").host_phases
    loss, _, params, data = _conv_problem()
    conv_loss = lambda p, b: loss(p, jnp.float32(0.0), b, jax.random.key(0))[0]  # noqa: E731
    kwargs = dict(steps=4, data=data, batch_size=16, key=KEY)
    before = phases.cache_info().currsize
    auto = jgd.sweep(conv_loss, params, jgd.adam, {"learning_rate": [1e-3, 1e-2]}, loop="auto", **kwargs)
    assert phases.cache_info().currsize == before + 1
    assert_sweeps_close(auto, jgd.sweep(conv_loss, params, jgd.adam, {"learning_rate": [1e-3, 1e-2]}, **kwargs))
    jgd.sweep(batch_loss, jnp.zeros(X.shape[1], jnp.float32), jgd.adam, {"learning_rate": [1e-3]}, loop="auto",
              steps=4, data=(X, Y), batch_size=16)
    assert phases.cache_info().currsize == before + 1  # no convolution: the device loop


@pytest.mark.parametrize("kwargs, match", [
    (dict(loop="gpu"), "loop must be one of"),
    (dict(loop="host", factory=lambda learning_rate: jgd.flat(jgd.sgd(learning_rate))), "jgd.flat"),
])
def test_bad_sweep_input(kwargs, match):
    factory = kwargs.pop("factory", jgd.sgd)
    with pytest.raises(ValueError, match=match):
        jgd.sweep(lambda w: jnp.sum(w ** 2), jnp.ones(2), factory, {"learning_rate": [0.1]}, steps=5, **kwargs)

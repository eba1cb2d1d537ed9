"""jgd.Eval inside minimize: each evaluation against the metric of a shorter minimize run
with the same key (the oracle never evaluates inside the loop), best/monitor/patience
against those evaluations, record_aux, resume, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from problems import diabetes

import jgd

X, Y = diabetes()
X_TRAIN, Y_TRAIN, X_VAL, Y_VAL = X[:300], Y[:300], X[300:], Y[300:]
W0 = jnp.zeros(X.shape[1], jnp.float32)
KEY = jax.random.key(4)


def batch_loss(w, batch):
    r = batch[0] @ w - batch[1]
    return 0.5 * jnp.mean(r * r)


def val_metrics(w, data):
    r = data[0] @ w - data[1]
    return {"mse": jnp.mean(r * r), "mae": jnp.mean(jnp.abs(r))}


def run(steps, opt=None, **kwargs):
    kwargs = {"data": (X_TRAIN, Y_TRAIN), "batch_size": 16, "key": KEY, **kwargs}
    return jgd.minimize(batch_loss, W0, opt or jgd.sgd(0.05), steps=steps, **kwargs)


def oracle_metrics(steps_list, opt=None):
    """The metrics of the params of separate, shorter runs: what the evaluations must be."""
    return {k: {n: float(v) for n, v in val_metrics(run(k, opt).params, (X_VAL, Y_VAL)).items()}
            for k in steps_list}


def full_batch_trajectory(opt, steps):
    """The params after every step of full-batch descent, by a plain Python loop over a
    jitted update: the oracle for evaluations, best iterates and patience (no minimize)."""
    @jax.jit
    def step(w, state):
        updates, state = opt.update(jax.grad(batch_loss)(w, (X_TRAIN, Y_TRAIN)), state, w)
        return jgd.apply_updates(w, updates), state

    w, state, out = W0, opt.init(W0), [W0]
    for _ in range(steps):
        w, state = step(w, state)
        out.append(w)
    return out


def full_batch(steps, opt, **kwargs):
    return jgd.minimize(batch_loss, W0, opt, steps=steps, data=(X_TRAIN, Y_TRAIN), **kwargs)


def test_evals_equal_the_metrics_of_shorter_runs():
    r = run(50, evaluate=jgd.Eval(val_metrics, (X_VAL, Y_VAL), every=25))
    np.testing.assert_array_equal(r.eval_steps, [25, 50])
    expected = oracle_metrics([25, 50])
    for i, k in enumerate([25, 50]):
        for name in ("mse", "mae"):
            np.testing.assert_allclose(r.evals[name][i], expected[k][name], rtol=1e-6)
    # A scalar metric is named "eval"; every=None evaluates once, at the end.
    once = run(50, evaluate=jgd.Eval(lambda w, d: val_metrics(w, d)["mse"], (X_VAL, Y_VAL)))
    np.testing.assert_array_equal(once.eval_steps, [50])
    np.testing.assert_allclose(once.evals["eval"][0], expected[50]["mse"], rtol=1e-6)


def test_every_not_dividing_steps_evaluates_at_its_multiples():
    opt = jgd.sgd(0.05)
    r = full_batch(70, opt, evaluate=jgd.Eval(val_metrics, (X_VAL, Y_VAL), every=30))
    np.testing.assert_array_equal(r.eval_steps, [30, 60])
    trajectory = full_batch_trajectory(opt, 70)
    expected = [float(val_metrics(trajectory[k], (X_VAL, Y_VAL))["mse"]) for k in (30, 60)]
    np.testing.assert_allclose(r.evals["mse"], expected, rtol=1e-5)
    assert int(r.num_steps) == 70
    np.testing.assert_allclose(r.params, trajectory[70], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["min", "max"])
def test_monitor_tracks_the_best_evaluation(mode):
    # A large step makes the validation error go up and down, so min and max differ.
    opt = jgd.momentum(0.5, 0.9)
    r = full_batch(120, opt, evaluate=jgd.Eval(val_metrics, (X_VAL, Y_VAL), every=10, monitor="mae", mode=mode))
    steps = list(range(10, 121, 10))
    trajectory = full_batch_trajectory(opt, 120)
    maes = np.array([float(val_metrics(trajectory[k], (X_VAL, Y_VAL))["mae"]) for k in steps])
    best = int(np.argmin(maes) if mode == "min" else np.argmax(maes))
    assert np.ptp(maes) > 1e-3 * np.abs(maes).max(), "the problem must make the evaluations differ"
    assert int(r.best_step) == steps[best]
    np.testing.assert_allclose(r.best_loss, maes[best], rtol=1e-5)
    np.testing.assert_allclose(r.best_params, trajectory[steps[best]], rtol=1e-5, atol=1e-6)


def test_patience_stops_after_evaluations_without_improvement():
    opt = jgd.momentum(0.5, 0.9)
    patience = 2
    r = full_batch(200, opt, evaluate=jgd.Eval(val_metrics, (X_VAL, Y_VAL), every=10, monitor="mse", patience=patience))
    steps = list(range(10, 201, 10))
    trajectory = full_batch_trajectory(opt, 200)
    mses = [float(val_metrics(trajectory[k], (X_VAL, Y_VAL))["mse"]) for k in steps]
    # The oracle: walk the evaluations, count evaluations in a row that are not better.
    best, waiting, stop = np.inf, 0, None
    for k, m in zip(steps, mses):
        if m < best:
            best, waiting = m, 0
        else:
            waiting += 1
        if waiting >= patience:
            stop = k
            break
    assert stop is not None and stop < 200, "the problem must trigger patience"
    assert bool(r.stopped_early) and not r.converged and not r.diverged
    assert int(r.num_steps) == stop
    n_evals = stop // 10
    assert np.all(np.isfinite(r.evals["mse"][:n_evals])) and np.all(np.isnan(r.evals["mse"][n_evals:]))
    assert np.all(np.isnan(r.losses[stop:]))
    np.testing.assert_allclose(r.best_loss, best, rtol=1e-5)


def test_without_monitor_best_follows_the_training_loss():
    r = run(60, jgd.momentum(0.3, 0.9))
    losses = np.asarray(r.losses)
    t = int(np.argmin(losses))
    assert int(r.best_step) == t and float(r.best_loss) == losses[t]
    np.testing.assert_array_equal(r.best_params, run(t, jgd.momentum(0.3, 0.9)).params if t else W0)


def test_record_aux_stacks_every_step():
    def loss(w, batch):
        r = batch[0] @ w - batch[1]
        return 0.5 * jnp.mean(r * r), {"max": jnp.max(jnp.abs(r)), "count": jnp.int32(batch[1].shape[0])}

    kwargs = dict(data=(X_TRAIN, Y_TRAIN), batch_size=16, key=KEY, has_aux=True)
    r = jgd.minimize(loss, W0, jgd.sgd(0.05), steps=30, record_aux=True, **kwargs)
    assert r.aux["max"].shape == (30,) and r.aux["count"].dtype == jnp.int32
    for k in (1, 7, 30):  # the last-step aux of a k-step run is row k-1
        last = jgd.minimize(loss, W0, jgd.sgd(0.05), steps=k, **kwargs).aux
        np.testing.assert_array_equal(r.aux["max"][k - 1], last["max"])
    # Rows past a stop: NaN for floating leaves, 0 for integers.
    stopped = jgd.minimize(loss, W0, jgd.sgd(1e4), steps=30, record_aux=True, **kwargs)
    k = int(stopped.num_steps)
    assert stopped.diverged and k < 30
    assert np.all(np.isnan(stopped.aux["max"][k:])) and np.all(stopped.aux["count"][k:] == 0)


def test_resume_with_evaluation_is_bit_exact():
    evaluate = jgd.Eval(val_metrics, (X_VAL, Y_VAL), every=20, monitor="mse")
    opt = jgd.adam(0.05)
    whole = run(200, opt, evaluate=evaluate)
    first = run(100, opt, evaluate=evaluate)
    second = jgd.minimize(batch_loss, first.params, opt, steps=100, data=(X_TRAIN, Y_TRAIN), batch_size=16,
                          key=first.key, init_state=first.state, evaluate=evaluate)
    np.testing.assert_array_equal(second.params, whole.params)
    np.testing.assert_array_equal(np.concatenate([first.losses, second.losses]), whole.losses)
    np.testing.assert_array_equal(np.concatenate([first.eval_steps, second.eval_steps]), whole.eval_steps)
    np.testing.assert_array_equal(np.concatenate([first.evals["mse"], second.evals["mse"]]), whole.evals["mse"])
    np.testing.assert_array_equal(second.best_params, whole.best_params)
    assert int(second.best_step) == int(whole.best_step)


def test_evaluation_compiles_once_for_new_data_and_learning_rates():
    import importlib

    loop = importlib.import_module("jgd._drivers").to_the_end
    evaluate = jgd.Eval(val_metrics, (X_VAL, Y_VAL), every=10)
    run(20, jgd.sgd(0.01), evaluate=evaluate)
    before = loop._cache_size()
    run(20, jgd.sgd(0.02), evaluate=jgd.Eval(val_metrics, (X_VAL + 1, Y_VAL), every=10))
    assert loop._cache_size() == before


@pytest.mark.parametrize(
    "make, steps, error, match",
    [
        (lambda: jgd.Eval(lambda w, d: d[0] @ w, (X_VAL, Y_VAL)), 10, ValueError, "floating scalar"),
        (lambda: jgd.Eval(lambda w, d: {"n": jnp.int32(1)}, (X_VAL, Y_VAL)), 10, ValueError, "floating scalar"),
        (lambda: jgd.Eval(val_metrics, (X_VAL, Y_VAL), monitor="accuracy"), 10, ValueError, r"monitor='accuracy'.*\['mae', 'mse'\]"),
        (lambda: jgd.Eval(val_metrics, (X_VAL, Y_VAL), mode="maximize"), 10, ValueError, "mode"),
        (lambda: jgd.Eval(val_metrics, (X_VAL, Y_VAL), every=0), 10, ValueError, "every"),
        (lambda: jgd.Eval(val_metrics, (X_VAL, Y_VAL), every=11), 10, ValueError, "every=11 must be <= steps=10"),
        (lambda: jgd.Eval(val_metrics, (X_VAL, Y_VAL), every=2.0), 10, TypeError, "every"),
        (lambda: jgd.Eval(val_metrics, (X_VAL, Y_VAL), patience=2), 10, ValueError, "monitor"),
        (lambda: jgd.Eval(val_metrics, (X_VAL, Y_VAL), monitor="mse", patience=0), 10, ValueError, "patience"),
        (lambda: jgd.Eval("mse"), 10, TypeError, "callable"),
        (lambda: val_metrics, 10, TypeError, "jgd.Eval"),
    ],
)
def test_bad_input(make, steps, error, match):
    with pytest.raises(error, match=match):
        run(steps, evaluate=make())

"""jgd.minimize against closed-form optima, exact sampling, stopping rules and resume."""

import importlib
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from problems import diabetes, least_squares, oracle

import jgd

minimize_module = importlib.import_module("jgd.minimize")

X, Y = diabetes()
N, D = X.shape
W_STAR = np.linalg.lstsq(X.astype(np.float64), Y.astype(np.float64), rcond=None)[0]
LOSS_STAR = 0.5 * np.mean((X @ W_STAR - Y) ** 2)
full_loss = least_squares(jnp.asarray(X), jnp.asarray(Y))


def batch_loss(w, batch):
    Xb, yb = batch
    r = Xb @ w - yb
    return 0.5 * jnp.mean(r * r)


W0 = jnp.zeros(D, jnp.float32)
KEY = jax.random.key(0)


def test_full_batch_gd_reaches_lstsq():
    r = jgd.minimize(full_loss, W0, jgd.momentum(0.05, 0.9), steps=3000)
    np.testing.assert_allclose(r.params, W_STAR, atol=2e-3)
    assert int(r.num_steps) == 3000 and not r.converged and not r.diverged


@pytest.mark.parametrize("batch_size, microbatches, lr", [(1, 1, 2e-3), (32, 1, 0.02), (32, 4, 0.02)])
def test_stochastic_variants_converge_near_lstsq(batch_size, microbatches, lr):
    r = jgd.minimize(
        batch_loss, W0, jgd.sgd(lr), steps=6000, data=(X, Y), batch_size=batch_size,
        microbatches=microbatches, key=KEY,
    )
    assert float(full_loss(r.params)) <= 1.03 * LOSS_STAR


def _recorded_batches(n, batch_size, steps, key=KEY, vmap_keys=None):
    """The example indices of every step's batch, recorded through record_aux."""
    data = (np.zeros((n, 1), np.float32), np.arange(n, dtype=np.int32))

    def loss(w, batch):
        return jnp.sum(batch[0] @ w), batch[1]

    def run(k):
        return jgd.minimize(loss, jnp.zeros(1), jgd.sgd(0.1), steps=steps, data=data, batch_size=batch_size,
                            key=k, has_aux=True, record_aux=True).aux

    if vmap_keys is not None:
        return np.asarray(jax.vmap(run)(vmap_keys))
    return np.asarray(run(key))


@pytest.mark.parametrize("n, b", [(12, 4), (12, 5), (1, 1), (100, 1), (1000, 32), (97, 96)])
def test_epochs_from_recorded_batch_indices(n, b):
    """Every example at most once per epoch (exactly once when b divides n), a fresh order
    each epoch, all n examples seen over the epochs."""
    per_epoch, epochs = n // b, 4
    batches = _recorded_batches(n, b, per_epoch * epochs)
    assert batches.shape == (per_epoch * epochs, b)
    orders = batches.reshape(epochs, per_epoch * b)
    for order in orders:
        assert len(set(order)) == per_epoch * b and order.min() >= 0 and order.max() < n
        if n % b == 0:
            assert sorted(order) == list(range(n))
    if per_epoch * b > 1:
        assert len({tuple(o) for o in orders}) == epochs, "each epoch must have an order of its own"
    if n % b:  # the examples left out differ between epochs, so all are eventually seen
        assert len(set(batches.ravel())) == n if n <= 100 else True


def test_sampler_is_uniform_over_positions():
    """Where example 0 lands in an epoch's order is uniform over the n positions (a
    chi-square test over 2,000 keys; 5 examples, 5 positions)."""
    keys = jax.random.split(jax.random.key(7), 2000)
    orders = _recorded_batches(5, 5, 1, vmap_keys=keys)[:, 0, :]
    counts = np.bincount(np.argmax(orders == 0, axis=1), minlength=5)
    from scipy import stats

    assert stats.chisquare(counts).pvalue > 1e-3, counts


def test_sampler_same_key_same_batches_and_vmap_equals_single_runs():
    keys = jax.random.split(KEY, 3)
    batched = _recorded_batches(50, 8, 20, vmap_keys=keys)
    for i in range(3):
        np.testing.assert_array_equal(batched[i], _recorded_batches(50, 8, 20, key=keys[i]))
    np.testing.assert_array_equal(_recorded_batches(50, 8, 20), _recorded_batches(50, 8, 20))
    assert not np.array_equal(batched[0], batched[1])


def test_microbatches_equal_one_batch():
    kwargs = dict(steps=50, data=(X, Y), batch_size=64, key=KEY)
    one = jgd.minimize(batch_loss, W0, jgd.adam(0.01), **kwargs)
    split = jgd.minimize(batch_loss, W0, jgd.adam(0.01), microbatches=8, **kwargs)
    np.testing.assert_allclose(split.params, one.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(split.losses, one.losses, rtol=1e-5)


def test_tol_stops_early_and_reports_convergence():
    r = jgd.minimize(full_loss, W0, jgd.momentum(0.05, 0.9), steps=5000, tol=1e-4)
    k = int(r.num_steps)
    assert r.converged and not r.diverged and k < 5000
    assert float(r.grad_norms[k - 1]) <= 1e-4 < float(np.min(r.grad_norms[: k - 1]))
    assert np.all(np.isnan(r.losses[k:])) and np.all(np.isnan(r.grad_norms[k:]))
    # The returned params are the ones whose gradient met tol.
    g = jax.grad(full_loss)(r.params)
    assert float(jnp.linalg.norm(g)) <= 1e-4


def test_huge_learning_rate_diverges_without_exception():
    r = jgd.minimize(full_loss, W0, jgd.sgd(1e3), steps=500)
    k = int(r.num_steps)
    assert r.diverged and not r.converged and k < 500
    assert not np.isfinite(r.losses[k - 1]) and np.all(np.isfinite(r.losses[: k - 1]))
    assert np.all(np.isnan(r.losses[k:]))


def test_best_iterate_is_the_minimum_of_the_recorded_losses():
    # The subgradient method is not a descent method: track the best point.
    def l1(w):
        return jnp.sum(jnp.abs(w - 1.0))

    r = jgd.minimize(l1, jnp.zeros(3), jgd.momentum(0.3, 0.9), steps=60)
    losses = np.asarray(r.losses)
    assert losses[-1] > losses.min(), "the problem must make the last iterate not the best"
    assert float(r.best_loss) == losses.min()
    assert float(l1(r.best_params)) == float(r.best_loss)


@pytest.mark.parametrize("batch_size", [None, 32])
def test_resume_is_bit_exact(batch_size):
    data = None if batch_size is None else (X, Y)
    fun = full_loss if batch_size is None else batch_loss
    kwargs = dict(data=data, batch_size=batch_size)
    whole = jgd.minimize(fun, W0, jgd.adam(0.01), steps=1000, key=KEY, **kwargs)
    first = jgd.minimize(fun, W0, jgd.adam(0.01), steps=500, key=KEY, **kwargs)
    second = jgd.minimize(fun, first.params, jgd.adam(0.01), steps=500, init_state=first.state, key=first.key, **kwargs)
    np.testing.assert_array_equal(second.params, whole.params)
    np.testing.assert_array_equal(np.concatenate([first.losses, second.losses]), whole.losses)


def test_two_learning_rates_compile_once():
    kwargs = dict(steps=20, data=(X, Y), batch_size=16, key=KEY)
    jgd.minimize(batch_loss, W0, jgd.adam(1e-3), **kwargs)
    before = importlib.import_module("jgd._drivers").to_the_end._cache_size()
    jgd.minimize(batch_loss, W0, jgd.adam(3e-2), **kwargs)
    jgd.minimize(batch_loss, W0, jgd.adam(0.1, b1=0.5), **kwargs)
    assert importlib.import_module("jgd._drivers").to_the_end._cache_size() == before


def test_vmap_over_learning_rates_and_keys_equals_separate_runs():
    lrs = jnp.asarray([1e-3, 1e-2, 5e-2], jnp.float32)
    keys = jax.random.split(KEY, 3)
    kwargs = dict(steps=100, data=(X, Y), batch_size=32)
    batched = jax.vmap(lambda lr, k: jgd.minimize(batch_loss, W0, jgd.momentum(lr, 0.9), key=k, **kwargs))(lrs, keys)
    for i in range(3):
        single = jgd.minimize(batch_loss, W0, jgd.momentum(lrs[i], 0.9), key=keys[i], **kwargs)
        np.testing.assert_allclose(batched.params[i], single.params, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(batched.losses[i], single.losses, rtol=1e-5, atol=1e-6)


def test_has_aux_and_result_pickles():
    def fun(w):
        r = X @ w - Y
        return 0.5 * jnp.mean(r * r), {"max_residual": jnp.max(jnp.abs(r))}

    r = jgd.minimize(fun, W0, jgd.sgd(0.1), steps=10, has_aux=True)
    # aux comes from the last recorded step, i.e. at the params before its update.
    assert r.aux["max_residual"].shape == ()
    back = pickle.loads(pickle.dumps(jax.device_get(r)))
    np.testing.assert_array_equal(back.losses, r.losses)
    np.testing.assert_array_equal(back.params, r.params)


def test_progress_bar(capsys):
    jgd.minimize(full_loss, W0, jgd.sgd(0.1), steps=100, progress=True)
    err = capsys.readouterr().err
    assert "minimize" in err and "100/100" in err


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(fun=lambda w: w, steps=5), ValueError, "scalar"),
        (dict(steps=0), ValueError, "steps"),
        (dict(steps=2.5), TypeError, "steps"),
        (dict(data=(X, Y[:10]), steps=5, fun=batch_loss), ValueError, "leading size"),
        (dict(data=(X, Y), batch_size=0, key=KEY, fun=batch_loss, steps=5), ValueError, "batch_size"),
        (dict(data=(X, Y), batch_size=N + 1, key=KEY, fun=batch_loss, steps=5), ValueError, "batch_size"),
        (dict(data=(X, Y), batch_size=10, microbatches=3, key=KEY, fun=batch_loss, steps=5), ValueError, "microbatches"),
        (dict(params=jnp.zeros(D, jnp.int32), steps=5), TypeError, "floating"),
        (dict(has_aux=True, steps=5), ValueError, "has_aux"),
        (dict(fun=lambda w: (full_loss(w), 1.0), steps=5), ValueError, "has_aux=True"),
        (dict(batch_size=4, steps=5, key=KEY), ValueError, "needs data"),
        (dict(data=(X, Y), batch_size=4, steps=5, fun=batch_loss), ValueError, "key"),
        (dict(tol=-1.0, steps=5), ValueError, "tol"),
        (dict(opt="adam", steps=5), TypeError, "opt"),
        (dict(init_state=jgd.adam(0.1).init({"other": jnp.zeros(3)}), opt=jgd.adam(0.1), steps=5),
         ValueError, "tree structure"),
    ],
)
def test_bad_input(kwargs, error, match):
    call = dict(fun=full_loss, params=W0, opt=jgd.sgd(0.1))
    call.update(kwargs)
    with pytest.raises(error, match=match):
        jgd.minimize(call.pop("fun"), call.pop("params"), call.pop("opt"), **call)


def test_optax_closures_work_too():
    import optax

    with oracle():  # optax's own code needs standard promotion
        r = jgd.minimize(full_loss, W0, optax.adam(0.05), steps=2000)
    np.testing.assert_allclose(r.params, W_STAR, atol=2e-3)


def test_numpy_inputs_are_not_mutated():
    params, X_np, Y_np = np.array(W0), np.array(X), np.array(Y)
    copies = params.copy(), X_np.copy(), Y_np.copy()
    jgd.minimize(batch_loss, params, jgd.momentum(0.1), steps=20, data=(X_np, Y_np), batch_size=8, key=KEY)
    jgd.sweep(batch_loss, params, jgd.sgd, {"learning_rate": [0.1, 0.2]}, steps=5, data=(X_np, Y_np),
              batch_size=8, key=KEY)
    for before, after in zip(copies, (params, X_np, Y_np)):
        np.testing.assert_array_equal(before, after)

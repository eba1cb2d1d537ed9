"""minimize's model_state and with_key: a running mean against its closed form, per-step
keys distinct (recorded through aux), same key same run, resume bit for bit, sweeps with a
model state per seed against minimize."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from problems import diabetes

import jgd

X, Y = diabetes()
W0 = jnp.zeros(X.shape[1], jnp.float32)
MEAN = X.mean(0) + 1.0  # the statistic tracked: the features' mean, shifted off zero


def loss_with_running_mean(w, state, batch):
    """A batch-norm-like statistic: state ← 0.9·state + 0.1·mean(batch features + 1)."""
    r = batch[0] @ w - batch[1]
    return 0.5 * jnp.mean(r * r), 0.9 * state + 0.1 * jnp.mean(batch[0] + 1.0, axis=0)


def test_running_mean_follows_its_closed_form_under_full_batch():
    s0 = jnp.full(X.shape[1], 2.0, jnp.float32)
    r = jgd.minimize(loss_with_running_mean, W0, jgd.sgd(0.1), steps=37, data=(X, Y), model_state=s0)
    expected = 0.9 ** 37 * 2.0 + (1 - 0.9 ** 37) * MEAN
    np.testing.assert_allclose(r.model_state, expected, rtol=1e-5)
    # The state is not differentiated: the params equal a run whose loss ignores it.
    plain = jgd.minimize(lambda w, b: loss_with_running_mean(w, s0, b)[0], W0, jgd.sgd(0.1), steps=37, data=(X, Y))
    np.testing.assert_array_equal(r.params, plain.params)


def test_model_state_is_not_advanced_on_the_step_that_stops():
    s0 = jnp.zeros(X.shape[1], jnp.float32)
    r = jgd.minimize(loss_with_running_mean, W0, jgd.sgd(1e3), steps=100, data=(X, Y), model_state=s0)
    k = int(r.num_steps)
    assert r.diverged and k < 100
    np.testing.assert_allclose(r.model_state, (1 - 0.9 ** (k - 1)) * MEAN, rtol=1e-5)


def key_recording_loss(w, batch, key):
    r = batch[0] @ w - batch[1]
    return 0.5 * jnp.mean(r * r), jax.random.key_data(key)


def run_keys(steps, microbatches=1, key=None, **kwargs):
    key = jax.random.key(1) if key is None else key
    return jgd.minimize(key_recording_loss, W0, jgd.sgd(0.01), steps=steps, data=(X, Y), batch_size=32,
                        microbatches=microbatches, key=key, with_key=True, has_aux=True, record_aux=True, **kwargs)


def test_every_step_gets_a_key_of_its_own():
    keys = np.asarray(run_keys(50).aux)
    assert keys.shape == (50, 2) and len({tuple(k) for k in keys}) == 50
    np.testing.assert_array_equal(keys, np.asarray(run_keys(50).aux))  # same key, same keys
    assert not np.array_equal(keys, np.asarray(run_keys(50, key=jax.random.key(2)).aux))


def test_every_micro_batch_gets_a_key_of_its_own():
    seen = []

    def loss(w, batch, key):
        jax.debug.callback(lambda k: seen.append(tuple(np.asarray(k))), jax.random.key_data(key), ordered=True)
        r = batch[0] @ w - batch[1]
        return 0.5 * jnp.mean(r * r)

    jgd.minimize(loss, W0, jgd.sgd(0.01), steps=6, data=(X, Y), batch_size=32, microbatches=4,
                 key=jax.random.key(1), with_key=True)
    jax.effects_barrier()
    assert len(seen) >= 24 and len(set(seen)) == len(set(seen[:24])) == 24


def test_resume_continues_the_key_stream_and_the_state_bit_for_bit():
    def loss(w, state, batch, key):
        keep = jax.random.bernoulli(key, 0.8, batch[0].shape)
        r = jnp.where(keep, batch[0] / 0.8, 0.0) @ w - batch[1]
        return 0.5 * jnp.mean(r * r), 0.9 * state + 0.1 * jnp.mean(batch[0], axis=0)

    kwargs = dict(data=(X, Y), batch_size=32, with_key=True)
    s0 = jnp.zeros(X.shape[1], jnp.float32)
    whole = jgd.minimize(loss, W0, jgd.adam(0.05), steps=200, key=jax.random.key(3), model_state=s0, **kwargs)
    first = jgd.minimize(loss, W0, jgd.adam(0.05), steps=90, key=jax.random.key(3), model_state=s0, **kwargs)
    second = jgd.minimize(loss, first.params, jgd.adam(0.05), steps=110, key=first.key, init_state=first.state,
                          model_state=first.model_state, **kwargs)
    np.testing.assert_array_equal(second.params, whole.params)
    np.testing.assert_array_equal(second.model_state, whole.model_state)
    np.testing.assert_array_equal(np.concatenate([first.losses, second.losses]), whole.losses)


def test_sweep_with_a_model_state_per_seed_equals_minimize():
    def init_state(key):
        return jax.random.normal(key, (X.shape[1],), jnp.float32)

    s = jgd.sweep(loss_with_running_mean, W0, jgd.momentum, {"learning_rate": [0.01, 0.1]}, seeds=2,
                  key=jax.random.key(4), steps=20, data=(X, Y), batch_size=16, model_state=init_state)
    keys = jax.random.split(jax.random.key(4), 2)
    for seed in range(2):
        r = jgd.minimize(loss_with_running_mean, W0, jgd.momentum(jnp.float32(0.1)), steps=20, data=(X, Y),
                         batch_size=16, key=keys[seed], model_state=init_state(keys[seed]))
        np.testing.assert_allclose(s.model_state[1, seed], r.model_state, rtol=2e-6)
        np.testing.assert_allclose(s.losses[1, seed], r.losses, rtol=2e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(fun=lambda w, s, b: loss_with_running_mean(w, s, b)[0]), r"\(loss, new_model_state\)"),
    (dict(fun=lambda w, s, b: (loss_with_running_mean(w, s, b)[0], s[:3])), "must match the model_state"),
    (dict(model_state={"s": "running"}), "model_state"),
])
def test_bad_model_state(kwargs, match):
    call = dict(fun=loss_with_running_mean, model_state=jnp.zeros(X.shape[1], jnp.float32))
    call.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        jgd.minimize(call.pop("fun"), W0, jgd.sgd(0.1), steps=5, data=(X, Y), **call)


def test_non_array_params_say_how_to_split_them_off():
    with pytest.raises(TypeError, match="eqx.partition"):
        jgd.minimize(lambda p: jnp.sum(p["w"] ** 2), {"w": W0, "act": jax.nn.relu}, jgd.sgd(0.1), steps=5)
    with pytest.raises(TypeError, match="model_state"):
        jgd.minimize(lambda p: jnp.sum(p["w"] ** 2), {"w": W0, "count": jnp.int32(0)}, jgd.sgd(0.1), steps=5)

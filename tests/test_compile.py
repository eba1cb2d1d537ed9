"""jgd compiles its own programs at LLVM -O1 on CPU (jgd._compile): the options apply on
CPU outside traces only, XLA_FLAGS overrides them, and the numbers are those of the same
run compiled by a user's jax.jit at XLA's default -O2 (to float rounding)."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np

import jgd

compile_ = importlib.import_module("jgd._compile")
drivers = importlib.import_module("jgd._drivers")


def test_cpu_options_and_the_xla_flags_override(monkeypatch):
    assert jax.default_backend() == "cpu"
    assert compile_.options() == {"xla_backend_optimization_level": 1}
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=3")
    assert compile_.options() is None


def test_the_tuned_loop_gives_the_default_compilers_numbers():
    X = jnp.asarray(np.random.default_rng(0).normal(size=(64, 6)), jnp.float32)
    y = jnp.tanh(X @ jnp.arange(6.0, dtype=jnp.float32))

    def loss(w, batch):
        return jnp.mean((jnp.tanh(batch[0] @ w) - batch[1]) ** 2)

    kwargs = dict(steps=50, data=(X, y), batch_size=16, key=jax.random.key(0))
    tuned = jgd.minimize(loss, jnp.zeros(6), jgd.adam(0.05), **kwargs)  # jgd's program, -O1
    assert drivers.to_the_end._tuned is not None
    plain = jax.jit(lambda w: jgd.minimize(loss, w, jgd.adam(0.05), **kwargs))(jnp.zeros(6))  # the user's jit, -O2
    np.testing.assert_allclose(tuned.losses, plain.losses, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(tuned.params, plain.params, rtol=1e-5, atol=1e-7)
    assert float(tuned.losses[-1]) < 0.5 * float(tuned.losses[0])

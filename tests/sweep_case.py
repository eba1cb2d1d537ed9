"""One small sweep shared by the in-process and the multi-device/multi-process tests."""

import jax
import jax.numpy as jnp
import numpy as np

import jgd

rng = np.random.default_rng(0)
X = rng.normal(size=(64, 5)).astype(np.float32)
Y = (X @ rng.normal(size=5) + 0.1 * rng.normal(size=64)).astype(np.float32)


def loss(w, batch):
    r = batch[0] @ w - batch[1]
    return 0.5 * jnp.mean(r * r)


def init(key):
    return jax.random.normal(key, (5,), jnp.float32)


def run(chunk_size=None, data=None, **save):
    return jgd.sweep(loss, init, jgd.momentum, {"learning_rate": [0.01, 0.05, 0.1], "beta": [0.0, 0.5, 0.9]},
                     seeds=2, key=jax.random.key(3), steps=30, data=(X, Y) if data is None else data, batch_size=8,
                     chunk_size=chunk_size, **save)

# Copyright 2023 Patrick Kidger. Licensed under the Apache License, Version 2.0.
# equinox/docs/examples/mnist.ipynb (equinox 9336d82, 2026-06-27), condensed for the suite: the
# CNN, loss and train (with its inner filter_jit make_step) are upstream's as written; torch's
# MNIST loaders are replaced by random MNIST-shaped batches, and evaluation and printing are
# left out (no internet on CI). The jgd port is equinox_mnist_jgd.py;
# tests/test_ported_programs.py counts the lines that differ.
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PyTree

BATCH_SIZE = 64
LEARNING_RATE = 3e-4
STEPS = 20
SEED = 5678


class CNN(eqx.Module):
    layers: list

    def __init__(self, key):
        key1, key2, key3, key4 = jax.random.split(key, 4)
        # Standard CNN setup: convolutional layer, followed by flattening,
        # with a small MLP on top.
        self.layers = [
            eqx.nn.Conv2d(1, 3, kernel_size=4, key=key1),
            eqx.nn.MaxPool2d(kernel_size=2),
            jax.nn.relu,
            jnp.ravel,
            eqx.nn.Linear(1728, 512, key=key2),
            jax.nn.sigmoid,
            eqx.nn.Linear(512, 64, key=key3),
            jax.nn.relu,
            eqx.nn.Linear(64, 10, key=key4),
            jax.nn.log_softmax,
        ]

    def __call__(self, x: Float[Array, "1 28 28"]) -> Float[Array, "10"]:
        for layer in self.layers:
            x = layer(x)
        return x


def loss(
    model: CNN, x: Float[Array, "batch 1 28 28"], y: Int[Array, " batch"]
) -> Float[Array, ""]:
    pred_y = jax.vmap(model)(x)
    return cross_entropy(y, pred_y)


def cross_entropy(
    y: Int[Array, " batch"], pred_y: Float[Array, "batch 10"]
) -> Float[Array, ""]:
    pred_y = jnp.take_along_axis(pred_y, jnp.expand_dims(y, 1), axis=1)
    return -jnp.mean(pred_y)


def train(
    model: CNN,
    trainloader,
    optim: optax.GradientTransformation,
    steps: int,
) -> CNN:
    opt_state = optim.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def make_step(
        model: CNN,
        opt_state: PyTree,
        x: Float[Array, "batch 1 28 28"],
        y: Int[Array, " batch"],
    ):
        loss_value, grads = eqx.filter_value_and_grad(loss)(model, x, y)
        updates, opt_state = optim.update(
            grads, opt_state, eqx.filter(model, eqx.is_array)
        )
        model = eqx.apply_updates(model, updates)
        return model, opt_state, loss_value

    for step, (x, y) in zip(range(steps), trainloader):
        model, opt_state, train_loss = make_step(model, opt_state, x, y)
    return model


def trainloader():
    """Random MNIST-shaped batches (upstream uses torchvision's MNIST)."""
    rng = np.random.default_rng(0)
    return [(rng.standard_normal((BATCH_SIZE, 1, 28, 28)).astype(np.float32),
             rng.integers(0, 10, BATCH_SIZE)) for _ in range(STEPS)]


def main(learning_rate=LEARNING_RATE):
    key = jax.random.PRNGKey(SEED)
    key, subkey = jax.random.split(key, 2)
    model = CNN(subkey)
    optim = optax.adamw(learning_rate)
    return train(model, trainloader(), optim, STEPS)

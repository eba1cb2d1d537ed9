# Copyright 2024 The Flax Authors. Licensed under the Apache License, Version 2.0.
# flax/examples/mnist/train.py (flax 18f8f31, 2026-07-02), condensed for the suite: the model,
# loss and steps are upstream's as written; tfds/tensorboard/absl/orbax-export are replaced by
# random MNIST-shaped batches and a returned state (no internet on CI). The jgd port is
# flax_mnist_jgd.py; tests/test_ported_programs.py counts the lines that differ.
from functools import partial

from flax import nnx
import jax
import numpy as np
import optax
import jgd


avg_pool = partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))


class CNN(nnx.Module):
  """A simple CNN model."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
    self.batch_norm1 = nnx.BatchNorm(32, rngs=rngs)
    self.dropout1 = nnx.Dropout(rate=0.025)
    self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
    self.batch_norm2 = nnx.BatchNorm(64, rngs=rngs)
    self.avg_pool = avg_pool
    self.linear1 = nnx.Linear(3136, 256, rngs=rngs)
    self.dropout2 = nnx.Dropout(rate=0.025)
    self.linear2 = nnx.Linear(256, 10, rngs=rngs)

  def __call__(self, x, rngs: nnx.Rngs):
    x = self.avg_pool(nnx.relu(self.batch_norm1(self.dropout1(self.conv1(x), rngs=rngs))))
    x = self.avg_pool(nnx.relu(self.batch_norm2(self.conv2(x))))
    x = x.reshape(x.shape[0], -1)  # flatten
    x = nnx.relu(self.dropout2(self.linear1(x), rngs=rngs))
    x = self.linear2(x)
    return x


def loss_fn(model: CNN, batch, rngs):
  logits = model(batch['image'], rngs)
  loss = optax.softmax_cross_entropy_with_integer_labels(
    logits=logits, labels=batch['label']
  ).mean()
  return loss, logits


@nnx.jit
def train_step(model: CNN, optimizer: nnx.Optimizer, metrics: nnx.MultiMetric, batch, rngs):
  """Train for a single step."""
  grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
  (loss, logits), grads = grad_fn(model, batch, rngs)
  metrics.update(loss=loss, logits=logits, labels=batch['label'])  # In-place updates.
  optimizer.update(model, grads)  # In-place updates.


def get_datasets(batch_size, steps):
  """Random MNIST-shaped batches (upstream loads tfds' mnist)."""
  rng = np.random.default_rng(0)
  return [{'image': rng.random((batch_size, 28, 28, 1), np.float32),
           'label': rng.integers(0, 10, batch_size)} for _ in range(steps)]


def train_and_evaluate(learning_rate, momentum=0.9, batch_size=8, steps=20):
  train_ds = get_datasets(batch_size, steps)

  # Instantiate the model.
  model = CNN(rngs=nnx.Rngs(0))

  optimizer = nnx.Optimizer(
      model, jgd.sgd(learning_rate, momentum), wrt=nnx.Param
  )
  metrics = nnx.MultiMetric(
      accuracy=nnx.metrics.Accuracy(),
      loss=nnx.metrics.Average('loss'),
  )
  rngs = nnx.Rngs(0)

  model.train()  # Switch to train mode
  for batch in train_ds:
    train_step(model, optimizer, metrics, batch, rngs)
  return nnx.state(model, nnx.Param), metrics.compute()

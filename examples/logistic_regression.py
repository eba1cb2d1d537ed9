"""Softmax regression on scikit-learn's digits with jgd.minimize: full-batch GD vs SGD vs
mini-batch GD (with micro-batches) at an equal number of epochs.

    python examples/logistic_regression.py [--epochs 30] [--smoke]
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import jgd


def loss(params, batch):
    x, y = batch
    logp = jax.nn.log_softmax(x @ params["w"] + params["b"])
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def main(epochs):
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    X_train, X_test, y_train, y_test = train_test_split(X, y.astype(np.int32), test_size=0.25, random_state=0)
    n = len(y_train)
    params = {"w": jnp.zeros((64, 10), jnp.float32), "b": jnp.zeros(10, jnp.float32)}
    setups = {
        "full-batch GD": dict(batch_size=None, microbatches=1, lr=1.0),
        "SGD (b=1)": dict(batch_size=1, microbatches=1, lr=0.02),
        "mini-batch b=64, 4 micro": dict(batch_size=64, microbatches=4, lr=0.3),
    }
    print(f"{'method':<26} {'steps':>7} {'train loss':>11} {'test acc':>9} {'seconds':>8}")
    for name, s in setups.items():
        b = s["batch_size"] or n
        steps = max(1, epochs * (n // b))
        start = time.perf_counter()
        r = jgd.minimize(loss, params, jgd.sgd(s["lr"]), steps=steps, data=(X_train, y_train),
                         batch_size=s["batch_size"], microbatches=s["microbatches"], key=jax.random.key(0))
        jax.block_until_ready(r.params)
        seconds = time.perf_counter() - start
        train_loss = float(loss(r.params, (X_train, y_train)))
        accuracy = float(jnp.mean(jnp.argmax(X_test @ r.params["w"] + r.params["b"], -1) == y_test))
        print(f"{name:<26} {steps:>7} {train_loss:>11.4f} {accuracy:>9.3f} {seconds:>8.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    main(1 if args.smoke else args.epochs)

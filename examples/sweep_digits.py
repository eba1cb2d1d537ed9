"""The main job: a learning-rate × momentum × seed sweep of a small MLP on scikit-learn's
digits, as ONE compiled program (jgd.sweep), mini-batch SGD with momentum.

    python examples/sweep_digits.py [--steps 400] [--lrs 64] [--seeds 3] [--smoke]

Prints the sweep table (best marked *), the held-out accuracy of the best setting, and
writes sweep.png.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import jgd

HIDDEN = 32


def init_mlp(key, d_in=64, hidden=HIDDEN, classes=10):
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (d_in, hidden), jnp.float32) / jnp.sqrt(float(d_in)),
        "b1": jnp.zeros(hidden, jnp.float32),
        "w2": jax.random.normal(k2, (hidden, classes), jnp.float32) / jnp.sqrt(float(hidden)),
        "b2": jnp.zeros(classes, jnp.float32),
    }


def logits(params, x):
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


def loss(params, batch):
    x, y = batch
    logp = jax.nn.log_softmax(logits(params, x))
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def main(steps, num_lrs, seeds, plot_path="sweep.png"):
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    X_train, X_test, y_train, y_test = train_test_split(X, y.astype(np.int32), test_size=0.25, random_state=0)
    grid = {"learning_rate": np.logspace(-3, 0.5, num_lrs), "beta": [0.0, 0.9]}
    start = time.perf_counter()
    result = jgd.sweep(
        loss, init_mlp, jgd.momentum, grid, seeds=seeds, key=jax.random.key(0),
        steps=steps, data=(X_train, y_train), batch_size=32,
    )
    elapsed = time.perf_counter() - start
    runs = result.final_loss.size
    print(f"{runs} runs x {steps} steps in {elapsed:.1f} s (one program, compile included)\n")
    print(result.table(top=12))
    best = result.best()
    print(f"\nbest: learning_rate={best['learning_rate']:.4g} beta={best['beta']:g} "
          f"final train loss={best['final_loss']:.4f}")
    # Retrain the best setting (seed 0) to report held-out accuracy.
    k0 = jax.random.split(jax.random.key(0), seeds)[0]
    r = jgd.minimize(loss, init_mlp(k0), jgd.momentum(best["learning_rate"], best["beta"]),
                     steps=steps, data=(X_train, y_train), batch_size=32, key=k0)
    accuracy = float(jnp.mean(jnp.argmax(logits(r.params, X_test), -1) == y_test))
    print(f"held-out accuracy of the best setting: {accuracy:.3f}")
    result.plot(plot_path)
    print(f"wrote {plot_path}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lrs", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny run for the test suite")
    args = parser.parse_args()
    if args.smoke:
        main(steps=10, num_lrs=3, seeds=2)
    else:
        main(args.steps, args.lrs, args.seeds)

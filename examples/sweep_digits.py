"""The main job: a learning-rate × momentum × seed sweep of a small MLP on scikit-learn's
digits, as ONE compiled program (jgd.sweep), mini-batch SGD with momentum, selected on
held-out data.

    python examples/sweep_digits.py [--steps 400] [--lrs 64] [--seeds 3] [--cache-dir DIR] [--smoke]

The compiled program is kept in JAX's persistent compilation cache (``--cache-dir``,
default ~/.cache/jgd/jax), so a second fresh process does not compile it again.

The digits are split into train / validation / test (897 / 450 / 450). Every run is
evaluated on the validation set every 50 steps inside the program; each run keeps the
params of its best validation accuracy. The best grid point by validation accuracy (mean
over seeds) is reported with the test accuracy of the sweep's own best params: no
retraining. Prints the table (best marked *) and writes sweep.png.
"""

import argparse
import os
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


def metrics(params, data):
    x, y = data
    return {"accuracy": jnp.mean((jnp.argmax(logits(params, x), -1) == y).astype(jnp.float32)),
            "loss": loss(params, data)}


def splits():
    X, y = load_digits(return_X_y=True)
    X, y = (X / 16.0).astype(np.float32), y.astype(np.int32)
    X_rest, X_test, y_rest, y_test = train_test_split(X, y, test_size=450, random_state=0, stratify=y)
    X_train, X_val, y_train, y_val = train_test_split(X_rest, y_rest, test_size=450, random_state=0, stratify=y_rest)
    return (X_train, y_train), (X_val, y_val), (X_test, y_test)


def main(steps, num_lrs, seeds, every, plot_path="sweep.png"):
    train, val, test = splits()
    grid = {"learning_rate": np.logspace(-3, 0.5, num_lrs), "beta": [0.0, 0.9]}
    start = time.perf_counter()
    result = jgd.sweep(
        loss, init_mlp, jgd.momentum, grid, seeds=seeds, key=jax.random.key(0),
        steps=steps, data=train, batch_size=32,
        evaluate=jgd.Eval(metrics, val, every=every, monitor="accuracy", mode="max"),
    )
    elapsed = time.perf_counter() - start
    runs = result.final_loss.size
    print(f"{runs} runs x {steps} steps in {elapsed:.1f} s (one program, compile included)\n")
    print("columns: final loss = last mini-batch training loss; accuracy, loss = validation "
          "metrics at the last evaluation;\n best accuracy / best step = each run's best "
          "validation accuracy and where it was reached (means over seeds)\n")
    print(result.table(top=12))
    best = result.best()
    by_train = result.best(by="final_loss")
    test_accuracy = float(metrics(best["params"], test)["accuracy"])
    print(f"\nbest by validation accuracy: learning_rate={best['learning_rate']:.4g} beta={best['beta']:g} "
          f"validation accuracy={best['accuracy']:.3f} (mean over seeds)")
    print(f"test accuracy of the sweep's own best params (seed {best['seed']}, step "
          f"{int(result.best_step[best['index'] + (best['seed'],)])}): {test_accuracy:.3f}")
    print(f"(selecting by the final training loss instead would pick learning_rate="
          f"{by_train['learning_rate']:.4g} beta={by_train['beta']:g}, test accuracy "
          f"{float(metrics(by_train['params'], test)['accuracy']):.3f})")
    result.plot(plot_path)
    print(f"wrote {plot_path}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lrs", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/jgd/jax"),
                        help="JAX's persistent compilation cache: a second run compiles nothing ('' for none)")
    parser.add_argument("--smoke", action="store_true", help="tiny run for the test suite")
    args = parser.parse_args()
    if args.cache_dir and not args.smoke:
        jax.config.update("jax_compilation_cache_dir", args.cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # every program, small ones too
    if args.smoke:
        main(steps=10, num_lrs=3, seeds=2, every=5)
    else:
        main(args.steps, args.lrs, args.seeds, args.every)

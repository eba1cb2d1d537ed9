"""Tune adamw's learning rate and weight decay by gradient descent on the validation loss,
through the whole unrolled training run (``minimize(differentiable=True)``), and compare
with a grid sweep given the same budget.

    python examples/hypergradient.py [--steps 200] [--outer 12] [--smoke]

Softmax regression on scikit-learn's digits (train / validation / test 897 / 450 / 450),
full-batch adamw for ``steps`` steps. The hyperparameters are optimized in log space:
``h = (log lr, log wd)``, ``val(h)`` = validation cross-entropy after training. The outer
loop is itself ``jgd.minimize`` with ``jgd.adam``: each of its steps is one training
run forward and its reverse pass (about 3 runs' worth of work). The grid gets the same
budget in runs: 3 × ``outer`` points of a log grid over the same ranges, one
``jgd.sweep``. Prints both selections' validation loss and test accuracy.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from sweep_digits import splits

import jgd


def cross_entropy(params, data):
    x, y = data
    logp = jax.nn.log_softmax(x @ params["w"] + params["b"])
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def accuracy(params, data):
    x, y = data
    return float(jnp.mean(jnp.argmax(x @ params["w"] + params["b"], -1) == y))


INIT = {"w": jnp.zeros((64, 10), jnp.float32), "b": jnp.zeros(10, jnp.float32)}


def main(steps, outer, checkpoint_every):
    train, val, test = splits()

    def trained(log_hyper):
        lr, wd = jnp.exp(log_hyper)
        return jgd.minimize(cross_entropy, INIT, jgd.adamw(lr, weight_decay=wd), steps=steps, data=train,
                            differentiable=True, checkpoint_every=checkpoint_every).params

    def validation_loss(log_hyper):
        return cross_entropy(trained(log_hyper), val)

    # Gradient descent on the hyperparameters: minimize, differentiating through minimize.
    start = time.perf_counter()
    log_hyper0 = jnp.log(jnp.array([1e-2, 1e-2], jnp.float32))
    outer_run = jgd.minimize(validation_loss, log_hyper0, jgd.adam(0.6), steps=outer)
    tuned = outer_run.best_params
    hyper_params = trained(tuned)
    hyper_time = time.perf_counter() - start
    lr, wd = np.exp(np.asarray(tuned))

    # The same budget for a grid: 3 runs per outer step.
    per_axis = max(2, int(np.sqrt(3 * outer)))
    grid = {"learning_rate": np.logspace(-3, 0, per_axis), "weight_decay": np.logspace(-4, 0, per_axis)}
    start = time.perf_counter()
    result = jgd.sweep(cross_entropy, INIT, jgd.adamw, grid, steps=steps, data=train,
                       evaluate=jgd.Eval(cross_entropy, val, monitor="eval"))
    best = result.best(by="eval", mode="min")
    grid_time = time.perf_counter() - start

    print(f"softmax regression on digits, adamw, {steps} full-batch steps per training run\n")
    print(f"{'method':<34}{'learning_rate':>14}{'weight_decay':>14}{'val loss':>10}{'test acc':>10}{'wall s':>8}")
    print(f"{f'hypergradient ({outer} outer steps)':<34}{lr:>14.4g}{wd:>14.3g}"
          f"{float(cross_entropy(hyper_params, val)):>10.4f}{accuracy(hyper_params, test):>10.3f}{hyper_time:>8.1f}")
    print(f"{f'grid ({per_axis}x{per_axis} = {per_axis**2} runs)':<34}{best['learning_rate']:>14.4g}"
          f"{best['weight_decay']:>14.3g}{best['eval']:>10.4f}{accuracy(best['params'], test):>10.3f}{grid_time:>8.1f}")
    print("\nvalidation loss along the outer descent:", np.round(np.asarray(outer_run.losses), 4))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--outer", type=int, default=16)
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--smoke", action="store_true", help="tiny run for the test suite")
    args = parser.parse_args()
    if args.smoke:
        main(steps=10, outer=2, checkpoint_every=5)
    else:
        main(args.steps, args.outer, args.checkpoint_every)

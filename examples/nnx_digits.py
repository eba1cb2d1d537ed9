"""A flax.nnx MLP with batch norm and dropout on scikit-learn's digits, trained by
jgd.minimize with a warmup-cosine learning rate and held-out evaluation, then a sweep
over the schedule's peak as one compiled program.

    python examples/nnx_digits.py [--steps 600] [--smoke]

The pattern: split the model into its params and the rest (`nnx.split(model, nnx.Param,
...)`); the loss merges them (with `copy=True`, needed inside a traced loss in flax 0.12),
runs the model with the step's PRNG key for dropout, and returns the new batch
statistics as the model state. jgd.schedules' numbers are pytree leaves, so the sweep over
`peak_value` compiles once.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from sweep_digits import splits

import jgd


class MLP(nnx.Module):
    def __init__(self, rngs, hidden=64, rate=0.2):
        self.linear1 = nnx.Linear(64, hidden, rngs=rngs)
        self.bn = nnx.BatchNorm(hidden, momentum=0.9, rngs=rngs)
        self.dropout = nnx.Dropout(rate)
        self.linear2 = nnx.Linear(hidden, 10, rngs=rngs)

    def __call__(self, x, key=None):
        h = nnx.relu(self.bn(self.linear1(x)))
        return self.linear2(self.dropout(h, rngs=key, deterministic=key is None))


GRAPHDEF, PARAMS, REST = nnx.split(MLP(nnx.Rngs(0)), nnx.Param, ...)


def loss(params, rest, batch, key):
    model = nnx.merge(GRAPHDEF, params, rest, copy=True)
    x, y = batch
    logp = jax.nn.log_softmax(model(x, key))
    _, _, new_rest = nnx.split(model, nnx.Param, ...)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1)), new_rest


def accuracy(params, rest, data):
    model = nnx.merge(GRAPHDEF, params, rest, copy=True)
    model.eval()  # batch norm uses its running statistics, no dropout
    x, y = data
    return {"accuracy": jnp.mean((jnp.argmax(model(x), -1) == y).astype(jnp.float32))}


def adamw_warmup_cosine(peak_value, steps):
    return jgd.adamw(jgd.schedules.warmup_cosine_decay(0.0, peak_value, warmup_steps=steps // 10, decay_steps=steps),
                     weight_decay=1e-4)


def main(steps, peaks):
    train, val, test = splits()
    evaluate = jgd.Eval(accuracy, val, every=steps // 10, monitor="accuracy", mode="max")
    common = dict(steps=steps, data=train, batch_size=32, model_state=REST, with_key=True, evaluate=evaluate)
    r = jgd.minimize(loss, PARAMS, adamw_warmup_cosine(3e-3, steps), key=jax.random.key(0), **common)
    test_accuracy = float(accuracy(r.best_params, r.best_model_state, test)["accuracy"])
    print(f"minimize: best validation accuracy {float(r.best_loss):.3f} at step {int(r.best_step)}, "
          f"test accuracy of those params {test_accuracy:.3f}")

    s = jgd.sweep(loss, PARAMS, lambda peak_value: adamw_warmup_cosine(peak_value, steps),
                  {"peak_value": peaks}, seeds=2, key=jax.random.key(1), **common)
    print("\nsweep over the warmup-cosine peak (one program):")
    print(s.table())
    best = s.best()
    params, rest = best["params"], jax.tree.map(lambda x: x[best["index"] + (best["seed"],)], s.best_model_state)
    print(f"best peak {best['peak_value']:.3g}: validation accuracy {best['accuracy']:.3f}, test accuracy "
          f"{float(accuracy(params, rest, test)['accuracy']):.3f}")
    plot(s, steps, "nnx_digits.png")
    print("wrote nnx_digits.png")


def plot(s, steps, path):
    """Left: each swept schedule (the learning rate at every step); right: the held-out accuracy
    of each, the best in black."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    count = np.arange(steps)
    best = s.best()["peak_value"]
    for peak, curve in zip(s.hparams["peak_value"], np.nanmean(s.evals["accuracy"], axis=-2)):
        schedule = jgd.schedules.warmup_cosine_decay(0.0, float(peak), warmup_steps=steps // 10, decay_steps=steps)
        colour = "black" if peak == best else None
        left.plot(count, jax.vmap(schedule)(count), color=colour, label=f"peak {peak:.2g}")
        right.plot(s.eval_steps, curve, marker=".", color=colour, label=f"peak {peak:.2g}")
    left.set(yscale="log", xlabel="step", ylabel="learning rate (warmup-cosine schedule)",
             title="the swept schedules (one compiled program)")
    right.set(xlabel="step", ylabel="validation accuracy (mean over 2 seeds)", title="held-out accuracy by peak")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--smoke", action="store_true", help="tiny run for the test suite")
    args = parser.parse_args()
    if args.smoke:
        main(steps=20, peaks=[1e-3, 1e-2])
    else:
        main(args.steps, np.logspace(-4, -1, 8))

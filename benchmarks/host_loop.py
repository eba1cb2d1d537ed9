"""Conv nets on CPU: ``minimize(loop="host")`` and ``loop="device"`` against a Python
loop over the same jitted optax step (the goal: host ≤ 1.2× the Python loop). XLA:CPU
runs convolutions slowly inside a while loop (jax#12868), so every compiled loop — jgd's
device loop, a hand-written ``jit(fori_loop)`` — crawls; ``loop="host"`` calls compiled
segments of straight-line steps instead.

Models: a 2-conv-layer CNN on scikit-learn's digits (8×8) and flax's mnist example CNN
(conv 32, avg-pool, conv 64, avg-pool, dense 256, dense 10) on MNIST-shaped 28×28 inputs
(random images: this machine has no internet; the step's cost does not depend on the
pixels). Adam, mini-batches sampled on device from the example axis in both contenders.
Per-step time, interleaved rounds, median; ``HOST_STEPS`` (steps per host call) swept.
A sweep of the digits CNN over 8 learning rates: ``sweep(loop="host")`` and the device
loop against a Python loop running the 8 runs one after another (the same jitted step).

    python benchmarks/host_loop.py [--smoke] [--only sweep]

Writes results/host_loop.json.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import interleaved, write

import jgd
from jgd import _drivers
from jgd._sampling import batch_indices


def conv(h, kernel):
    return jax.lax.conv_general_dilated(h, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def avg_pool(h):
    n, height, width, c = h.shape
    return h.reshape(n, height // 2, 2, width // 2, 2, c).mean(axis=(2, 4))


def digits_cnn():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    images = jnp.asarray(X.reshape(-1, 8, 8, 1) / 16, jnp.float32)
    keys = jax.random.split(jax.random.key(0), 3)
    params = {"c1": jax.random.normal(keys[0], (3, 3, 1, 16)) * 0.3,
              "c2": jax.random.normal(keys[1], (3, 3, 16, 32)) * 0.1,
              "w": jax.random.normal(keys[2], (8 * 8 * 32, 10)) * 0.01}

    def logits(p, x):
        h = jax.nn.relu(conv(jax.nn.relu(conv(x, p["c1"])), p["c2"]))
        return h.reshape(h.shape[0], -1) @ p["w"]

    return logits, params, (images, jnp.asarray(y))


def flax_mnist_cnn(examples):
    """flax's examples/mnist CNN, written out (the same layers, lecun-normal init)."""
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.random((examples, 28, 28, 1)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, examples))
    init = jax.nn.initializers.lecun_normal()
    keys = jax.random.split(jax.random.key(0), 4)
    params = {"c1": init(keys[0], (3, 3, 1, 32)), "b1": jnp.zeros(32),
              "c2": init(keys[1], (3, 3, 32, 64)), "b2": jnp.zeros(64),
              "d1": init(keys[2], (7 * 7 * 64, 256)), "e1": jnp.zeros(256),
              "d2": init(keys[3], (256, 10)), "e2": jnp.zeros(10)}

    def logits(p, x):
        h = avg_pool(jax.nn.relu(conv(x, p["c1"]) + p["b1"]))
        h = avg_pool(jax.nn.relu(conv(h, p["c2"]) + p["b2"]))
        h = jax.nn.relu(h.reshape(h.shape[0], -1) @ p["d1"] + p["e1"])
        return h @ p["d2"] + p["e2"]

    return logits, params, (images, labels)


def compare(name, logits, params, data, steps, batch, repeats, host_steps):
    def loss(p, b):
        return optax.softmax_cross_entropy_with_integer_labels(logits(p, b[0]), b[1]).mean()

    n = data[1].shape[0]
    tx = optax.adam(1e-3)

    @jax.jit
    def step(p, s, t):  # what a user's loop calls: a batch (jgd's sampler, O(batch)), one adam step
        index = batch_indices(jax.random.key(1), t, n, batch)
        value, g = jax.value_and_grad(loss)(p, jax.tree.map(lambda x: x[index], data))
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, value

    def python_loop():
        p, s = params, tx.init(params)
        for t in range(steps):
            p, s, value = step(p, s, t)
        return jax.block_until_ready(p)

    common = dict(steps=steps, data=data, batch_size=batch, key=jax.random.key(2))
    opt = jgd.adam(1e-3)

    def device():
        return jax.block_until_ready(jgd.minimize(loss, params, opt, **common).params)

    def host_with(k):
        def run():
            default, _drivers.HOST_STEPS = _drivers.HOST_STEPS, k
            try:
                return jax.block_until_ready(jgd.minimize(loss, params, opt, loop="host", **common).params)
            finally:
                _drivers.HOST_STEPS = default
        return run

    contenders = {"python_loop": python_loop, "device": device}
    contenders.update({f"host_{k}": host_with(k) for k in host_steps})
    first_call = {}
    for contender, run in contenders.items():  # compile and warm every contender; the first call's time
        start = time.perf_counter()
        run()
        first_call[contender] = time.perf_counter() - start
    t = interleaved(contenders, repeats)
    per_step = {k: 1e3 * v / steps for k, v in t.items()}
    ratios = {k: t[k] / t["python_loop"] for k in t}
    print(f"{name}: " + ", ".join(f"{k} {per_step[k]:.2f} ms/step ({ratios[k]:.2f}x; first call "
                                  f"{first_call[k]:.1f} s)" for k in t))
    return {"steps": steps, "batch_size": batch, "params": sum(x.size for x in jax.tree.leaves(params)),
            "ms_per_step": per_step, "ratio_to_python_loop": ratios,
            "first_call_seconds_compile_included": first_call}


def sweep_compare(logits, params, data, steps, batch, repeats, runs=8):
    """``runs`` learning rates of one model: a sweep through the host loop and through the
    device loop against a Python loop over the runs, each its own jitted-step loop."""
    def loss(p, b):
        return optax.softmax_cross_entropy_with_integer_labels(logits(p, b[0]), b[1]).mean()

    n = data[1].shape[0]
    lrs = np.logspace(-3.5, -2, runs)

    @jax.jit
    def step(p, s, t, lr):  # the learning rate an argument: one compilation for the runs
        index = batch_indices(jax.random.key(1), t, n, batch)
        value, g = jax.value_and_grad(loss)(p, jax.tree.map(lambda x: x[index], data))
        u, s = optax.adam(lr).update(g, s, p)
        return optax.apply_updates(p, u), s, value

    def python_loop():
        finals = []
        for lr in lrs:
            p, s = params, optax.adam(lr).init(params)
            for t in range(steps):
                p, s, value = step(p, s, t, jnp.float32(lr))
            finals.append(p)
        return jax.block_until_ready(finals)

    common = dict(steps=steps, data=data, batch_size=batch, key=jax.random.key(2))

    def sweep_with(loop):
        return lambda: jgd.sweep(loss, params, jgd.adam, {"learning_rate": lrs}, loop=loop, **common).final_loss

    contenders = {"python_loop": python_loop, "sweep_host": sweep_with("host"), "sweep_device": sweep_with("device")}
    first_call = {}
    for contender, run in contenders.items():
        start = time.perf_counter()
        run()
        first_call[contender] = time.perf_counter() - start
    t = interleaved(contenders, repeats)
    ratios = {k: t[k] / t["python_loop"] for k in t}
    print(f"sweep of {runs} runs x {steps} steps: " + ", ".join(
        f"{k} {t[k]:.2f} s ({ratios[k]:.2f}x; first call {first_call[k]:.1f} s)" for k in t))
    return {"runs": runs, "steps": steps, "batch_size": batch, "seconds": t, "ratio_to_python_loop": ratios,
            "first_call_seconds_compile_included": first_call}


def main(smoke, only=None):
    if only == "sweep":
        import json
        import pathlib

        path = pathlib.Path(__file__).resolve().parent / "results" / "host_loop.json"
        results = json.loads(path.read_text())["results"]
        logits, params, data = digits_cnn()
        results["digits-2conv-sweep"] = sweep_compare(logits, params, data, 4 if smoke else 64, 32, 1 if smoke else 5)
        write("host_loop", results, smoke)
        return
    results = {}
    steps, repeats, host_steps = (4, 1, (2,)) if smoke else (160, 5, (1, 2, 4, 8))
    logits, params, data = digits_cnn()
    results["digits-2conv"] = compare("2-conv CNN, digits", logits, params, data, steps, 32, repeats, host_steps)
    results["digits-2conv-sweep"] = sweep_compare(logits, params, data, 4 if smoke else 64, 32, 1 if smoke else 5,
                                                  runs=2 if smoke else 8)
    if not smoke:  # the smoke run checks the script on the small model only
        logits, params, data = flax_mnist_cnn(4096)
        results["flax-mnist-cnn"] = compare("flax mnist CNN", logits, params, data, 32, 32, 3, (2, 4, 8))
    write("host_loop", results, smoke)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--only", choices=["sweep"])
    args = parser.parse_args()
    main(args.smoke, args.only)

"""What differentiating through a descent costs: memory of the compiled hypergradient
with and without rematerialisation, and time of the differentiable loop vs the normal one.

    python benchmarks/hypergradient.py [--smoke]

Model: a 64-280-10 tanh MLP (21,010 params) on scikit-learn's digits (1,797 examples,
full batch), adam, 2,000 steps. Memory: ``temp_size_in_bytes`` of
``jax.jit(jax.grad(validation loss w.r.t. the learning rate)).lower(...).compile()
.memory_analysis()``, with ``checkpoint_every=None`` (every step's intermediate values
kept) and ``checkpoint_every=50`` (the loop state kept every 50 steps, segments
recomputed). Nothing is run for the memory figures. Time (interleaved, median of
repeats): the normal loop, the differentiable loop forward only, and the hypergradient
(forward + reverse) with ``checkpoint_every=50``.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from _common import interleaved, write
from sklearn.datasets import load_digits

import jgd

HIDDEN = 280


def problem():
    X, y = load_digits(return_X_y=True)
    X, y = jnp.asarray(X / 16.0, jnp.float32), jnp.asarray(y, jnp.int32)
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"w1": jax.random.normal(k1, (64, HIDDEN)) / 8.0, "b1": jnp.zeros(HIDDEN),
              "w2": jax.random.normal(k2, (HIDDEN, 10)) / np.sqrt(HIDDEN), "b2": jnp.zeros(10)}

    def loss(p, batch):
        x, labels = batch
        logp = jax.nn.log_softmax(jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"])
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))

    return loss, params, (X, y)


def main(smoke):
    steps, every = (10, 5) if smoke else (2000, 50)
    loss, params, data = problem()
    size = sum(x.size for x in jax.tree.leaves(params))

    def run(lr, differentiable, checkpoint_every=None):
        return jgd.minimize(loss, params, jgd.adam(lr), steps=steps, data=data,
                            differentiable=differentiable, checkpoint_every=checkpoint_every)

    def validation(lr, checkpoint_every):
        return loss(run(lr, True, checkpoint_every).params, data)

    memory = {}
    for name, checkpoint_every in (("no_remat", None), (f"checkpoint_every_{every}", every)):
        compiled = jax.jit(jax.grad(validation), static_argnums=1).lower(1e-3, checkpoint_every).compile()
        memory[name] = compiled.memory_analysis().temp_size_in_bytes
    ratio = memory["no_remat"] / memory[f"checkpoint_every_{every}"]
    print(f"{size:,} params, {steps} steps: hypergradient temporary memory")
    for name, value in memory.items():
        print(f"  {name:<22} {value / 2**20:10.1f} MiB")
    print(f"  ratio {ratio:.1f}x smaller with checkpoint_every={every}")

    normal = jax.jit(lambda lr: run(lr, False).params)
    forward = jax.jit(lambda lr: run(lr, True, every).params)
    hyper = jax.jit(jax.value_and_grad(lambda lr: validation(lr, every)))
    block = jax.block_until_ready
    times = interleaved({"normal": lambda: block(normal(1e-3)), "differentiable": lambda: block(forward(1e-3)),
                         "hypergradient": lambda: block(hyper(1e-3))}, repeats=1 if smoke else 5)
    print(f"time per run of {steps} steps (median of interleaved repeats)")
    for name, seconds in times.items():
        print(f"  {name:<22} {seconds * 1e3:10.1f} ms   {seconds / times['normal']:.2f}x normal")
    write("hypergradient", {"params": size, "steps": steps, "checkpoint_every": every, "temp_bytes": memory,
                            "memory_ratio": ratio, "seconds": times,
                            "ratios": {k: v / times["normal"] for k, v in times.items()}}, smoke)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny run for the test suite")
    main(parser.parse_args().smoke)

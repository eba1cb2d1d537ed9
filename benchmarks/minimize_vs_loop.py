"""jgd.minimize (one compiled loop) vs the usual Python loop over a jitted optax step,
2,000 steps of Adam on a tiny model (~300 params) and a 10k-parameter MLP.

    python benchmarks/minimize_vs_loop.py [--smoke]
"""

import argparse

from _common import interleaved, write

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jgd


def mlp(hidden, d_in=16, key=0):
    k1, k2 = jax.random.split(jax.random.key(key))
    return {"w1": jax.random.normal(k1, (d_in, hidden)) * 0.1, "b1": jnp.zeros(hidden),
            "w2": jax.random.normal(k2, (hidden, 1)) * 0.1, "b2": jnp.zeros(1)}


def make_loss(X, y):
    def loss(p):
        h = jnp.tanh(X @ p["w1"] + p["b1"])
        return jnp.mean(jnp.square(h @ p["w2"] + p["b2"] - y))
    return loss


def main(smoke):
    steps = 50 if smoke else 2000
    repeats = 2 if smoke else 7
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.normal(size=(256, 16)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(256, 1)), jnp.float32)
    results = {}
    print(f"{'model':<12} {'params':>7} {'python loop ms':>15} {'minimize ms':>12} {'speed-up':>9}")
    for name, hidden in (("tiny", 16), ("mlp-10k", 580)):
        params = mlp(hidden)
        loss = make_loss(X, y)
        optax_opt = optax.adam(1e-3)

        @jax.jit
        def step(p, s):
            g = jax.grad(loss)(p)
            u, s = optax_opt.update(g, s, p)
            return optax.apply_updates(p, u), s

        def python_loop():
            p, s = params, optax_opt.init(params)
            for _ in range(steps):
                p, s = step(p, s)
            return jax.block_until_ready(p)

        opt = jgd.adam(1e-3)

        def compiled():
            return jax.block_until_ready(jgd.minimize(loss, params, opt, steps=steps).params)

        t = interleaved({"python_loop": python_loop, "minimize": compiled}, repeats)
        size = sum(x.size for x in jax.tree.leaves(params))
        ratio = t["python_loop"] / t["minimize"]
        results[name] = {"params": size, "steps": steps, "seconds": t, "speedup": ratio}
        print(f"{name:<12} {size:>7} {1e3 * t['python_loop']:>15.1f} {1e3 * t['minimize']:>12.1f} {ratio:>8.1f}x")
    write("minimize_vs_loop", results, smoke)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    main(parser.parse_args().smoke)

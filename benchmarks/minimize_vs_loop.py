"""jgd.minimize (one compiled loop) vs the usual Python loop over a jitted optax step,
2,000 steps of Adam on a tiny model (~300 params) and a 10k-parameter MLP.

A third contender, ``fori_floor``, is the same optax step inside a hand-written
``lax.fori_loop`` without minimize's bookkeeping (losses, norms, stopping, best
iterate): no compiled loop can beat it, so ``python_loop / fori_floor`` bounds the
speed-up any compiled loop can reach on that model and machine.

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
    results = {}
    print(f"{'model':<16} {'params':>7} {'examples':>8} {'python loop ms':>15} {'minimize ms':>12} "
          f"{'floor ms':>9} {'speed-up':>9} {'bound':>6}")
    for name, hidden, examples in (("tiny", 16, 256), ("tiny-32-examples", 16, 32), ("mlp-10k", 580, 256)):
        X = jnp.asarray(rng.normal(size=(examples, 16)), jnp.float32)
        y = jnp.asarray(rng.normal(size=(examples, 1)), jnp.float32)
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

        @jax.jit
        def fori(p, s):
            return jax.lax.fori_loop(0, steps, lambda _, c: step.__wrapped__(*c), (p, s))

        def fori_floor():
            return jax.block_until_ready(fori(params, optax_opt.init(params)))

        opt = jgd.adam(1e-3)

        def compiled():
            return jax.block_until_ready(jgd.minimize(loss, params, opt, steps=steps).params)

        t = interleaved({"python_loop": python_loop, "minimize": compiled, "fori_floor": fori_floor}, repeats)
        size = sum(x.size for x in jax.tree.leaves(params))
        ratio = t["python_loop"] / t["minimize"]
        bound = t["python_loop"] / t["fori_floor"]
        results[name] = {"params": size, "examples": examples, "steps": steps, "seconds": t,
                         "speedup": ratio, "speedup_bound": bound}
        print(f"{name:<16} {size:>7} {examples:>8} {1e3 * t['python_loop']:>15.1f} "
              f"{1e3 * t['minimize']:>12.1f} {1e3 * t['fori_floor']:>9.1f} {ratio:>8.1f}x {bound:>5.1f}x")
    write("minimize_vs_loop", results, smoke)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    main(parser.parse_args().smoke)

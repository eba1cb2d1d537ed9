"""jgd.minimize (one compiled loop) vs the usual Python loop over a jitted optax step,
2,000 steps of Adam on a tiny model (~300 params) and a 10k-parameter MLP.

A third contender, ``fori_floor``, is the same optax step inside a hand-written
``lax.fori_loop`` without minimize's bookkeeping (losses, norms, stopping, best
iterate): no compiled loop can beat it, so ``python_loop / fori_floor`` bounds the
speed-up any compiled loop can reach on that model and machine.

    python benchmarks/minimize_vs_loop.py [--smoke]
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import interleaved, write

import jgd


def mlp(hidden, d_in=16, key=0, depth=1):
    """An MLP with ``depth`` hidden layers of width ``hidden`` and a scalar output."""
    keys = jax.random.split(jax.random.key(key), depth + 1)
    widths = [d_in] + [hidden] * depth
    params = {f"layer{i}": {"w": jax.random.normal(keys[i], (widths[i], hidden)) / np.sqrt(widths[i]),
                            "b": jnp.zeros(hidden)} for i in range(depth)}
    params["out"] = {"w": jax.random.normal(keys[-1], (hidden, 1)) * 0.1, "b": jnp.zeros(1)}
    return params


def make_loss(X, y):
    def loss(p):
        h = X
        for i in range(len(p) - 1):
            h = jnp.tanh(h @ p[f"layer{i}"]["w"] + p[f"layer{i}"]["b"])
        return jnp.mean(jnp.square(h @ p["out"]["w"] + p["out"]["b"] - y))
    return loss


def main(smoke, only=None):
    if only:
        import json

        from _common import HERE

        previous = json.loads((HERE / "results" / "minimize_vs_loop.json").read_text())["results"]
        previous["digits-key-and-state"] = key_and_state(smoke)
        write("minimize_vs_loop", previous, smoke)
        return
    steps = 50 if smoke else 2000
    repeats = 2 if smoke else 7
    rng = np.random.default_rng(0)
    results = {}
    print(f"{'model':<16} {'params':>7} {'examples':>8} {'python loop ms':>15} {'minimize ms':>12} "
          f"{'flat ms':>8} {'floor ms':>9} {'speed-up':>9} {'bound':>6}")
    models = (("tiny", 16, 256, 1), ("tiny-32-examples", 16, 32, 1), ("mlp-10k", 580, 256, 1),
              ("deep-mlp-24x16", 16, 32, 24))
    if smoke:  # every contender, two small models
        models = (("tiny", 16, 32, 1), ("deep-mlp-3x16", 16, 32, 3))
    for name, hidden, examples, depth in models:
        X = jnp.asarray(rng.normal(size=(examples, 16)), jnp.float32)
        y = jnp.asarray(rng.normal(size=(examples, 1)), jnp.float32)
        params = mlp(hidden, depth=depth)
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

        flat_opt = jgd.flat(jgd.adam(1e-3))

        def compiled_flat():  # params kept as jgd.flat buffers through the loop
            return jax.block_until_ready(jgd.minimize(loss, params, flat_opt, steps=steps).params)

        t = interleaved({"python_loop": python_loop, "minimize": compiled, "minimize_flat": compiled_flat,
                         "fori_floor": fori_floor}, repeats)
        size = sum(x.size for x in jax.tree.leaves(params))
        ratio = t["python_loop"] / t["minimize"]
        bound = t["python_loop"] / t["fori_floor"]
        results[name] = {"params": size, "leaves": len(jax.tree.leaves(params)), "examples": examples,
                         "steps": steps, "seconds": t, "speedup": ratio, "speedup_bound": bound,
                         "speedup_flat": t["python_loop"] / t["minimize_flat"]}
        print(f"{name:<16} {size:>7} {examples:>8} {1e3 * t['python_loop']:>15.1f} "
              f"{1e3 * t['minimize']:>12.1f} {1e3 * t['minimize_flat']:>8.1f} {1e3 * t['fori_floor']:>9.1f} "
              f"{ratio:>8.1f}x {bound:>5.1f}x")
    results["digits-key-and-state"] = key_and_state(smoke)
    write("minimize_vs_loop", results, smoke)


def key_and_state(smoke):
    """minimize on the digits MLP, mini-batches of 32, with a per-step key and a model state
    (a running mean of the batch's features) against the same loop without them."""
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
    import sweep_digits

    train, _, _ = sweep_digits.splits()
    params = sweep_digits.init_mlp(jax.random.key(0))
    steps = 50 if smoke else 2000
    state0 = jnp.zeros(64, jnp.float32)

    def with_both(p, state, batch, key):
        noise = jax.random.key_data(key)[0].astype(jnp.float32)  # used, so its derivation is not optimised away
        loss = sweep_digits.loss(p, batch) + 0.0 * noise
        return loss, 0.9 * state + 0.1 * jnp.mean(batch[0], axis=0)

    common = dict(steps=steps, data=train, batch_size=32, key=jax.random.key(0))

    def plain():
        return jax.block_until_ready(jgd.minimize(sweep_digits.loss, params, jgd.momentum(0.1, 0.9), **common).params)

    def keyed():
        return jax.block_until_ready(jgd.minimize(with_both, params, jgd.momentum(0.1, 0.9), model_state=state0,
                                                  with_key=True, **common).params)

    t = interleaved({"plain": plain, "with_key_and_state": keyed}, 1 if smoke else 7)
    ratio = t["with_key_and_state"] / t["plain"]
    print(f"digits MLP, {steps} mini-batch steps: plain {1e3 * t['plain']:.1f} ms, with_key + model_state "
          f"{1e3 * t['with_key_and_state']:.1f} ms ({ratio:.2f}x)")
    return {"steps": steps, "seconds": t, "overhead": ratio}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--only-key-and-state", action="store_true", help="rerun that case, keep the rest")
    args = parser.parse_args()
    main(args.smoke, args.only_key_and_state)

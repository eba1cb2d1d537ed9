"""jgd.sweep (K learning rates as one program) vs K sequential compiled runs
(jgd.minimize, one per learning rate) vs the Python-loop user code (a jitted optax step
called per step per run): momentum, 500 steps, on linear regression (1000×20) and a
10k-parameter MLP.

    python benchmarks/sweep_vs_sequential.py [--smoke]
"""

import argparse

from _common import interleaved, write

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jgd


def problems(n):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 20)).astype(np.float32)
    y = (X @ rng.normal(size=20)).astype(np.float32)[:, None]

    def linear(p):
        return jnp.mean(jnp.square(X @ p["w"] - y))

    Xm = jnp.asarray(X[:256])
    ym = jnp.asarray(y[:256])

    def mlp(p):
        h = jnp.tanh(Xm @ p["w1"] + p["b1"])
        return jnp.mean(jnp.square(h @ p["w2"] + p["b2"] - ym))

    key1, key2 = jax.random.split(jax.random.key(0))
    hidden = 450  # 20*450 + 450 + 450 + 1 ≈ 10k params
    return {
        "linear-1000x20": (linear, {"w": jnp.zeros((20, 1), jnp.float32)}),
        "mlp-10k": (mlp, {"w1": jax.random.normal(key1, (20, hidden)) * 0.1, "b1": jnp.zeros(hidden),
                          "w2": jax.random.normal(key2, (hidden, 1)) * 0.1, "b2": jnp.zeros(1)}),
    }


def main(smoke):
    K = 4 if smoke else 64
    steps = 20 if smoke else 500
    repeats = 1 if smoke else 3
    lrs = np.logspace(-4, -1, K)
    results = {}
    print(f"{'problem':<16} {'sweep s':>8} {'sequential s':>13} {'python loop s':>14} {'vs seq':>7} {'vs loop':>8}")
    for name, (loss, params) in problems(64 if smoke else 1000).items():
        def swept():
            return jgd.sweep(loss, params, jgd.momentum, {"learning_rate": lrs}, steps=steps).losses

        def sequential():
            out = [jgd.minimize(loss, params, jgd.momentum(lr), steps=steps).losses for lr in lrs]
            return jax.block_until_ready(out)

        def python_loop():
            out = []
            for lr in lrs:
                opt = optax.sgd(lr, momentum=0.9)

                @jax.jit
                def step(p, s):
                    g = jax.grad(loss)(p)
                    u, s = opt.update(g, s, p)
                    return optax.apply_updates(p, u), s

                p, s = params, opt.init(params)
                for _ in range(steps):
                    p, s = step(p, s)
                out.append(p)
            return jax.block_until_ready(out)

        t = interleaved({"sweep": swept, "sequential": sequential, "python_loop": python_loop}, repeats)
        results[name] = {"K": K, "steps": steps, "seconds": t,
                         "speedup_vs_sequential": t["sequential"] / t["sweep"],
                         "speedup_vs_python_loop": t["python_loop"] / t["sweep"]}
        r = results[name]
        print(f"{name:<16} {t['sweep']:>8.2f} {t['sequential']:>13.2f} {t['python_loop']:>14.2f} "
              f"{r['speedup_vs_sequential']:>6.1f}x {r['speedup_vs_python_loop']:>7.1f}x")
    # How the chunk size trades vmap width against cache on the MLP (auto = the default).
    loss, params = problems(64 if smoke else 1000)["mlp-10k"]
    chunks = (1, 2) if smoke else (1, 4, 8, 16, 64)
    probe = {f"chunk={c}": (lambda c=c: jgd.sweep(loss, params, jgd.momentum, {"learning_rate": lrs},
                                                  steps=steps, chunk_size=c).losses) for c in chunks}
    probe["auto"] = lambda: jgd.sweep(loss, params, jgd.momentum, {"learning_rate": lrs}, steps=steps).losses
    t = interleaved(probe, repeats)
    results["mlp-10k-chunk-probe"] = {"K": K, "steps": steps, "seconds": t}
    print("mlp-10k sweep by chunk size: " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()))
    write("sweep_vs_sequential", results, smoke)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    main(parser.parse_args().smoke)

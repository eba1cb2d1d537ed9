"""jgd.sweep (K learning rates as one program) vs K sequential compiled runs
(jgd.minimize, one per learning rate) vs the Python-loop user code (a jitted optax step
called per step per run): momentum, 500 steps, on linear regression (1000×20) and a
10k-parameter MLP, full batch.

And the mode users run, the main job (examples/sweep_digits.py): 64 learning rates × 2
momenta × 3 seeds × 400 mini-batch steps (batch 32) of the digits MLP as one sweep vs a
Python loop of the same 384 `minimize` calls, both warm; the same sweep evaluating on 450
held-out digits every 50 steps; and the sampler's growth: a 16-run sweep at n = 100,000
examples over n = 1,000.

    python benchmarks/sweep_vs_sequential.py [--smoke]
"""

import argparse
import json
import pathlib
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import HERE, interleaved, write

import jgd

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
import sweep_digits  # noqa: E402


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


def main_job(smoke):
    """The main job's configuration: sweep vs a loop of minimize calls; with evaluation."""
    train, val, _ = sweep_digits.splits()
    lrs = np.logspace(-3, 0.5, 4 if smoke else 64)
    betas, seeds, steps = [0.0, 0.9], 2 if smoke else 3, 20 if smoke else 400
    grid = {"learning_rate": lrs, "beta": betas}
    common = dict(steps=steps, data=train, batch_size=32)
    evaluate = jgd.Eval(sweep_digits.metrics, val, every=10 if smoke else 50, monitor="accuracy", mode="max")
    # Smoke: one fixed init (compiling a vmapped init costs more than the smoke run itself).
    init = sweep_digits.init_mlp(jax.random.key(0)) if smoke else sweep_digits.init_mlp

    def swept():
        return jgd.sweep(sweep_digits.loss, init, jgd.momentum, grid, seeds=seeds,
                         key=jax.random.key(0), **common).losses

    def swept_eval():
        return jgd.sweep(sweep_digits.loss, init, jgd.momentum, grid, seeds=seeds,
                         key=jax.random.key(0), evaluate=evaluate, **common).losses

    def swept_saved():
        with tempfile.TemporaryDirectory() as save_dir:
            return jgd.sweep(sweep_digits.loss, init, jgd.momentum, grid, seeds=seeds,
                             key=jax.random.key(0), save_dir=save_dir, save_every=10 if smoke else 50,
                             **common).losses

    keys = jax.random.split(jax.random.key(0), seeds)

    def loop():
        out = [jgd.minimize(sweep_digits.loss, init if smoke else init(k), jgd.momentum(jnp.float32(lr), jnp.float32(b)),
                            key=k, **common).losses for lr in lrs for b in betas for k in keys]
        return jax.block_until_ready(out)

    t = interleaved({"sweep": swept, "minimize_loop": loop, "sweep_eval": swept_eval, "sweep_saved": swept_saved},
                    1 if smoke else 3)
    runs = len(lrs) * len(betas) * seeds
    result = {"runs": runs, "steps": steps, "seconds": t, "speedup_vs_loop": t["minimize_loop"] / t["sweep"],
              "eval_overhead": t["sweep_eval"] / t["sweep"], "save_overhead": t["sweep_saved"] / t["sweep"]}
    print(f"main job, {runs} runs x {steps} steps (batch 32): sweep {t['sweep']:.2f} s, loop of minimize "
          f"{t['minimize_loop']:.2f} s ({result['speedup_vs_loop']:.1f}x); evaluating every 50 steps "
          f"{t['sweep_eval']:.2f} s ({result['eval_overhead']:.2f}x the sweep without); saving every 50 steps "
          f"{t['sweep_saved']:.2f} s ({result['save_overhead']:.2f}x)")
    return result


def sampler_growth(smoke):
    """A 16-run mini-batch sweep of the digits MLP on n = 1,000 and n = 100,000 examples."""
    rng = np.random.default_rng(0)
    sizes = (1_000, 5_000) if smoke else (1_000, 100_000)
    datasets = {n: (rng.random((n, 64), np.float32), rng.integers(0, 10, n).astype(np.int32)) for n in sizes}
    steps = 20 if smoke else 400

    def run(n):
        init = sweep_digits.init_mlp(jax.random.key(0)) if smoke else sweep_digits.init_mlp
        return lambda: jgd.sweep(sweep_digits.loss, init, jgd.momentum,
                                 {"learning_rate": np.logspace(-3, 0, 16)}, steps=steps, data=datasets[n],
                                 batch_size=32, key=jax.random.key(0)).losses

    t = interleaved({f"n={n}": run(n) for n in sizes}, 1 if smoke else 5)
    small, large = (t[f"n={n}"] for n in sizes)
    print(f"sampler: 16-run sweep, n={sizes[0]} {small:.3f} s, n={sizes[1]} {large:.3f} s ({large / small:.2f}x)")
    return {"runs": 16, "steps": steps, "seconds": t, "growth": large / small}


def main(smoke, only=None):
    if only:
        previous = json.loads((HERE / "results" / "sweep_vs_sequential.json").read_text())["results"]
        previous[only] = {"main-job": main_job, "sampler-growth": sampler_growth}[only](smoke)
        write("sweep_vs_sequential", previous, smoke)
        return
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
    chunks = (1,) if smoke else (1, 4, 8, 16, 64)
    probe = {f"chunk={c}": (lambda c=c: jgd.sweep(loss, params, jgd.momentum, {"learning_rate": lrs},
                                                  steps=steps, chunk_size=c).losses) for c in chunks}
    probe["auto"] = lambda: jgd.sweep(loss, params, jgd.momentum, {"learning_rate": lrs}, steps=steps).losses
    t = interleaved(probe, repeats)
    results["mlp-10k-chunk-probe"] = {"K": K, "steps": steps, "seconds": t}
    print("mlp-10k sweep by chunk size: " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()))
    results["main-job"] = main_job(smoke)
    results["sampler-growth"] = sampler_growth(smoke)
    write("sweep_vs_sequential", results, smoke)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--only", choices=["main-job", "sampler-growth"], help="rerun one part, keep the rest")
    args = parser.parse_args()
    main(args.smoke, args.only)

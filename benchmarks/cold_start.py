"""The main job in fresh processes, as a user runs one search per process: jgd.sweep of its
384 runs (64 learning rates × 2 momenta × 3 seeds, 400 steps, batch 32, validation
accuracy every 50 steps) against Optuna's TPE asking 384 trials of the same space, each
trained by a competent optax trainer (one jitted function of the hyperparameters:
compiled once, the whole run a ``fori_loop``, the epochs' permutations drawn up front).
Also: the sweep with JAX's persistent compilation cache warm on disk, ``jgd.halving`` of
the same grid (eta 3, rungs at 50, 150, 400 steps) cold, and one ``jgd.minimize`` of the
problem, whose compile time a sweep's is compared with.

Every contender runs in its own fresh Python process, interleaved over rounds; medians.
Reported per contender: the process's wall time (imports included, what ``time python
script.py`` shows), the search's own wall time (from after the imports and the data to
the end) and the compile time inside it (JAX's trace, lowering and XLA compile events).

    python benchmarks/cold_start.py [--rounds 3] [--smoke]

Writes results/cold_start.json.
"""

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from _common import HERE, write

CONTENDERS = ("optuna_tpe_optax", "sweep", "sweep_cached", "halving", "minimize")


def child(name, smoke, cache_dir):
    """One contender in this (fresh) process: prints a JSON line."""
    import collections

    import jax
    import jax.monitoring
    import numpy as np

    sys.path.insert(0, str(HERE.parent / "examples"))
    from sweep_digits import init_mlp, loss, metrics, splits

    import jgd

    compile_s = collections.defaultdict(float)
    phases = ("jaxpr_trace_duration", "jaxpr_to_mlir_module_duration", "backend_compile_duration")

    def listen(event, seconds, **_):
        if event.rsplit("/", 1)[-1] in phases:
            compile_s["total"] += seconds

    jax.monitoring.register_event_duration_secs_listener(listen)
    if cache_dir:  # as examples/sweep_digits.py sets it up
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    steps, lrs, seeds, every = (20, 3, 2, 10) if smoke else (400, 64, 3, 50)
    train, val, _ = splits()
    evaluate = jgd.Eval(metrics, val, every=every, monitor="accuracy", mode="max")
    grid = {"learning_rate": np.logspace(-3, 0.5, lrs), "beta": [0.0, 0.9]}
    common = dict(steps=steps, data=train, batch_size=32, evaluate=evaluate, key=jax.random.key(0))
    runs = lrs * 2 * seeds
    start = time.perf_counter()
    if name in ("sweep", "sweep_cached"):
        result = jgd.sweep(loss, init_mlp, jgd.momentum, grid, seeds=seeds, **common)
        best = float(result.best()["accuracy"])
    elif name == "halving":
        result = jgd.halving(loss, init_mlp, jgd.momentum, grid, seeds=seeds, min_steps=steps // 8, eta=3,
                             **{**common, "evaluate": jgd.Eval(metrics, val, every=steps // 8, monitor="accuracy",
                                                                 mode="max")})
        best = float(result.best()["accuracy"])
    elif name == "minimize":
        key = jax.random.key(0)
        result = jgd.minimize(loss, init_mlp(key), jgd.momentum(0.1, 0.9), **common)
        best = float(jax.block_until_ready(result.best_loss))
    else:
        best = _optuna_tpe_optax(runs, steps, every, train, val, init_mlp, loss, metrics)
    search = time.perf_counter() - start
    print(json.dumps({"search_s": search, "compile_s": compile_s["total"], "best": best}))


def _optuna_tpe_optax(trials, steps, every, train, val, init_mlp, loss, metrics):
    """Optuna's TPE over the sweep's space, ``trials`` trials, each a run of a jitted
    optax trainer compiled once for all hyperparameters: the best validation accuracy."""
    import jax
    import jax.numpy as jnp
    import optax
    import optuna

    X, y = (jnp.asarray(a) for a in train)
    n, batch = X.shape[0], 32
    per_epoch = n // batch
    epochs = -(-steps // per_epoch)

    @jax.jit
    def run(learning_rate, beta, key):
        init_key, data_key = jax.random.split(key)
        params = init_mlp(init_key)
        opt = optax.sgd(learning_rate, momentum=beta)
        order = jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(data_key, e), n)[: per_epoch * batch])(
            jnp.arange(epochs))
        order = order.reshape(-1, batch)

        def step(t, carry):
            params, state, best = carry
            index = order[t]
            grads = jax.grad(loss)(params, (X[index], y[index]))
            updates, state = opt.update(grads, state, params)
            params = optax.apply_updates(params, updates)
            accuracy = jax.lax.cond((t + 1) % every == 0, lambda p: metrics(p, val)["accuracy"],
                                    lambda p: jnp.float32(-1.0), params)
            return params, state, jnp.maximum(best, accuracy)

        _, _, best = jax.lax.fori_loop(0, steps, step, (params, opt.init(params), jnp.float32(-1.0)))
        return best

    keys = jax.random.split(jax.random.key(0), trials)

    def objective(trial):
        lr = trial.suggest_float("learning_rate", 1e-3, 10 ** 0.5, log=True)
        beta = trial.suggest_categorical("beta", [0.0, 0.9])
        accuracy = float(run(jnp.float32(lr), jnp.float32(beta), keys[trial.number]))
        return accuracy if accuracy == accuracy else float("nan")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(objective, n_trials=trials)
    return study.best_value


def spawn(name, smoke, cache_dir=""):
    argv = [sys.executable, str(pathlib.Path(__file__).resolve()), "--child", name, "--cache-dir", cache_dir]
    if smoke:
        argv.append("--smoke")
    start = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    process = time.perf_counter() - start
    if out.returncode:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    return {**row, "process_s": process}


def main(rounds, smoke):
    contenders = CONTENDERS
    times = {name: [] for name in contenders}
    with tempfile.TemporaryDirectory() as cache:
        spawn("sweep", smoke, cache)  # fills the persistent cache that sweep_cached finds
        for _ in range(rounds):
            for name in contenders:
                times[name].append(spawn(name, smoke, cache if name == "sweep_cached" else ""))
    results = {}
    for name, rows in times.items():
        results[name] = {key: statistics.median(r[key] for r in rows) for key in ("process_s", "search_s", "compile_s")}
        results[name]["best"] = rows[0]["best"]
        results[name]["all"] = rows
    print(f"{'contender':<18} {'process s':>10} {'search s':>9} {'compile s':>10} {'best':>8}")
    for name, r in results.items():
        print(f"{name:<18} {r['process_s']:>10.2f} {r['search_s']:>9.2f} {r['compile_s']:>10.2f} {r['best']:>8.4f}")
    optuna_row, sweep_row = results["optuna_tpe_optax"], results["sweep"]
    ratios = {
        "sweep_vs_optuna_process": optuna_row["process_s"] / sweep_row["process_s"],
        "sweep_vs_optuna_search": optuna_row["search_s"] / sweep_row["search_s"],
        "cached_sweep_vs_optuna_process": optuna_row["process_s"] / results["sweep_cached"]["process_s"],
        "cached_sweep_vs_optuna_search": optuna_row["search_s"] / results["sweep_cached"]["search_s"],
        "sweep_compile_over_minimize_compile": sweep_row["compile_s"] / results["minimize"]["compile_s"],
        "halving_cold_over_grid_cold_search": results["halving"]["search_s"] / sweep_row["search_s"],
    }
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    write("cold_start", {"rounds": rounds, "results": results, "ratios": ratios}, smoke)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--child")
    parser.add_argument("--cache-dir", default="")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.smoke, args.cache_dir)
    else:
        main(1 if args.smoke else args.rounds, args.smoke)

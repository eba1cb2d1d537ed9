"""Optuna's TPE on the main job's model (the digits MLP, mini-batch SGD with momentum,
selected on validation accuracy): plain Optuna, one trial at a time, against
jgd.optuna.optimize, the same sampler asked for a batch of trials at a time, each batch one
sweep (one compiled program for the whole study).

    python examples/optuna_digits.py [--trials 96] [--batch 32] [--steps 400] [--smoke]

Plain Optuna's objective trains each trial with jgd.minimize (its optimizer's numbers
traced, so it too compiles once): the difference is batching, not compilation. Prints each
study's best validation accuracy, its test accuracy and the wall time of a first study
(compile included) and of a second one (everything compiled).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import optuna
from sweep_digits import init_mlp, loss, metrics, splits

import jgd
import jgd.optuna


def suggest(trial):
    return {"learning_rate": trial.suggest_float("learning_rate", 1e-3, 3.0, log=True),
            "beta": trial.suggest_float("beta", 0.0, 0.95)}


def main(trials, batch, steps, every):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    train, val, test = splits()
    evaluate = jgd.Eval(metrics, val, every=every, monitor="accuracy", mode="max")
    common = dict(steps=steps, data=train, batch_size=32, evaluate=evaluate)
    key = jax.random.key(0)
    run_key = jax.random.split(key, 1)[0]  # the sweep's seed key for seed 0, so both studies train alike

    def objective(trial):
        hp = suggest(trial)
        r = jgd.minimize(loss, init_mlp(run_key), jgd.momentum(jnp.float32(hp["learning_rate"]),
                                                                 jnp.float32(hp["beta"])), key=run_key, **common)
        return float(r.best_loss) if jnp.isfinite(r.best_loss) else float("nan")

    def sampler():
        return optuna.samplers.TPESampler(seed=0, constant_liar=True)

    print(f"{trials} trials of {steps} steps, TPE; jgd asks {batch} at a time\n")
    rows, warm = {}, {}

    def plain_study():
        study = optuna.create_study(direction="maximize", sampler=sampler())
        study.optimize(objective, n_trials=trials)
        return study, None

    def jgd_study():
        study = optuna.create_study(direction="maximize", sampler=sampler())
        return study, jgd.optuna.optimize(study, loss, init_mlp, jgd.momentum, suggest, trials=trials, batch=batch,
                                          key=key, **common)

    for name, run in (("plain Optuna", plain_study), ("jgd.optuna", jgd_study)):
        for attempt in ("cold", "warm"):  # the second study finds every program compiled
            start = time.perf_counter()
            study, results = run()
            wall = time.perf_counter() - start
            if attempt == "cold":
                rows[name] = (study, wall)
            else:
                warm[name] = wall
    print(f"{'':14} {'best val acc':>13} {'test acc':>9} {'cold s':>8} {'warm s':>8}")
    for name, (study, wall) in rows.items():
        best = study.best_trial
        if name == "jgd.optuna":  # the winner's params, kept by its sweep: no retraining
            index = [t.number for t in study.trials].index(best.number)
            sweep, row = results[index // batch], index % batch
            params = jax.tree.map(lambda x: x[row, 0], sweep.best_params)
        else:
            params = jgd.minimize(loss, init_mlp(run_key), jgd.momentum(jnp.float32(best.params["learning_rate"]),
                                                                         jnp.float32(best.params["beta"])),
                                  key=run_key, **common).best_params
        test_accuracy = float(metrics(params, test)["accuracy"])
        print(f"{name:14} {best.value:>13.4f} {test_accuracy:>9.4f} {wall:>8.2f} {warm[name]:>8.2f}")
    gap = (rows["plain Optuna"][0].best_value - rows["jgd.optuna"][0].best_value) * len(val[1])
    print(f"\njgd.optuna: {rows['plain Optuna'][1] / rows['jgd.optuna'][1]:.2f}x as fast as plain Optuna cold "
          f"(compile included), {warm['plain Optuna'] / warm['jgd.optuna']:.2f}x warm; best validation accuracy "
          f"{gap:+.0f} validation examples below plain TPE's")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=96)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--smoke", action="store_true", help="tiny run for the test suite")
    args = parser.parse_args()
    if args.smoke:
        main(trials=4, batch=2, steps=10, every=5)
    else:
        main(args.trials, args.batch, args.steps, args.every)

"""Successive halving vs the full grid on the main job's model (the digits MLP, mini-batch
SGD with momentum and weight decay).

    python examples/halving_digits.py [--configs 81] [--steps 432] [--smoke]

81 configurations are sampled (learning rate and weight decay log-uniformly, momentum
uniformly). The full grid runs every one of them for all the steps as one sweep;
halving (eta = 3) runs all of them for 48 steps, keeps the best third by validation
accuracy, runs those on to 144 steps in all, then the best third of those to 432, every rung
calls of the same compiled program, whose survivors continue where they stopped. Prints the best validation
accuracy, the run-steps spent and the wall time of each, side by side.
"""

import argparse
import time

import jax
import numpy as np
from sweep_digits import init_mlp, loss, metrics, splits

import jgd


def momentum_with_decay(learning_rate, beta, weight_decay):
    """SGD with momentum on the loss plus (weight_decay / 2)·‖w‖²."""
    return jgd.chain(jgd.add_decayed_weights(weight_decay), jgd.momentum(learning_rate, beta))


GRID = {"learning_rate": jgd.loguniform(1e-3, 3.0), "beta": jgd.uniform(0.0, 0.95),
        "weight_decay": jgd.loguniform(1e-6, 1e-2)}


def main(configs, steps, min_steps, eta=3, repeats=1, init=init_mlp):
    train, val, test = splits()
    evaluate = jgd.Eval(metrics, val, every=min_steps, monitor="accuracy", mode="max")
    common = dict(samples=configs, steps=steps, data=train, batch_size=32, key=jax.random.key(0),
                  evaluate=evaluate)

    def grid():
        return jgd.sweep(loss, init, momentum_with_decay, GRID, **common)

    def halved():
        return jgd.halving(loss, init, momentum_with_decay, GRID, min_steps=min_steps, eta=eta, **common)

    results, cold, warm = {}, {}, {}
    for name, run in (("full grid", grid), ("halving", halved)):
        print(f"{name}: {configs} configurations, {steps} steps at most; compiling and running ...", flush=True)
        start = time.perf_counter()
        results[name] = run()
        cold[name] = time.perf_counter() - start
        times = []
        for _ in range(repeats):  # compiled now: time the search itself
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        warm[name] = float(np.median(times)) if times else cold[name]
    full, half = results["full grid"], results["halving"]
    np.testing.assert_array_equal(full.hparams["learning_rate"], half.hparams["learning_rate"])
    print(f"{configs} sampled configurations, {steps} steps at most, batch 32\n")
    print(f"{'':12} {'best val acc':>13} {'test acc':>9} {'run-steps':>10} {'wall s':>8} {'compile incl. s':>16}")
    rows = {}
    for name, s in results.items():
        best = s.best()
        spent = s.steps_spent if s.steps_spent is not None else s.final_loss.shape[0] * steps
        rows[name] = dict(accuracy=best["accuracy"], spent=spent, wall=warm[name], cold=cold[name])
        test_accuracy = float(metrics(best["params"], test)["accuracy"])
        print(f"{name:12} {best['accuracy']:>13.4f} {test_accuracy:>9.4f} {spent:>10d} {warm[name]:>8.2f} "
              f"{cold[name]:>16.2f}")
    gap = rows["full grid"]["accuracy"] - rows["halving"]["accuracy"]
    print(f"\nhalving: {gap * 100:+.2f} points of validation accuracy below the grid's best, "
          f"{rows['halving']['spent'] / rows['full grid']['spent']:.2f}x its run-steps, "
          f"{rows['halving']['wall'] / rows['full grid']['wall']:.2f}x its wall time (compiled), "
          f"{rows['halving']['cold'] / rows['full grid']['cold']:.2f}x with compilation")
    best = half.best()
    print(f"halving's pick: learning_rate={best['learning_rate']:.4g} beta={best['beta']:.3f} "
          f"weight_decay={best['weight_decay']:.2e} (rung {half.rung[best['index'][0]]})")
    half.plot("halving.png")  # every configuration's score against its learning rate, coloured by the rung it reached
    print("wrote halving.png")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--configs", type=int, default=81)
    parser.add_argument("--steps", type=int, default=432)
    parser.add_argument("--min-steps", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny run for the test suite")
    args = parser.parse_args()
    if args.smoke:
        main(configs=6, steps=12, min_steps=4, repeats=0, init=init_mlp(jax.random.key(0)))
    else:
        main(args.configs, args.steps, args.min_steps, repeats=args.repeats)

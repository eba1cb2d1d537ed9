"""Update step of the 7 smooth variants, jgd vs optax, on one large leaf, a ~200-leaf
transformer-like tree and a tiny tree, against the in-run memory roofline (donated
buffers, interleaved rounds, medians).

    python benchmarks/update_step.py [--params 1e7] [--smoke]
"""

import argparse

from _common import write

import jax
import optax

import jgd
from jgd.benchmark import make_tree, roofline_gb_per_s, time_update

VARIANTS = {
    "sgd": (jgd.sgd(1e-3), optax.sgd(1e-3)),
    "momentum": (jgd.momentum(1e-3), optax.sgd(1e-3, momentum=0.9)),
    "nesterov": (jgd.nesterov(1e-3), optax.sgd(1e-3, momentum=0.9, nesterov=True)),
    "adagrad": (jgd.adagrad(1e-3), optax.adagrad(1e-3)),
    "rmsprop": (jgd.rmsprop(1e-3), optax.rmsprop(1e-3)),
    "adam": (jgd.adam(1e-3), optax.adam(1e-3)),
    "adamw": (jgd.adamw(1e-3), optax.adamw(1e-3)),
}


def main(size, smoke):
    repeats = 3 if smoke else 15
    rounds = 1 if smoke else 3
    results = {"roofline_gb_per_s": roofline_gb_per_s(size, repeats=repeats), "size": size, "rows": []}
    print(f"in-run roofline (donated axpy): {results['roofline_gb_per_s']:.1f} GB/s")
    print(f"{'tree':<10} {'variant':<9} {'jgd us':>10} {'optax us':>10} {'jgd/optax speed':>16} {'jgd % roof':>10}")
    for tree in ("leaf", "many-leaf", "tiny"):
        params = make_tree(size, tree)
        for name, (ours, theirs) in VARIANTS.items():
            times = {"jgd": [], "optax": []}
            for _ in range(rounds):  # interleave the contenders
                times["jgd"].append(time_update(ours, params, repeats=repeats)["us_per_step"])
                times["optax"].append(time_update(theirs, params, repeats=repeats)["us_per_step"])
            jgd_us, optax_us = sorted(times["jgd"])[rounds // 2], sorted(times["optax"])[rounds // 2]
            moved = time_update(ours, params, repeats=1, warmup=1)["bytes_per_step"]
            roof = 100 * moved / (jgd_us * 1e-6) / 1e9 / results["roofline_gb_per_s"]
            results["rows"].append({"tree": tree, "variant": name, "jgd_us": jgd_us, "optax_us": optax_us,
                                    "speedup": optax_us / jgd_us, "jgd_pct_roofline": roof})
            print(f"{tree:<10} {name:<9} {jgd_us:>10.1f} {optax_us:>10.1f} {optax_us / jgd_us:>15.2f}x {roof:>9.0f}%")
    write("update_step", results, smoke)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", type=float, default=1e7)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    main(10_000 if args.smoke else int(args.params), args.smoke)

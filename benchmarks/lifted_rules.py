"""Update step of rules lifted from optax (``jgd.lion`` = ``jgd.lift(optax.lion)``, …)
against optax's own, on a ~200-leaf tree and on one large leaf. The lifted rule runs optax's
code rebuilt from its leaves, so the compiled step should be optax's: the goal is within
1.1× (issue: every optax optimizer as a jgd rule). Built on ``jgd.benchmark.compare``
(interleaved rounds, donated buffers, median of repeats, interquartile spread).

    python benchmarks/lifted_rules.py [--params 1e6] [--smoke]

Writes results/lifted_rules.json.
"""

import argparse

import optax
import optax.contrib
from _common import write

import jgd
from jgd.benchmark import compare, make_tree

RULES = {
    "lion": (lambda: jgd.lion(1e-4), lambda: optax.lion(1e-4)),
    "adabelief": (lambda: jgd.adabelief(1e-3), lambda: optax.adabelief(1e-3)),
    "nadamw": (lambda: jgd.nadamw(1e-3), lambda: optax.nadamw(1e-3)),
    "amsgrad": (lambda: jgd.amsgrad(1e-3), lambda: optax.amsgrad(1e-3)),
    "yogi": (lambda: jgd.yogi(1e-3), lambda: optax.yogi(1e-3)),
    "lamb": (lambda: jgd.lamb(1e-3), lambda: optax.lamb(1e-3)),
    "adan": (lambda: jgd.adan(1e-3), lambda: optax.adan(1e-3)),
    "prodigy": (lambda: jgd.contrib.prodigy(1.0), lambda: optax.contrib.prodigy(1.0)),
}


def main(size, smoke):
    repeats, rounds = (2, 1) if smoke else (10, 5)
    rules = ["lion"] if smoke else list(RULES)
    trees = ["many-leaf"] if smoke else ["many-leaf", "leaf"]
    rows = []
    print(f"{'tree':<10} {'rule':<10} {'jgd us':>9} {'optax us':>9} {'jgd/optax':>10} {'noise':>6}")
    for tree in trees:
        params = make_tree(size, tree)
        for name in rules:
            ours, theirs = RULES[name]
            comparison = compare({"jgd": ours(), "optax": theirs()}, params, repeats=repeats, rounds=rounds,
                                 baseline="optax")
            by = {r["name"]: r for r in comparison.rows}
            ratio = by["jgd"]["us_per_step"] / by["optax"]["us_per_step"]
            rows.append({"tree": tree, "rule": name, "params": comparison.num_params, "leaves": comparison.num_leaves,
                         "jgd_us": by["jgd"]["us_per_step"], "optax_us": by["optax"]["us_per_step"],
                         "jgd_spread_pct": by["jgd"]["spread_pct"], "optax_spread_pct": by["optax"]["spread_pct"],
                         "ratio": ratio, "within_noise": by["jgd"]["within_noise"]})
            print(f"{tree:<10} {name:<10} {by['jgd']['us_per_step']:>9.1f} {by['optax']['us_per_step']:>9.1f} "
                  f"{ratio:>9.2f}x {'~' if by['jgd']['within_noise'] else '':>6}")
    write("lifted_rules", {"size": size, "rows": rows}, smoke)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=float, default=1e6)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    main(int(1e4 if args.smoke else args.params), args.smoke)

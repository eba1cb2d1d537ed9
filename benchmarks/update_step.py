"""Update step of the 7 smooth variants on one large leaf, a ~200-leaf transformer-like
tree (at 1e7 and at 1e5 params) and a tiny tree: jgd, jgd.flat, optax and, when installed, torch.optim (for-loop,
foreach and fused), against the memory roofline measured in the same run (a donated
axpy). Built on ``jgd.benchmark.compare``: every contender is compiled once, then all are timed
in interleaved rounds (donated buffers, median of repeats, interquartile spread).

    python benchmarks/update_step.py [--params 1e7] [--quick] [--smoke]

``--quick`` (under 5 minutes) times adam, momentum and sgd only with fewer repeats.
Writes results/update_step.json, and update_step.png when matplotlib is installed.
"""

import argparse

from _common import HERE, write

import jgd
from jgd.benchmark import compare, make_tree
from jgd.benchmark.comparison import available_torch_contender
from jgd.benchmark.rules import RULES


def main(size, smoke, quick):
    repeats = 2 if smoke else (5 if quick else 10)
    rounds = 1 if smoke else 3
    variants = list(RULES) if not (smoke or quick) else ["sgd", "momentum", "adam"]
    if smoke:
        variants = ["adam"]
    rows = []
    header = f"{'tree':<10} {'variant':<9} {'contender':<14} {'us/step':>10} {'vs optax':>9} {'% roof':>7}"
    print(header)
    # "many-small" is the ~200-leaf tree at 1e5 params: per-leaf overhead dominates there.
    for tree, tree_size in (("leaf", size), ("many-leaf", size), ("many-small", min(size, 100_000)), ("tiny", size)):
        params = make_tree(tree_size, "many-leaf" if tree == "many-small" else tree)
        for name in variants:
            rule = RULES[name]
            contenders = {"jgd": rule.jgd(), "jgd.flat": jgd.flat(rule.jgd()), "optax": rule.optax()}
            for implementation in ("forloop", "foreach", "fused"):
                torch_name = available_torch_contender(name, params, (implementation,))
                if torch_name is not None:
                    contenders[f"torch-{implementation}"] = torch_name
            comparison = compare(contenders, params, repeats=repeats, rounds=rounds, baseline="optax")
            for r in comparison.rows:
                row = {"tree": tree, "variant": name, "contender": r["name"], "params": comparison.num_params,
                       "leaves": comparison.num_leaves, "us_per_step": r["us_per_step"],
                       "spread_pct": r["spread_pct"], "speedup_vs_optax": 1 / r["ratio"],
                       "within_noise": r["within_noise"], "bytes_per_step": r["bytes_per_step"],
                       "pct_roofline": r["pct_roofline"], "roofline_gb_per_s": comparison.roofline_gb_per_s}
                rows.append(row)
                print(f"{tree:<10} {name:<9} {r['name']:<14} {row['us_per_step']:>10.1f} "
                      f"{row['speedup_vs_optax']:>8.2f}x {row['pct_roofline']:>6.0f}%")
    write("update_step", {"size": size, "quick": quick, "rows": rows}, smoke)
    if not smoke:
        chart(rows, HERE / "update_step.png")


def chart(rows, path):
    """Speed relative to optax, one panel per tree, one bar group per variant."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    trees = list(dict.fromkeys(r["tree"] for r in rows))
    labels = [c for c in dict.fromkeys(r["contender"] for r in rows) if c != "optax"]
    fig, axes = plt.subplots(1, len(trees), figsize=(5 * len(trees), 4), sharey=True)
    for ax, tree in zip(axes, trees):
        variants = list(dict.fromkeys(r["variant"] for r in rows if r["tree"] == tree))
        width = 0.8 / len(labels)
        for i, label in enumerate(labels):
            ys = [next((r["speedup_vs_optax"] for r in rows if r["tree"] == tree and r["variant"] == v
                        and r["contender"] == label), 0.0) for v in variants]
            ax.bar([j + i * width for j in range(len(variants))], ys, width, label=label)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(variants))], variants, rotation=45)
        ax.set_title(f"{tree} ({rows[[r['tree'] for r in rows].index(tree)]['leaves']} leaves)")
    axes[0].set_ylabel("speed vs optax (higher is faster)")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", type=float, default=1e7)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    main(10_000 if args.smoke else int(args.params), args.smoke, args.quick)

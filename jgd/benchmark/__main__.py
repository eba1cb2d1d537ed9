"""``python -m jgd.benchmark``: jgd's rules against optax and torch.optim on a tree of yours.

    python -m jgd.benchmark --opt adam,momentum --against optax,torch \\
        --tree leaf|many-leaf|tiny|MODULE:FUNCTION|shapes.json [--params 1e7] \\
        [--dtype float32|bfloat16] [--flat] [--json out.json] [--plot out.png] [--quick]

Several trees may be given, separated by commas. One comparison per tree and rule, the
jgd rule as the baseline.
"""

from __future__ import annotations

import argparse
import json
import sys

import jgd
from jgd.benchmark.comparison import available_torch_contender, compare, import_torch
from jgd.benchmark.rules import RULES
from jgd.benchmark.trees import load_tree

LIBRARIES = ("optax", "torch")


def _names(text: str, known, what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise SystemExit(f"error: unknown {what} {', '.join(map(repr, unknown)) or repr(text)}; "
                         f"known: {', '.join(known)}")
    return names


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m jgd.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--opt", default="adam", help=f"jgd rules, comma-separated: {', '.join(RULES)}")
    parser.add_argument("--against", default="", help="libraries, comma-separated: optax, torch")
    parser.add_argument("--tree", default="leaf", help="leaf, many-leaf, tiny, MODULE:FUNCTION or shapes.json; "
                        "comma-separated for several")
    parser.add_argument("--params", type=float, default=1e6, help="size of the built-in trees")
    parser.add_argument("--dtype", default=None, help="cast every floating leaf (float32, bfloat16, ...)")
    parser.add_argument("--flat", action="store_true", help="also time jgd.flat(rule)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per contender per round")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    parser.add_argument("--quick", action="store_true", help="fewer calls (3 per round, 2 rounds)")
    parser.add_argument("--json", default=None, help="write every comparison here")
    parser.add_argument("--plot", default=None, help="write a chart here (needs matplotlib)")
    args = parser.parse_args(argv)
    rules = _names(args.opt, RULES, "optimizer")
    libraries = _names(args.against, LIBRARIES, "library") if args.against else []
    if "torch" in libraries:
        try:
            import_torch("--against torch")
        except ImportError as error:
            raise SystemExit(f"error: {error}") from None
    repeats = args.repeats or (3 if args.quick else 10)
    rounds = args.rounds or (2 if args.quick else 3)
    results = []
    for tree in [t.strip() for t in args.tree.split(",") if t.strip()]:
        try:
            params = load_tree(tree, int(args.params), args.dtype)
        except (ValueError, TypeError) as error:
            raise SystemExit(f"error: {error}") from None
        for rule in rules:
            contenders = {f"jgd.{rule}": RULES[rule].jgd()}
            if args.flat:
                contenders[f"jgd.flat({rule})"] = jgd.flat(RULES[rule].jgd())
            if "optax" in libraries:
                contenders[f"optax.{rule}"] = RULES[rule].optax()
            torch_name = available_torch_contender(rule, params) if "torch" in libraries else None
            if torch_name is not None:  # fused where this build has it, else torch's default
                contenders[torch_name] = torch_name
            comparison = compare(contenders, params, repeats=repeats, rounds=rounds)
            print(f"\n[{tree}] {rule}")
            print(comparison.table())
            sys.stdout.flush()
            results.append({"tree": tree, "rule": rule, "comparison": comparison})
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"tree": r["tree"], "rule": r["rule"], **r["comparison"].to_dict()} for r in results], f, indent=2)
        print(f"wrote {args.json}")
    if args.plot:
        _plot(results, args.plot)
        print(f"wrote {args.plot}")
    return results


def _plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # at most two panels a row, so the chart stays legible at a page's width
    columns = min(2, len(results))
    rows = -(-len(results) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.4 * rows), squeeze=False)
    for ax, r in zip(axes.flat, results):
        r["comparison"].plot(ax=ax)
        ax.set_title(f"{r['tree']}: {r['rule']}", fontsize=10)
    for ax in axes.flat[len(results):]:
        ax.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    main()

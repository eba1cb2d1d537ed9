"""Update step of the 7 smooth variants on one large leaf, a ~200-leaf transformer-like
tree (at 1e7 and at 1e5 params) and a tiny tree: jgd, jgd.flat, optax and, when installed, torch.optim (for-loop,
foreach and fused), against the memory roofline measured in the same run (a donated
axpy). Every contender is compiled once, then all are timed in interleaved rounds
(donated buffers, median of repeats).

    python benchmarks/update_step.py [--params 1e7] [--quick] [--smoke]

``--quick`` (under 5 minutes) times adam, momentum and sgd only with fewer repeats.
Writes results/update_step.json, and update_step.png when matplotlib is installed.
"""

import argparse
import os

# torch's OpenMP workers otherwise spin after each step and slow the next contender.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax
import optax
from _common import HERE, interleaved, write

import jgd
from jgd.benchmark import bytes_per_step, make_tree, roofline_runner, update_runner

VARIANTS = {
    "sgd": (lambda: jgd.sgd(1e-3), lambda: optax.sgd(1e-3)),
    "momentum": (lambda: jgd.momentum(1e-3), lambda: optax.sgd(1e-3, momentum=0.9)),
    "nesterov": (lambda: jgd.nesterov(1e-3), lambda: optax.sgd(1e-3, momentum=0.9, nesterov=True)),
    "adagrad": (lambda: jgd.adagrad(1e-3), lambda: optax.adagrad(1e-3)),
    "rmsprop": (lambda: jgd.rmsprop(1e-3), lambda: optax.rmsprop(1e-3)),
    "adam": (lambda: jgd.adam(1e-3), lambda: optax.adam(1e-3)),
    "adamw": (lambda: jgd.adamw(1e-3), lambda: optax.adamw(1e-3)),
}


def torch_contenders(name, params):
    """torch.optim's same rule on tensors shaped like ``params``: (label, step) pairs for
    each implementation this torch build offers. Empty when torch is not installed."""
    try:
        import torch
    except ImportError:
        return []

    torch.set_num_threads(os.cpu_count())
    make = {
        "sgd": lambda ps, **kw: torch.optim.SGD(ps, lr=1e-3, **kw),
        "momentum": lambda ps, **kw: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, **kw),
        "nesterov": lambda ps, **kw: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, nesterov=True, **kw),
        "adagrad": lambda ps, **kw: torch.optim.Adagrad(ps, lr=1e-3, initial_accumulator_value=0.1, eps=1e-7, **kw),
        "rmsprop": lambda ps, **kw: torch.optim.RMSprop(ps, lr=1e-3, alpha=0.9, eps=1e-8, **kw),
        "adam": lambda ps, **kw: torch.optim.Adam(ps, lr=1e-3, **kw),
        "adamw": lambda ps, **kw: torch.optim.AdamW(ps, lr=1e-3, weight_decay=1e-4, **kw),
    }[name]
    out = []
    for label, kwargs in (("torch-forloop", {"foreach": False}), ("torch-foreach", {"foreach": True}),
                          ("torch-fused", {"fused": True})):
        tensors = [torch.zeros(tuple(x.shape), requires_grad=True) for x in jax.tree.leaves(params)]
        for t in tensors:
            t.grad = torch.full_like(t, 1e-3)
        try:
            opt = make(tensors, **kwargs)
            opt.step()
        except (RuntimeError, TypeError, ValueError):  # this rule has no such implementation
            continue

        def step(opt=opt):
            opt.step()
            return ()

        out.append((label, step))
    return out


def jax_contender(opt, params):
    step, args = update_runner(opt, params)
    state = {"args": jax.block_until_ready(step(*args))}  # compile and warm up

    def run():
        state["args"] = jax.block_until_ready(step(*state["args"]))
        return ()

    return run


def main(size, smoke, quick):
    repeats = 2 if smoke else (5 if quick else 10)
    rounds = 1 if smoke else 3
    variants = list(VARIANTS) if not (smoke or quick) else ["sgd", "momentum", "adam"]
    if smoke:
        variants = ["adam"]
    rows = []
    header = f"{'tree':<10} {'variant':<9} {'contender':<14} {'us/step':>10} {'vs optax':>9} {'% roof':>7}"
    print(header)
    # "many-small" is the ~200-leaf tree at 1e5 params: per-leaf overhead dominates there.
    for tree, tree_size in (("leaf", size), ("many-leaf", size), ("many-small", min(size, 100_000)), ("tiny", size)):
        params = make_tree(tree_size, "many-leaf" if tree == "many-small" else tree)
        n = sum(x.size for x in jax.tree.leaves(params))
        axpy, axpy_args = roofline_runner(max(n, 1000))
        roof_args = {"args": axpy_args}

        def roofline():
            roof_args["args"] = jax.block_until_ready(axpy(*roof_args["args"]))

        for name in variants:
            ours, theirs = VARIANTS[name]
            contenders = {
                "jgd": jax_contender(ours(), params),
                "jgd.flat": jax_contender(jgd.flat(ours()), params),
                "optax": jax_contender(theirs(), params),
                "roofline": roofline,
            }
            contenders.update(torch_contenders(name, params))
            t = interleaved(contenders, rounds, per_round=repeats)
            roof_gb_s = 3 * 4 * max(n, 1000) / t.pop("roofline") / 1e9
            moved = bytes_per_step(ours(), params)
            for label, seconds in t.items():
                row = {"tree": tree, "variant": name, "contender": label, "params": n,
                       "leaves": len(jax.tree.leaves(params)), "us_per_step": seconds * 1e6,
                       "speedup_vs_optax": t["optax"] / seconds, "bytes_per_step": moved,
                       "pct_roofline": 100 * moved / seconds / 1e9 / roof_gb_s,
                       "roofline_gb_per_s": roof_gb_s}
                rows.append(row)
                print(f"{tree:<10} {name:<9} {label:<14} {row['us_per_step']:>10.1f} "
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

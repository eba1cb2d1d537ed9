"""Compile time of one jitted, donated update step on the ~200-leaf tree, each
measurement in a fresh Python process (no warm caches), contenders interleaved:
jgd vs optax for adam and for chain(clip_by_global_norm, adamw), and jgd.flat(adam).

    python benchmarks/compile_time.py [--rounds 3] [--smoke]
"""

import argparse
import json
import statistics
import subprocess
import sys

from _common import HERE, write

CONTENDERS = {
    "optax.adam": "optax.adam(1e-3)",
    "jgd.adam": "jgd.adam(1e-3)",
    "jgd.flat(adam)": "jgd.flat(jgd.adam(1e-3))",
    "optax.chain(clip, adamw)": "optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))",
    "jgd.chain(clip, adamw)": "jgd.chain(jgd.clip_by_global_norm(1.0), jgd.adamw(1e-3))",
}

CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
import jax, optax, jgd
from jgd.benchmark import make_tree
params = make_tree({size}, "many-leaf")
opt = {expr}
state = opt.init(params)
grads = params

def step(p, s, g):
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s

start = time.perf_counter()
jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
print(json.dumps({{"seconds": time.perf_counter() - start}}))
"""


def compile_seconds(expr, size):
    code = CHILD.format(root=str(HERE.parent), size=size, expr=expr)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def main(size, rounds, smoke):
    contenders = dict(list(CONTENDERS.items())[1:3]) if smoke else CONTENDERS
    times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, expr in contenders.items():
            times[name].append(compile_seconds(expr, size))
    results = {name: {"median_s": statistics.median(t), "all_s": t} for name, t in times.items()}
    print(f"{'contender':<26} {'compile s (median)':>19}")
    for name, r in results.items():
        print(f"{name:<26} {r['median_s']:>19.2f}")
    write("compile_time", {"size": size, "rounds": rounds, "results": results}, smoke)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    main(10_000 if args.smoke else 10_000_000, 1 if args.smoke else args.rounds, args.smoke)

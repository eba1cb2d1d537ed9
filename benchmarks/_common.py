"""Shared benchmark plumbing: interleaved medians, JSON output, machine description."""

import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import jax

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def interleaved(contenders: dict, repeats: int, per_round: int = 1):
    """Runs each zero-argument callable ``per_round`` times per round, in turn, for
    ``repeats`` rounds, and returns the median seconds of one call of each: interleaving
    spreads machine noise evenly over the contenders. With ``per_round > 1`` each turn
    starts with one untimed call, so a contender's caches are warm again after the
    others ran."""
    for fn in contenders.values():  # warm-up and compile
        fn()
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            if per_round > 1:
                fn()
            for _ in range(per_round):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def machine():
    return {
        "date": datetime.date.today().isoformat(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "device": jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
        "jax": jax.__version__,
    }


def write(name, results, smoke):
    if smoke:
        return
    path = HERE / "results" / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), "results": results}, indent=2))
    print(f"wrote {path}")

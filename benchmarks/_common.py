"""Shared benchmark plumbing: interleaved medians, JSON output, machine description."""

import datetime
import json
import os
import pathlib
import platform
import statistics
import sys

import jax

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def interleaved(contenders: dict, repeats: int, per_round: int = 1):
    """Runs each zero-argument callable ``per_round`` times per round, in turn, for
    ``repeats`` rounds, and returns the median seconds of one call of each: interleaving
    spreads machine noise evenly over the contenders. With ``per_round > 1`` each turn
    starts with one untimed call, so a contender's caches are warm again after the
    others ran (``jgd.benchmark.interleaved_times`` does the timing)."""
    from jgd.benchmark import interleaved_times

    times = interleaved_times(contenders, repeats, per_round, rewarm=per_round > 1)
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

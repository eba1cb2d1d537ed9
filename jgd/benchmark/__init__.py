"""``jgd.benchmark``: time optimizers' jitted update steps, side by side, on your own tree.

    python -m jgd.benchmark --opt adam,momentum --against optax,torch --tree many-leaf --params 1e7

[`jgd.benchmark.compare`][jgd.benchmark.compare] times any optax/jgd optimizers and torch.optim contenders in interleaved
rounds (donated buffers, compile time apart, spread reported); [`jgd.benchmark.time_update`][jgd.benchmark.time_update] times
one. ``benchmarks/update_step.py`` publishes the project's own table with them.
"""

from jgd.benchmark.comparison import Comparison, compare
from jgd.benchmark.timing import (
    bytes_per_step,
    interleaved_times,
    make_tree,
    median_seconds,
    roofline_gb_per_s,
    roofline_runner,
    state_bytes,
    time_update,
    update_runner,
)
from jgd.benchmark.trees import load_tree

__all__ = [
    "compare",
    "Comparison",
    "load_tree",
    "time_update",
    "interleaved_times",
    "update_runner",
    "bytes_per_step",
    "state_bytes",
    "roofline_runner",
    "roofline_gb_per_s",
    "make_tree",
    "median_seconds",
]

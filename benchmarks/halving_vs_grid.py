"""Successive halving vs the full grid of the same 81 sampled configurations on the main
job's model (examples/halving_digits.py): best validation accuracy, run-steps spent, wall
time compiled (median of repeats, interleaved) and with compilation.

    python benchmarks/halving_vs_grid.py [--smoke]
"""

import argparse
import pathlib
import sys

from _common import write

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
import halving_digits  # noqa: E402


def main(smoke):
    if smoke:
        import jax

        rows = halving_digits.main(configs=6, steps=12, min_steps=4, repeats=0,
                                   init=halving_digits.init_mlp(jax.random.key(0)))
    else:
        rows = halving_digits.main(configs=81, steps=432, min_steps=48, repeats=3)
    grid, half = rows["full grid"], rows["halving"]
    write("halving_vs_grid", {"configs": 6 if smoke else 81, "rows": rows,
                              "accuracy_gap": grid["accuracy"] - half["accuracy"],
                              "steps_ratio": half["spent"] / grid["spent"],
                              "wall_ratio": half["wall"] / grid["wall"],
                              "wall_ratio_with_compile": half["cold"] / grid["cold"]}, smoke)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    main(parser.parse_args().smoke)

"""jgd.benchmark returns sane figures and its CLI runs (no timing assertions)."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import jgd
from jgd.benchmark import make_tree, time_update


@pytest.mark.parametrize("tree", ["leaf", "many-leaf", "tiny"])
def test_time_update_reports_positive_consistent_figures(tree):
    params = make_tree(20_000, tree)
    before = [x.copy() for x in params.values()] if tree == "leaf" else None
    r = time_update(jgd.adam(1e-3), params, repeats=3, warmup=1)
    n = sum(x.size for x in jax.tree.leaves(params))
    assert r["num_params"] == n and r["us_per_step"] > 0 and r["gb_per_s"] > 0
    assert r["roofline_gb_per_s"] > 0 and r["pct_roofline"] > 0
    # Adam reads params, grads, m, v and writes params, m, v: 7 float32 arrays, plus
    # its int32 step count read and written.
    assert r["bytes_per_step"] == 7 * 4 * n + 2 * 4
    if before is not None:  # the caller's params are not donated
        assert jnp.array_equal(params["w"], before[0])


def test_cli_prints_a_table():
    out = subprocess.run([sys.executable, "-m", "jgd.benchmark", "--opt", "momentum", "--params", "1e4",
                          "--tree", "many-leaf", "--repeats", "3"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "us/step" in out.stdout and "momentum" in out.stdout

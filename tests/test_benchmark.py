"""jgd.benchmark: figures that add up, a planted slower contender found, identical ones
not told apart, the CLI on built-in and user trees, and clear errors. No assertion on
absolute times."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jgd
from jgd.benchmark import compare, load_tree, make_tree, state_bytes, time_update

try:
    import torch  # noqa: F401

    HAS_TORCH = True
except ImportError:
    HAS_TORCH = False


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


def _barrier():
    """Stops XLA from fusing what comes before with what comes after."""
    return optax.GradientTransformation(lambda p: optax.EmptyState(),
                                        lambda u, s, p=None: (jax.lax.optimization_barrier(u), s))


def test_a_contender_doing_twice_the_work_measures_slower_and_identical_ones_do_not():
    params = make_tree(2_000_000, "leaf")
    # Two full adam passes, one after the other (the second reads the first's output).
    twice = optax.chain(jgd.adam(1e-3), _barrier(), jgd.adam(1e-3))

    def measured_as_planted(result):
        # "twice" moves 88 MB a step against adam's 56 (1.57x, a memory-bound step), so it
        # must measure clearly slower, beyond the noise; the identical contender within it
        return (result.row("twice")["ratio"] >= 1.3 and not result.row("twice")["within_noise"]
                and result.row("same adam")["within_noise"])

    # Timing on a shared machine: the planted difference must show in one of three runs.
    tables = []
    for _ in range(3):
        result = compare({"adam": jgd.adam(1e-3), "same adam": jgd.adam(1e-3), "twice": twice}, params,
                         repeats=8, rounds=4)
        if measured_as_planted(result):
            return
        tables.append(result.table())
    raise AssertionError("\n\n".join(tables))


def test_rows_add_up():
    params = {"w": jnp.zeros((300, 20), jnp.bfloat16), "b": jnp.zeros(20, jnp.float32)}
    opts = {"jgd": jgd.adam(1e-3), "optax": optax.adam(1e-3), "flat": jgd.flat(jgd.momentum(1e-3))}
    with jax.numpy_dtype_promotion("standard"):  # optax's adam mixes int counts and floats
        result = compare(opts, params, repeats=2, rounds=2, baseline="optax")
    assert [r["name"] for r in result.rows] == list(opts) and result.baseline == "optax"
    params_bytes = 300 * 20 * 2 + 20 * 4
    for r in result.rows:
        opt = opts[r["name"]]
        leaves = jax.tree.leaves(jax.eval_shape(opt.init, params))
        assert r["state_bytes"] == sum(x.size * x.dtype.itemsize for x in leaves) == state_bytes(opt, params)
        assert r["bytes_per_step"] == 3 * params_bytes + 2 * r["state_bytes"]
        assert len(r["times_us"]) == 4 and r["q1_us"] <= r["us_per_step"] <= r["q3_us"]
        np.testing.assert_allclose(r["us_per_step"], np.median(r["times_us"]))
        np.testing.assert_allclose(r["ratio"], r["us_per_step"] / result.row("optax")["us_per_step"])
        np.testing.assert_allclose(r["gb_per_s"], r["bytes_per_step"] / r["us_per_step"] / 1e3)
        assert r["compile_seconds"] > 0
    # adam's state in bf16 for the bf16 leaf: count, mu, nu
    assert result.row("jgd")["state_bytes"] == 4 + 2 * params_bytes
    assert "ratio" in result.table() and "optax" in str(result)


def test_to_json_and_plot(tmp_path):
    result = compare({"a": jgd.sgd(1e-3), "b": optax.sgd(1e-3)}, make_tree(1000, "tiny"), repeats=2, rounds=1)
    result.to_json(tmp_path / "out.json")
    data = json.loads((tmp_path / "out.json").read_text())
    assert {"rows", "baseline", "num_params", "num_leaves", "roofline_gb_per_s", "machine"} <= set(data)
    assert set(data["rows"][0]) >= {"name", "us_per_step", "spread_pct", "ratio", "within_noise", "bytes_per_step",
                                    "gb_per_s", "pct_roofline", "compile_seconds", "state_bytes"}
    pytest.importorskip("matplotlib")
    result.plot(tmp_path / "out.png")
    assert (tmp_path / "out.png").stat().st_size > 0


@pytest.mark.parametrize(
    "contenders, kwargs, error, match",
    [
        ({}, {}, TypeError, "non-empty dict"),
        ({"a": jgd.sgd(0.1)}, {"baseline": "b"}, ValueError, "baseline 'b' is not a contender"),
        ({"a": jgd.sgd(0.1)}, {"repeats": 0}, ValueError, "repeats must be an int >= 1"),
        ({"a": "adam"}, {}, ValueError, "strings name torch.optim contenders"),
        ({"a": 3}, {}, TypeError, "optax GradientTransformation"),
        ({"a": "torch.lion"}, {}, ValueError, r"unknown torch contender 'torch.lion'.*adam"),
    ],
)
def test_bad_input(contenders, kwargs, error, match):
    with pytest.raises(error, match=match):
        compare(contenders, make_tree(100, "tiny"), **kwargs)


@pytest.mark.skipif(HAS_TORCH, reason="torch is installed")
def test_torch_contender_without_torch_says_which_extra():
    with pytest.raises(ImportError, match=r"jgd\[bench\]"):
        compare({"t": "torch.adam"}, make_tree(100, "tiny"))


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (pip install 'jgd[bench]')")
def test_torch_contenders():
    params = {"w": jnp.zeros((64, 32), jnp.float32), "b": jnp.zeros(32, jnp.float32)}
    result = compare({"jgd": jgd.adam(1e-3), "torch": "torch.adam", "foreach": "torch.adam.foreach"}, params,
                     repeats=2, rounds=1)
    # torch's adam keeps exp_avg, exp_avg_sq and a float32 step per tensor
    n = 64 * 32 + 32
    assert result.row("torch")["state_bytes"] == 2 * 4 * n + 2 * 4
    assert result.row("torch")["compile_seconds"] is None


def test_load_tree(tmp_path):
    shapes = tmp_path / "shapes.json"
    shapes.write_text(json.dumps({"embed": [100, 16], "norm": {"shape": [16], "dtype": "bfloat16"}}))
    tree = load_tree(str(shapes))
    assert tree["embed"].shape == (100, 16) and tree["norm"].dtype == jnp.bfloat16
    assert load_tree(str(shapes), dtype="bfloat16")["embed"].dtype == jnp.bfloat16
    for spec, match in [("nope", "unknown tree 'nope'"), (str(tmp_path / "missing.json"), "cannot read"),
                        ("json:nothing_here", "has no function")]:
        with pytest.raises(ValueError, match=match):
            load_tree(spec)


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "jgd.benchmark", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_cli_with_a_user_function_a_shapes_file_json_and_plot(tmp_path):
    (tmp_path / "mymodel.py").write_text(
        "import jax.numpy as jnp\n"
        "def init():\n    return {'w': jnp.zeros((32, 8), jnp.bfloat16), 'b': jnp.zeros(8, jnp.bfloat16)}\n"
        "def bad():\n    return {'w': jnp.zeros(3), 'act': 'relu'}\n")
    (tmp_path / "shapes.json").write_text(json.dumps([[10, 4], {"shape": [4], "dtype": "float32"}]))
    out = _cli("--opt", "adam,momentum", "--against", "optax", "--tree", "mymodel:init,shapes.json", "--flat",
               "--repeats", "2", "--rounds", "1", "--json", "out.json", "--plot", "out.png", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = json.loads((tmp_path / "out.json").read_text())
    assert [(r["tree"], r["rule"]) for r in rows] == [("mymodel:init", "adam"), ("mymodel:init", "momentum"),
                                                      ("shapes.json", "adam"), ("shapes.json", "momentum")]
    assert [c["name"] for c in rows[0]["rows"]] == ["jgd.adam", "jgd.flat(adam)", "optax.adam"]
    assert rows[0]["num_params"] == 32 * 8 + 8 and rows[2]["num_params"] == 44
    assert "us/step" in out.stdout
    if (tmp_path / "out.png").exists():
        assert (tmp_path / "out.png").stat().st_size > 0
    bad = _cli("--tree", "mymodel:bad", cwd=tmp_path)
    assert bad.returncode != 0 and "params['act']" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    "args, match",
    [
        (["--opt", "adamm"], "unknown optimizer 'adamm'; known: sgd, momentum"),
        (["--against", "jaxopt"], "unknown library 'jaxopt'; known: optax, torch"),
        (["--tree", "forest"], "unknown tree 'forest'"),
    ],
)
def test_cli_errors(args, match):
    out = _cli(*args, "--repeats", "1", "--rounds", "1")
    assert out.returncode != 0 and match in out.stderr and "Traceback" not in out.stderr


@pytest.mark.skipif(HAS_TORCH, reason="torch is installed")
def test_cli_torch_without_torch():
    out = _cli("--against", "torch")
    assert out.returncode != 0 and "jgd[bench]" in out.stderr

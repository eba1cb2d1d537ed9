"""jgd.sweep: run-by-run equality with minimize, isolation, devices, processes, errors."""

import os
import pathlib
import pickle
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgd
import sweep_case
from problems import TraceCounter

HERE = pathlib.Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def result():
    return sweep_case.run()


def test_shapes(result):
    assert result.losses.shape == (3, 3, 2, 30)
    assert result.final_loss.shape == (3, 3, 2)
    assert result.hparams["learning_rate"].shape == (3, 3)
    np.testing.assert_array_equal(result.hparams["beta"][1], [0.0, 0.5, 0.9])


@pytest.mark.parametrize("index, seed", [((0, 0), 0), ((1, 2), 1), ((2, 1), 0)])
def test_each_run_equals_minimize_with_its_seed(result, index, seed):
    k = jax.random.split(jax.random.key(3), 2)[seed]
    lr = jnp.float32(result.hparams["learning_rate"][index])
    beta = jnp.float32(result.hparams["beta"][index])
    r = jgd.minimize(sweep_case.loss, sweep_case.init(k), jgd.momentum(lr, beta), steps=30,
                     data=(sweep_case.X, sweep_case.Y), batch_size=8, key=k)
    np.testing.assert_allclose(result.losses[index + (seed,)], r.losses, rtol=1e-6, atol=1e-7)
    # Seeds differ: each gets its own params and batches.
    assert not np.allclose(result.losses[index + (0,)], result.losses[index + (1,)])


def test_fixed_params_and_explicit_chunks_agree(result):
    chunked = sweep_case.run(chunk_size=4)
    np.testing.assert_allclose(chunked.losses, result.losses, rtol=1e-6, atol=1e-7)


def test_divergent_run_leaves_the_others_bit_identical():
    common = dict(seeds=1, steps=40, key=jax.random.key(1), data=(sweep_case.X, sweep_case.Y),
                  batch_size=8, chunk_size=2)
    params = jnp.zeros(5, jnp.float32)
    with_bad = jgd.sweep(sweep_case.loss, params, jgd.sgd, {"learning_rate": [0.01, 0.05, 1e6]}, **common)
    without = jgd.sweep(sweep_case.loss, params, jgd.sgd, {"learning_rate": [0.01, 0.05]}, **common)
    assert with_bad.diverged[2, 0] and not with_bad.diverged[:2].any()
    assert not np.isfinite(with_bad.final_loss[2, 0])
    np.testing.assert_array_equal(with_bad.losses[:2], without.losses)
    best = with_bad.best()
    assert best["learning_rate"] in (0.01, 0.05) and np.isfinite(best["final_loss"])
    assert "diverged" in with_bad.table()


def test_best_table_plot_and_pickle(result, tmp_path):
    best = result.best()
    mean = result.final_loss.mean(-1)
    assert best["final_loss"] == pytest.approx(mean.min())
    assert result.hparams["learning_rate"][best["index"]] == pytest.approx(best["learning_rate"])
    table = result.table()
    star = [line for line in table.splitlines() if line.startswith("*")]
    assert len(star) == 1 and f"{best['learning_rate']:.6g}" in star[0]
    rows = table.splitlines()[2:]
    assert len(rows) == 9 and rows[0].startswith("*")
    path = tmp_path / "sweep.png"
    result.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = pickle.loads(pickle.dumps(result))
    np.testing.assert_array_equal(back.losses, result.losses)


def test_one_compilation_for_new_values():
    counter = TraceCounter(sweep_case.loss)
    common = dict(seeds=2, steps=10, data=(sweep_case.X, sweep_case.Y), batch_size=8)
    jgd.sweep(counter, jnp.zeros(5), jgd.adam, {"learning_rate": [1e-3, 1e-2]}, **common)
    traced = counter.count
    jgd.sweep(counter, jnp.zeros(5), jgd.adam, {"learning_rate": [3e-3, 3e-2]}, **common)
    assert traced > 0 and counter.count == traced


@pytest.mark.parametrize(
    "grid, kwargs, match",
    [
        ({"learning_rat": [0.1]}, {}, "learning_rat"),
        ({}, {}, "non-empty"),
        ({"learning_rate": []}, {}, "non-empty"),
        ({"learning_rate": ["a", "b"]}, {}, "numbers"),
        ({"learning_rate": "fast"}, {}, "numbers"),
        ({"learning_rate": [0.1, -1.0]}, {}, "learning_rate"),
        ({"learning_rate": [0.1]}, {"seeds": 0}, "seeds"),
    ],
)
def test_bad_input(grid, kwargs, match):
    with pytest.raises(ValueError, match=match):
        jgd.sweep(sweep_case.loss, jnp.zeros(5), jgd.sgd, grid, steps=5,
                  data=(sweep_case.X, sweep_case.Y), **kwargs)


def _subprocess_env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def test_four_forced_devices_equal_one_device(result, tmp_path):
    out = tmp_path / "losses.npy"
    proc = subprocess.run(
        [sys.executable, str(HERE / "sweep_worker.py"), str(out), "devices"],
        env=_subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"),
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "devices 4" in proc.stdout
    np.testing.assert_allclose(np.load(out), result.losses, rtol=1e-6, atol=1e-7)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process(result, tmp_path):
    port = str(_free_port())
    env = _subprocess_env(JAX_PLATFORMS="cpu")
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "sweep_worker.py"), str(tmp_path / f"losses{i}.npy"),
             "distributed", str(i), port],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 0, stderr[-3000:]
        assert "processes 2" in stdout
    for i in range(2):
        np.testing.assert_allclose(np.load(tmp_path / f"losses{i}.npy"), result.losses, rtol=1e-6, atol=1e-7)

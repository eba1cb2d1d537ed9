"""Saving and resuming with orbax: a segmented run against the uninterrupted one (bit for
bit), a subprocess killed with SIGKILL once two checkpoints exist and then called again,
another configuration refused, a damaged newest checkpoint falling back to the previous."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("orbax.checkpoint")

import checkpoint_case  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import jgd  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def uninterrupted():
    return {"sweep": checkpoint_case.arrays(checkpoint_case.sweep()),
            "minimize": checkpoint_case.arrays(checkpoint_case.minimize())}


def assert_same(actual, expected):
    assert set(actual) == set(expected)
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def checkpoints(path):
    """The finished checkpoints (orbax renames a step's directory when it is complete)."""
    return sorted(int(p.name) for p in pathlib.Path(path).glob("*") if p.name.isdigit()) if os.path.isdir(path) else []


@pytest.mark.parametrize("kind", ["sweep", "minimize"])
def test_segmented_run_equals_the_uninterrupted_one(kind, uninterrupted, tmp_path):
    run = getattr(checkpoint_case, kind)
    assert_same(checkpoint_case.arrays(run(save_dir=tmp_path, save_every=20)), uninterrupted[kind])
    assert checkpoints(tmp_path) == [280, 300], "the last two checkpoints are kept"
    # Called again, it resumes from the finished checkpoint: the same result.
    assert_same(checkpoint_case.arrays(run(save_dir=tmp_path, save_every=20)), uninterrupted[kind])


@pytest.mark.parametrize("kind", ["sweep", "minimize"])
def test_killed_and_called_again_equals_uninterrupted(kind, uninterrupted, tmp_path):
    save_dir, out = tmp_path / "run", tmp_path / "out.npz"
    command = [sys.executable, str(HERE / "checkpoint_case.py"), kind, str(save_dir), str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while len(checkpoints(save_dir)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run must be killed before it finishes: " + stderr[-2000:]
    saved = checkpoints(save_dir)
    assert saved and saved[-1] < 300
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr
    resumed_at = int(again.stderr.split("at step ")[1].split()[0])
    assert resumed_at >= saved[-1] - 20, "redoes at most save_every steps per run"
    with np.load(out) as result:
        assert_same(dict(result), uninterrupted[kind])


def test_halving_saved_and_killed_equals_uninterrupted(tmp_path):
    expected = checkpoint_case.arrays(checkpoint_case.halving())
    assert_same(checkpoint_case.arrays(checkpoint_case.halving(save_dir=tmp_path / "whole", save_every=10)), expected)
    assert [checkpoints(tmp_path / "whole" / f"rung{r}")[-1] for r in range(3)] == [10, 20, 60]
    save_dir, out = tmp_path / "run", tmp_path / "out.npz"
    command = [sys.executable, str(HERE / "checkpoint_case.py"), "halving", str(save_dir), str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while len(checkpoints(save_dir / "rung1")) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run must be killed before it finishes: " + stderr[-2000:]
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr
    with np.load(out) as result:
        assert_same(dict(result), expected)


def test_sweep_without_evaluation_saved_in_segments(tmp_path):
    kwargs = dict(seeds=2, steps=60, data=(checkpoint_case.X, checkpoint_case.Y), batch_size=16)
    grid = {"learning_rate": [0.01, 0.1, 3.0]}  # the last one diverges: it stays stopped across segments
    whole = jgd.sweep(checkpoint_case.loss, checkpoint_case.init, jgd.sgd, grid, **kwargs)
    saved = jgd.sweep(checkpoint_case.loss, checkpoint_case.init, jgd.sgd, grid, save_dir=tmp_path, save_every=20,
                      **kwargs)
    assert whole.diverged[2].all() and (whole.num_steps[2] < 60).all()
    for name in ("losses", "params", "best_params", "num_steps", "diverged", "best_loss"):
        np.testing.assert_array_equal(getattr(saved, name), getattr(whole, name), err_msg=name)


def test_another_configuration_is_refused(tmp_path):
    checkpoint_case.sweep(steps=40, save_dir=tmp_path, save_every=20)
    with pytest.raises(ValueError, match="steps"):
        checkpoint_case.sweep(steps=60, save_dir=tmp_path, save_every=20)
    with pytest.raises(ValueError, match="kind"):
        checkpoint_case.minimize(steps=40, save_dir=tmp_path, save_every=20)
    with pytest.raises(ValueError, match="grid"):
        jgd.sweep(checkpoint_case.loss, checkpoint_case.init, jgd.momentum,
                  {"learning_rate": [0.01, 0.03, 0.2], "beta": [0.0, 0.9]}, seeds=2, key=checkpoint_case.jax.random.key(2),
                  steps=40, data=(checkpoint_case.X, checkpoint_case.Y), batch_size=16,
                  evaluate=jgd.Eval(checkpoint_case.val, (checkpoint_case.X_VAL, checkpoint_case.Y_VAL), every=10,
                                    monitor="mse"), save_dir=tmp_path, save_every=20)


def test_damaged_newest_checkpoint_falls_back_to_the_previous(uninterrupted, tmp_path):
    checkpoint_case.minimize(save_dir=tmp_path, save_every=20)
    newest = tmp_path / "300"
    files = sorted((p for p in newest.rglob("*") if p.is_file() and p.stat().st_size > 0), key=lambda p: -p.stat().st_size)
    with open(files[0], "r+b") as f:  # truncate the largest file of the newest checkpoint
        f.truncate(f.seek(0, 2) // 2)
    with pytest.warns(RuntimeWarning, match="damaged"):
        result = checkpoint_case.minimize(save_dir=tmp_path, save_every=20)
    assert_same(checkpoint_case.arrays(result), uninterrupted["minimize"])


@pytest.mark.parametrize("kwargs, match", [
    (dict(save_every=20), "save_dir and save_every"),
    (dict(save_dir="x", save_every=7), "must divide steps"),
    (dict(save_dir="x", save_every=0), "save_every"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jgd.minimize(checkpoint_case.loss, jnp.zeros(8), jgd.sgd(0.1), steps=40, data=(checkpoint_case.X, checkpoint_case.Y),
                     **kwargs)


def test_save_every_must_fit_the_evaluation_schedule(tmp_path):
    with pytest.raises(ValueError, match="multiple of evaluate.every"):
        jgd.minimize(checkpoint_case.loss, jnp.zeros(8), jgd.sgd(0.1), steps=40,
                     data=(checkpoint_case.X, checkpoint_case.Y),
                     evaluate=jgd.Eval(checkpoint_case.val, (checkpoint_case.X_VAL, checkpoint_case.Y_VAL), every=15),
                     save_dir=tmp_path, save_every=20)

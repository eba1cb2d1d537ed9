"""jgd.sweep: run-by-run equality with minimize, isolation, devices, processes, errors."""

import os
import pathlib
import pickle
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import processes
import pytest
import sweep_case
from problems import TraceCounter

import jgd

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


@pytest.mark.parametrize("loop", ["device", "host"])
def test_four_forced_devices_equal_one_device(result, tmp_path, loop):
    out = tmp_path / "losses.npy"
    proc = subprocess.run(
        [sys.executable, str(HERE / "sweep_worker.py"), str(out), "devices", loop],
        env=_subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"),
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "devices 4" in proc.stdout
    np.testing.assert_allclose(np.load(out), result.losses, rtol=1e-6, atol=1e-7)


def _two_processes(tmp_path, *extra):
    port = processes.free_port()
    done = processes.run_together(
        [[sys.executable, str(HERE / "sweep_worker.py"), str(tmp_path / f"losses{i}.npy"), "distributed", str(i), port,
          *map(str, extra)] for i in range(2)], timeout=240, env=_subprocess_env(JAX_PLATFORMS="cpu"))
    for returncode, stdout, stderr in done:
        assert returncode == 0, stderr[-3000:]
        assert "processes 2" in stdout
    return [stderr for _, _, stderr in done]


def test_two_processes_equal_one_process(result, tmp_path):
    _two_processes(tmp_path)
    for i in range(2):
        np.testing.assert_allclose(np.load(tmp_path / f"losses{i}.npy"), result.losses, rtol=1e-6, atol=1e-7)


def test_two_processes_through_the_host_loop_equal_one_process(result, tmp_path):
    _two_processes(tmp_path, "host")  # the host loop's syncs (is any run going on?) in step
    for i in range(2):
        np.testing.assert_allclose(np.load(tmp_path / f"losses{i}.npy"), result.losses, rtol=1e-6, atol=1e-7)


def test_two_processes_with_one_global_data_array_equal_one_process(result, tmp_path):
    """Each process holds half the examples of a data array sharded over both (what a
    several-host input pipeline gives): the sweep takes it without fetching it."""
    for extra in ((), (tmp_path / "saved",)):  # one program; segments saved after each
        _two_processes(tmp_path, "global", *extra)
        for i in range(2):
            np.testing.assert_allclose(np.load(tmp_path / f"losses{i}.npy"), result.losses, rtol=1e-6, atol=1e-7)
    assert sorted(p.name for p in (tmp_path / "saved").iterdir() if p.name.isdigit()) == ["20", "30"]


def test_two_processes_save_and_resume_together(result, tmp_path):
    pytest.importorskip("orbax.checkpoint")
    save_dir = tmp_path / "saved"
    _two_processes(tmp_path, save_dir)
    steps = sorted(int(p.name) for p in save_dir.iterdir() if p.name.isdigit())
    assert steps == [20, 30]
    # An interruption after step 20: the newest checkpoint is gone; both processes resume there.
    shutil.rmtree(save_dir / "30")
    stderrs = _two_processes(tmp_path, save_dir)
    assert all("resuming from" in e and "at step 20" in e for e in stderrs), stderrs[0][-2000:]
    for i in range(2):
        np.testing.assert_allclose(np.load(tmp_path / f"losses{i}.npy"), result.losses, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- held-out selection

X_VAL = sweep_case.X[:16] + 0.5
Y_VAL = sweep_case.Y[:16]


def val_metrics(w, data):
    r = data[0] @ w - data[1]
    return {"mse": jnp.mean(r * r), "mae": jnp.mean(jnp.abs(r))}


def loss_with_aux(w, batch):
    r = batch[0] @ w - batch[1]
    return 0.5 * jnp.mean(r * r), {"max": jnp.max(jnp.abs(r))}


EVAL_GRID = {"learning_rate": [0.02, 0.1, 0.3], "beta": [0.0, 0.9]}
EVAL_KWARGS = dict(steps=40, data=(sweep_case.X, sweep_case.Y), batch_size=8, has_aux=True,
                   evaluate=jgd.Eval(val_metrics, (X_VAL, Y_VAL), every=10, monitor="mse"))


@pytest.fixture(scope="module")
def evaluated():
    return jgd.sweep(loss_with_aux, sweep_case.init, jgd.momentum, EVAL_GRID, seeds=2,
                     key=jax.random.key(5), **EVAL_KWARGS)


@pytest.fixture(scope="module")
def one_by_one():
    """Every run of `evaluated` as its own minimize call: the oracle for the sweep."""
    keys = jax.random.split(jax.random.key(5), 2)
    runs = {}
    for i, lr in enumerate(EVAL_GRID["learning_rate"]):
        for j, beta in enumerate(EVAL_GRID["beta"]):
            for s in range(2):
                opt = jgd.momentum(jnp.float32(lr), jnp.float32(beta))
                runs[i, j, s] = jgd.minimize(loss_with_aux, sweep_case.init(keys[s]), opt, key=keys[s], **EVAL_KWARGS)
    return runs


def test_params_evals_and_aux_equal_run_by_run_minimize(evaluated, one_by_one):
    assert evaluated.params.shape == (3, 2, 2, 5) and evaluated.evals["mse"].shape == (3, 2, 2, 4)
    np.testing.assert_array_equal(evaluated.eval_steps, [10, 20, 30, 40])
    for (i, j, s), r in one_by_one.items():
        at = (i, j, s)
        for name, ours, theirs in [("params", evaluated.params[at], r.params),
                                   ("best_params", evaluated.best_params[at], r.best_params),
                                   ("mse", evaluated.evals["mse"][at], r.evals["mse"]),
                                   ("mae", evaluated.evals["mae"][at], r.evals["mae"]),
                                   ("best_loss", evaluated.best_loss[at], r.best_loss),
                                   ("aux", evaluated.aux["max"][at], r.aux["max"])]:
            np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=1e-7, err_msg=f"{name} at {at}")
        assert evaluated.best_step[at] == int(r.best_step)


def test_best_selects_on_held_out_data_and_returns_the_winners_params(evaluated, one_by_one):
    """The oracle picks from the one-by-one runs: mean over seeds of each run's best mse."""
    best_mse = np.array([[[float(one_by_one[i, j, s].best_loss) for s in range(2)] for j in range(2)]
                         for i in range(3)])
    i, j = np.unravel_index(np.argmin(best_mse.mean(-1)), (3, 2))
    seed = int(np.argmin(best_mse[i, j]))
    best = evaluated.best()
    assert best["index"] == (i, j) and best["seed"] == seed
    assert best["learning_rate"] == pytest.approx(EVAL_GRID["learning_rate"][i])
    assert best["mse"] == pytest.approx(best_mse[i, j].mean(), rel=1e-5)
    np.testing.assert_allclose(best["params"], one_by_one[i, j, seed].best_params, rtol=2e-6, atol=1e-7)

    # by= an eval metric: each run's last evaluation; mode="max" flips the choice.
    last_mae = np.array([[[float(one_by_one[i, j, s].evals["mae"][-1]) for s in range(2)] for j in range(2)]
                         for i in range(3)])
    for mode, pick in (("min", np.argmin), ("max", np.argmax)):
        chosen = evaluated.best(by="mae", mode=mode)
        assert chosen["index"] == np.unravel_index(pick(last_mae.mean(-1)), (3, 2))
    final = np.array([[[float(one_by_one[i, j, s].losses[-1]) for s in range(2)] for j in range(2)]
                      for i in range(3)])
    assert evaluated.best(by="final_loss")["index"] == np.unravel_index(np.argmin(final.mean(-1)), (3, 2))
    with pytest.raises(ValueError, match="accuracy"):
        evaluated.best(by="accuracy")
    with pytest.raises(ValueError, match="mode"):
        evaluated.best(mode="up")


def test_table_dataframe_and_plot_show_the_metrics(evaluated, tmp_path):
    table = evaluated.table()
    header = table.splitlines()[0]
    for column in ("final loss", "mse", "mae", "best mse", "best step", "seed std"):
        assert column in header
    rows = table.splitlines()[2:]
    assert len(rows) == 6 and rows[0].startswith("*")
    best = evaluated.best()
    assert f"{best['learning_rate']:.6g}" in rows[0]
    frame = evaluated.to_dataframe()
    assert len(frame) == 12 and {"learning_rate", "beta", "seed", "mse", "best_step", "diverged"} <= set(frame.columns)
    row = frame[(frame.seed == 1)].iloc[0]
    assert row.mse == pytest.approx(evaluated.evals["mse"][0, 0, 1, -1])
    path = tmp_path / "sweep.png"
    evaluated.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = pickle.loads(pickle.dumps(evaluated))
    np.testing.assert_array_equal(back.params, evaluated.params)


def test_keep_params_false_keeps_none():
    s = jgd.sweep(loss_with_aux, sweep_case.init, jgd.momentum, EVAL_GRID, seeds=1, keep_params=False,
                  **EVAL_KWARGS)
    assert s.params is None and s.best_params is None and s.best()["params"] is None
    assert s.evals["mse"].shape == (3, 2, 1, 4)


def test_nan_in_one_run_never_touches_the_others_with_evaluation():
    common = dict(seeds=1, key=jax.random.key(1), chunk_size=2, **EVAL_KWARGS)
    with_bad = jgd.sweep(loss_with_aux, jnp.zeros(5), jgd.sgd, {"learning_rate": [0.01, 0.05, 1e6]}, **common)
    without = jgd.sweep(loss_with_aux, jnp.zeros(5), jgd.sgd, {"learning_rate": [0.01, 0.05]}, **common)
    assert with_bad.diverged[2, 0] and np.isnan(with_bad.evals["mse"][2, 0, -1])
    np.testing.assert_array_equal(with_bad.evals["mse"][:2], without.evals["mse"])
    np.testing.assert_array_equal(with_bad.params[:2], without.params)
    assert with_bad.best()["learning_rate"] != 1e6


def test_one_compilation_with_evaluation():
    counter = TraceCounter(loss_with_aux)
    run = lambda lrs: jgd.sweep(counter, jnp.zeros(5), jgd.adam, {"learning_rate": lrs}, seeds=2,  # noqa: E731
                                **EVAL_KWARGS)
    run([1e-3, 1e-2])
    traced = counter.count
    run([3e-3, 3e-2])
    assert traced > 0 and counter.count == traced


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(eval_data=(X_VAL, Y_VAL)), TypeError, r"unexpected keyword eval_data=.*evaluate"),
        (dict(init_state=None), TypeError, "init_state"),
        (dict(evaluate=jgd.Eval(val_metrics, (X_VAL, Y_VAL), every=50)), ValueError, "every=50"),
        (dict(evaluate=val_metrics), TypeError, "jgd.Eval"),
        (dict(keep_params=1), TypeError, "keep_params"),
    ],
)
def test_bad_keywords(kwargs, error, match):
    with pytest.raises(error, match=match):
        jgd.sweep(sweep_case.loss, jnp.zeros(5), jgd.sgd, {"learning_rate": [0.1]}, steps=5,
                  data=(sweep_case.X, sweep_case.Y), **kwargs)


def test_progress_bar_over_segments_leaves_the_results_unchanged(evaluated, capsys):
    shown = jgd.sweep(loss_with_aux, sweep_case.init, jgd.momentum, EVAL_GRID, seeds=2, key=jax.random.key(5),
                      progress=True, **EVAL_KWARGS)
    err = capsys.readouterr().err
    assert "sweep of 12 runs" in err and "40/40" in err
    for field in ("losses", "best_loss", "best_step", "num_steps"):
        np.testing.assert_array_equal(getattr(shown, field), getattr(evaluated, field), err_msg=field)
    np.testing.assert_array_equal(shown.evals["mse"], evaluated.evals["mse"])
    jax.tree.map(np.testing.assert_array_equal, shown.best_params, evaluated.best_params)


def test_progress_bar_when_no_segment_divides_the_steps(capsys):
    # 61 steps evaluated every 5: no multiple of 5 divides 61; one segment, the same runs
    kwargs = dict(steps=61, evaluate=jgd.Eval(lambda w: {"w0": w[0]}, every=5), key=jax.random.key(5))
    loss = lambda w: jnp.sum((w - 1.0) ** 2)  # noqa: E731
    shown = jgd.sweep(loss, jnp.zeros(2), jgd.sgd, {"learning_rate": [0.01, 0.1]}, progress=True, **kwargs)
    assert "61/61" in capsys.readouterr().err
    plain = jgd.sweep(loss, jnp.zeros(2), jgd.sgd, {"learning_rate": [0.01, 0.1]}, **kwargs)
    np.testing.assert_array_equal(shown.losses, plain.losses)
    np.testing.assert_array_equal(shown.evals["w0"], plain.evals["w0"])


def test_runs_that_stop_mid_way_stay_stopped_through_segments():
    """Runs that meet tol, run out of patience (they would train on if continued) or run
    to the end, in segments from the host (progress=True: their state stays on
    device between segments) and as one program: the same records and params, bit for bit."""
    patient = jgd.Eval(val_metrics, (X_VAL, Y_VAL), every=5, monitor="mse", patience=1)
    kwargs = dict(steps=60, data=(sweep_case.X, sweep_case.Y), batch_size=8, tol=5e-2, key=jax.random.key(6),
                  evaluate=patient)
    grid = {"learning_rate": [0.002, 0.05, 0.3, 1e4], "beta": [0.0, 0.5]}
    whole = jgd.sweep(sweep_case.loss, sweep_case.init, jgd.momentum, grid, **kwargs)
    assert bool(whole.converged.any()) and bool(whole.stopped_early.any())
    assert whole.num_steps.min() < 60 and whole.num_steps.max() == 60
    segmented = jgd.sweep(sweep_case.loss, sweep_case.init, jgd.momentum, grid, progress=True, **kwargs)
    for field in ("losses", "num_steps", "converged", "diverged", "stopped_early", "params", "best_params",
                  "best_loss"):
        np.testing.assert_array_equal(getattr(segmented, field), getattr(whole, field), err_msg=field)


def test_halving_progress_bar_over_rungs(capsys):
    val = jgd.Eval(lambda w: jnp.sum((w - 1.0) ** 2), monitor="eval")
    kwargs = dict(samples=9, steps=90, min_steps=10, eta=3, evaluate=val)
    grid = {"learning_rate": jgd.loguniform(1e-3, 0.5)}
    shown = jgd.halving(lambda w: jnp.sum((w - 1.0) ** 2), jnp.zeros(2), jgd.sgd, grid, progress=True, **kwargs)
    err = capsys.readouterr().err
    assert "halving 9 configurations" in err and "3/3" in err
    plain = jgd.halving(lambda w: jnp.sum((w - 1.0) ** 2), jnp.zeros(2), jgd.sgd, grid, **kwargs)
    np.testing.assert_array_equal(shown.losses, plain.losses)
    np.testing.assert_array_equal(shown.rung, plain.rung)


def test_points_are_paired_and_capacity_reuses_one_program():
    def loss(w):
        return jnp.sum((w - 1.0) ** 2)

    lrs, betas = [0.01, 0.1, 0.3], [0.9, 0.0, 0.5]
    s = jgd.sweep(loss, jnp.zeros(2), jgd.momentum, points={"learning_rate": lrs, "beta": betas}, steps=30,
                  capacity=8, key=jax.random.key(1))
    assert s.losses.shape == (3, 1, 30)
    np.testing.assert_allclose(s.hparams["beta"], betas)
    for i, (lr, beta) in enumerate(zip(lrs, betas)):  # each point's run is minimize with that point
        r = jgd.minimize(loss, jnp.zeros(2), jgd.momentum(jnp.float32(lr), jnp.float32(beta)), steps=30)
        np.testing.assert_allclose(s.losses[i, 0], r.losses, rtol=1e-6, atol=1e-7)
    plain = jgd.sweep(loss, jnp.zeros(2), jgd.momentum, points={"learning_rate": lrs, "beta": betas}, steps=30,
                      key=jax.random.key(1))
    np.testing.assert_allclose(s.losses, plain.losses, rtol=1e-6, atol=1e-7)  # padding changes no real run
    assert s.best()["learning_rate"] == plain.best()["learning_rate"]
    with jgd.debug.count_compiles() as compiles:  # another number of points, the same capacity
        five = jgd.sweep(loss, jnp.zeros(2), jgd.momentum, steps=30, capacity=8, key=jax.random.key(1),
                         points={"learning_rate": [0.2] * 5, "beta": [0.1, 0.2, 0.3, 0.4, 0.5]})
    assert five.losses.shape == (5, 1, 30)
    assert int(compiles) == 0, compiles


@pytest.mark.parametrize("kwargs, match", [
    (dict(points={"learning_rate": [0.1, 0.2], "beta": [0.9]}), "one length"),
    (dict(points={"learning_rate": [0.1]}, grid={"learning_rate": [0.1]}), "one of them; got both"),
    (dict(), "one of them; got neither"),
    (dict(points={"learning_rate": [0.1, 0.2]}, capacity=1), "capacity=1 must be >= the number of points 2"),
    (dict(points={"learning_rate": jgd.loguniform(1e-3, 1.0)}), "points are explicit values"),
    (dict(points={"lr": [0.1]}), "points key 'lr' is not an argument"),
])
def test_bad_points(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jgd.sweep(lambda w: jnp.sum(w ** 2), jnp.zeros(2), jgd.momentum, steps=5, **kwargs)

"""Random search and successive halving: samples against their distributions (KS tests),
sampled runs and halving's survivors against plain minimize runs, promotions against the
evaluations, steps_spent against its formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sweep_case
from scipy import stats

import jgd

X_VAL, Y_VAL = sweep_case.X[:16] + 0.5, sweep_case.Y[:16]


def val_mse(w, data):
    r = data[0] @ w - data[1]
    return {"mse": jnp.mean(r * r)}


EVALUATE = jgd.Eval(val_mse, (X_VAL, Y_VAL), every=5, monitor="mse")
EVALUATE_4 = jgd.Eval(val_mse, (X_VAL, Y_VAL), every=4, monitor="mse")
COMMON = dict(data=(sweep_case.X, sweep_case.Y), batch_size=8)


@pytest.mark.parametrize("dist, cdf", [
    (jgd.uniform(-2.0, 3.0), stats.uniform(-2.0, 5.0).cdf),
    (jgd.loguniform(1e-4, 1.0), lambda x: stats.uniform(np.log(1e-4), -np.log(1e-4)).cdf(np.log(x))),
])
def test_samples_follow_their_distribution(dist, cdf):
    draws = dist.sample(jax.random.key(0), 4000)
    assert draws.min() >= dist.low and draws.max() < dist.high
    assert stats.kstest(draws, cdf).pvalue > 1e-3
    np.testing.assert_array_equal(draws, dist.sample(jax.random.key(0), 4000))
    assert not np.array_equal(draws, dist.sample(jax.random.key(1), 4000))


def test_choice_is_uniform_over_its_values():
    draws = jgd.choice([0.0, 0.5, 0.9]).sample(jax.random.key(0), 3000)
    counts = np.array([(draws == np.float32(v)).sum() for v in (0.0, 0.5, 0.9)])
    assert counts.sum() == 3000 and stats.chisquare(counts).pvalue > 1e-3


def test_sampled_sweep_runs_equal_minimize_with_their_hyperparameters_and_seed_keys():
    grid = {"learning_rate": jgd.loguniform(1e-3, 0.3), "beta": [0.0, 0.9]}
    s = jgd.sweep(sweep_case.loss, sweep_case.init, jgd.momentum, grid, samples=6, seeds=2,
                  key=jax.random.key(3), steps=20, **COMMON)
    assert s.final_loss.shape == (6, 2) and s.hparams["learning_rate"].shape == (6,)
    assert set(s.hparams["beta"].tolist()) <= {0.0, np.float32(0.9)}
    again = jgd.sweep(sweep_case.loss, sweep_case.init, jgd.momentum, grid, samples=6, seeds=2,
                      key=jax.random.key(3), steps=20, **COMMON)
    np.testing.assert_array_equal(again.hparams["learning_rate"], s.hparams["learning_rate"])
    keys = jax.random.split(jax.random.key(3), 2)
    for i in (0, 5):
        for seed in (0, 1):
            opt = jgd.momentum(jnp.float32(s.hparams["learning_rate"][i]), jnp.float32(s.hparams["beta"][i]))
            r = jgd.minimize(sweep_case.loss, sweep_case.init(keys[seed]), opt, steps=20, key=keys[seed], **COMMON)
            np.testing.assert_allclose(s.losses[i, seed], r.losses, rtol=2e-6, atol=1e-7)
            np.testing.assert_allclose(s.params[i, seed], r.params, rtol=2e-6, atol=1e-7)


@pytest.fixture(scope="module")
def halved():
    grid = {"learning_rate": jgd.loguniform(1e-3, 0.5), "beta": jgd.uniform(0.0, 0.95)}
    return jgd.halving(sweep_case.loss, sweep_case.init, jgd.momentum, grid, samples=10, steps=45,
                       min_steps=5, eta=3, evaluate=EVALUATE, seeds=2, key=jax.random.key(8), **COMMON)


def _minimize(halved, i, steps):
    """Configuration i, seed by seed, as plain minimize runs of `steps` steps."""
    keys = jax.random.split(jax.random.key(8), 2)
    opt = jgd.momentum(jnp.float32(halved.hparams["learning_rate"][i]), jnp.float32(halved.hparams["beta"][i]))
    return [jgd.minimize(sweep_case.loss, sweep_case.init(k), opt, steps=steps, key=k, evaluate=EVALUATE, **COMMON)
            for k in keys]


def test_rungs_and_steps_spent(halved):
    # budgets 5, 15, 45: 10 configurations, then 10 // 3 = 3, then 1.
    assert np.bincount(halved.rung).tolist() == [7, 2, 1]
    assert halved.steps_spent == 10 * 5 + 3 * (15 - 5) + 1 * (45 - 15)
    reached = np.array([5, 15, 45])[halved.rung]
    np.testing.assert_array_equal(halved.num_steps, np.repeat(reached[:, None], 2, 1))
    for i in range(10):
        assert np.all(np.isfinite(halved.losses[i, :, : reached[i]]))
        assert np.all(np.isnan(halved.losses[i, :, reached[i]:]))


def test_promotions_are_exactly_the_best_third_by_the_monitored_metric(halved):
    """The oracle ranks plain minimize runs' evaluations at each rung's end."""
    budgets = [5, 15]
    alive = np.arange(10)
    for r, budget in enumerate(budgets):
        mse = np.array([[float(run.evals["mse"][budget // 5 - 1]) for run in _minimize(halved, i, budget)]
                        for i in alive])
        mean = np.where(np.isfinite(mse).all(1), mse.mean(1), np.inf)
        promoted = set(alive[np.argsort(mean, kind="stable")[: max(1, alive.size // 3)]].tolist())
        assert promoted == set(np.flatnonzero(halved.rung > r).tolist())
        alive = np.array(sorted(promoted))


def test_survivors_equal_minimize_runs_for_the_steps_they_reached(halved):
    for i in range(10):
        steps = [5, 15, 45][halved.rung[i]]
        for seed, run in enumerate(_minimize(halved, i, steps)):
            np.testing.assert_allclose(halved.losses[i, seed, :steps], run.losses, rtol=2e-6, atol=1e-7)
            np.testing.assert_allclose(halved.params[i, seed], run.params, rtol=2e-6, atol=1e-6)
            n = steps // 5
            np.testing.assert_allclose(halved.evals["mse"][i, seed, :n], run.evals["mse"], rtol=2e-6)
            np.testing.assert_allclose(halved.best_loss[i, seed], run.best_loss, rtol=2e-6)
    best = halved.best()
    assert halved.rung[best["index"][0]] >= 1
    assert "rung" in halved.to_dataframe().columns


def test_every_rung_of_a_halving_is_one_compiled_program():
    """Rungs of 16, 5 and 1 configurations (3 seeds: 48, 15, 3 runs), running 4, 8 and 24
    steps: one compilation of the segment program for all of them (jax's compile log)."""
    fresh = lambda w, batch: sweep_case.loss(w, batch)  # noqa: E731 - a loss no other test compiled
    with jgd.debug.count_compiles() as compiles:
        s = jgd.halving(fresh, sweep_case.init, jgd.momentum, {"learning_rate": jgd.loguniform(1e-3, 0.3)},
                        samples=16, seeds=3, steps=36, min_steps=4, eta=3, evaluate=EVALUATE_4, **COMMON)
    assert np.bincount(s.rung).tolist() == [11, 4, 1]
    assert compiles.of("program") == 1, compiles.names
    assert compiles.of("initial_program") == 1, compiles.names


def test_halving_over_a_grid_lists_its_points():
    grid = {"learning_rate": [0.01, 0.05, 0.1], "beta": [0.0, 0.9]}
    s = jgd.halving(sweep_case.loss, jnp.zeros(5), jgd.momentum, grid, steps=20, min_steps=10, eta=2,
                    evaluate=EVALUATE, **COMMON)
    assert s.final_loss.shape == (6, 1)
    np.testing.assert_array_equal(s.hparams["beta"], [0.0, 0.9] * 3)
    assert np.bincount(s.rung).tolist() == [3, 3] and s.steps_spent == 6 * 10 + 3 * 10


@pytest.mark.parametrize("call, error, match", [
    (lambda: jgd.uniform(1.0, 1.0), ValueError, "low < high"),
    (lambda: jgd.loguniform(0.0, 1.0), ValueError, "low > 0"),
    (lambda: jgd.loguniform(1.0, 0.1), ValueError, "low < high"),
    (lambda: jgd.choice([]), ValueError, "non-empty"),
    (lambda: jgd.uniform("a", 1.0), TypeError, "low"),
    (lambda: jgd.sweep(sweep_case.loss, jnp.zeros(5), jgd.sgd, {"learning_rate": jgd.loguniform(1e-3, 1.0)},
                       steps=5), ValueError, "samples=N"),
    (lambda: jgd.sweep(sweep_case.loss, jnp.zeros(5), jgd.sgd, {"learning_rate": [0.1]}, samples=0, steps=5),
     ValueError, "samples"),
    (lambda: jgd.halving(sweep_case.loss, jnp.zeros(5), jgd.sgd, {"learning_rate": [0.1, 0.2]}, steps=20,
                         min_steps=5, evaluate=jgd.Eval(val_mse, (X_VAL, Y_VAL)), **COMMON), ValueError, "monitor"),
    (lambda: jgd.halving(sweep_case.loss, jnp.zeros(5), jgd.sgd, {"learning_rate": [0.1, 0.2]}, steps=20,
                         min_steps=5, evaluate=jgd.Eval(val_mse, (X_VAL, Y_VAL), every=4, monitor="mse"), **COMMON),
     ValueError, "divide every rung"),
    (lambda: jgd.halving(sweep_case.loss, jnp.zeros(5), jgd.sgd, {"learning_rate": [0.1, 0.2]}, steps=20,
                         min_steps=5, eta=1, evaluate=EVALUATE, **COMMON), ValueError, "eta"),
    (lambda: jgd.halving(sweep_case.loss, jnp.zeros(5), jgd.sgd, {"learning_rate": [0.1, 0.2]}, steps=20,
                         min_steps=30, evaluate=EVALUATE, **COMMON), ValueError, "min_steps"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()

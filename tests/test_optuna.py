"""jgd.optuna.optimize against plain Optuna: with the same seeded RandomSampler (its
suggestions do not depend on the told values) every trial is suggested the same point, and
the value jgd tells equals the value a plain objective computes with jgd.minimize for that
point and seed; the study compiles once (a shorter last batch included: jgd's compile log);
failed runs are
failed trials; errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgd

optuna = pytest.importorskip("optuna")
import jgd.optuna  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(64, 4)), jnp.float32)
Y = X @ jnp.asarray([1.0, -2.0, 0.5, 3.0])
KWARGS = dict(data=(X, Y), batch_size=16, steps=25)


def loss(w, batch):
    return jnp.mean((batch[0] @ w - batch[1]) ** 2)


def init(key):
    return 0.1 * jax.random.normal(key, (4,))


def suggest(trial):
    return {"learning_rate": trial.suggest_float("learning_rate", 1e-3, 0.3, log=True),
            "beta": trial.suggest_float("beta", 0.0, 0.95)}


def test_trials_equal_a_plain_optuna_objective_with_minimize_and_compile_once():
    key = jax.random.key(3)
    ours = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    results = jgd.optuna.optimize(ours, loss, init, jgd.momentum, suggest, trials=7, batch=3, key=key,
                                  seeds=2, **KWARGS)
    assert [r.final_loss.shape for r in results] == [(3, 2), (3, 2), (1, 2)]

    seed_keys = jax.random.split(key, 2)

    def objective(trial):
        hp = suggest(trial)
        opt = jgd.momentum(jnp.float32(hp["learning_rate"]), jnp.float32(hp["beta"]))
        runs = [jgd.minimize(loss, init(k), opt, key=k, **KWARGS) for k in seed_keys]
        return float(np.mean([r.losses[r.num_steps - 1] for r in runs]))

    theirs = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    theirs.optimize(objective, n_trials=7)
    for a, b in zip(ours.trials, theirs.trials, strict=True):
        assert a.params == b.params
        np.testing.assert_allclose(a.value, b.value, rtol=1e-5)


def test_the_study_compiles_once_across_batches():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    fresh = lambda w, batch: loss(w, batch)  # noqa: E731 - a loss no other test compiled
    with jgd.debug.count_compiles() as first:
        jgd.optuna.optimize(study, fresh, init, jgd.momentum, suggest, trials=2, batch=2, **KWARGS)
    with jgd.debug.count_compiles() as compiles:  # two more batches, the last one shorter
        jgd.optuna.optimize(study, fresh, init, jgd.momentum, suggest, trials=3, batch=2, **KWARGS)
    assert first.of("program") == 1  # the sweeps' program (its name as counted)
    assert compiles.of("program") == 0 and len(study.trials) == 5


def test_a_diverged_run_is_a_failed_trial_and_the_others_are_told():
    study = optuna.create_study()
    points = iter([1e-2, 1e3, 3e-2])  # a step of 1000 diverges
    jgd.optuna.optimize(study, loss, init, jgd.sgd, lambda t: {"learning_rate": t.suggest_float(
        "learning_rate", 1e-4, 1e4, log=True) * 0 + next(points)}, trials=3, batch=3, **KWARGS)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                      optuna.trial.TrialState.COMPLETE]


def test_a_maximized_monitor_needs_a_maximizing_study_and_names_disagree_clearly():
    evaluate = jgd.Eval(lambda w, b: {"neg": -loss(w, b)}, (X, Y), monitor="neg", mode="max")
    with pytest.raises(ValueError, match="direction is minimize but the score is to maximize"):
        jgd.optuna.optimize(optuna.create_study(), loss, init, jgd.sgd, suggest, trials=1, batch=1,
                            evaluate=evaluate, **KWARGS)
    study = optuna.create_study()
    names = iter([{"learning_rate": 0.1}, {"momentum": 0.9}])
    with pytest.raises(ValueError, match="same non-empty"):
        jgd.optuna.optimize(study, loss, init, jgd.sgd, lambda t: next(names), trials=2, batch=2, **KWARGS)
    assert all(t.state == optuna.trial.TrialState.FAIL for t in study.trials)
    with pytest.raises(TypeError, match="points= is not taken"):
        jgd.optuna.optimize(study, loss, init, jgd.sgd, suggest, trials=1, batch=1, points={}, **KWARGS)
    with pytest.raises(TypeError, match="study must be an optuna.Study"):
        jgd.optuna.optimize("study", loss, init, jgd.sgd, suggest, trials=1, batch=1, **KWARGS)

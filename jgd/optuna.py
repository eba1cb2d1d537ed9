"""``jgd.optuna.optimize``: any Optuna sampler, its trials evaluated a batch at a time as one
sweep compiled once for the whole study.

Optuna asks for one trial at a time and a user's objective trains one model per trial. Here
``batch`` trials are asked together, their suggested hyperparameters become the ``points=``
of one [`jgd.sweep`][jgd.sweep.sweep] with ``capacity=batch`` (so every batch, the last
shorter one included, runs the same compiled program), and each trial is told its score:
the sweep's default score (the monitored metric's best value with ``evaluate``'s monitor,
else the final training loss), the mean over seeds; a run that diverged or is not finite
is a failed trial. The sampler sees batches of results (TPE, CMA-ES and random search all
accept that; TPE with ``constant_liar=True`` spreads a batch's suggestions). Needs
``optuna`` (the ``jgd[optuna]`` extra).

Examples:
    >>> import optuna
    >>> import jgd.optuna
    >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
    >>> study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    >>> results = jgd.optuna.optimize(
    ...     study, lambda w: jnp.sum((w - 1.0) ** 2), jnp.zeros(2), jgd.sgd,
    ...     lambda trial: {"learning_rate": trial.suggest_float("learning_rate", 1e-3, 0.5, log=True)},
    ...     trials=6, batch=4, steps=20)
    >>> len(study.trials), [r.final_loss.shape for r in results]  # two sweeps: 4 points, then 2
    (6, [(4, 1), (2, 1)])
    >>> best = study.best_trial  # every trial was told its sweep run's final loss
    >>> best.value == min(float(r.final_loss.min()) for r in results)
    True
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from jgd._arguments import _check_int
from jgd.sweep import sweep
from jgd.sweep_result import SweepResult

__all__ = ["optimize"]


def optimize(study, fun: Callable, params, factory: Callable, suggest: Callable, *, trials: int, batch: int,
             **sweep_kwargs) -> list[SweepResult]:
    """Runs ``trials`` trials of an Optuna ``study``, ``batch`` at a time, each batch as one sweep.

    Args:
      study: an ``optuna.Study`` (any sampler); its direction must agree with the score:
        ``"maximize"`` for an ``evaluate`` monitor with ``mode="max"``, else ``"minimize"``.
      fun: the loss, as for [`jgd.minimize`][jgd.minimize.minimize].
      params: a pytree, or a function ``key -> params`` (a fresh init per seed).
      factory: the optimizer factory the suggested hyperparameters are given to.
      suggest: Optuna's define-by-run ``suggest(trial) -> {name: value}``; every trial
        must suggest the same names (a conditional space: one study per factory, or a
        [`jgd.sweep`][jgd.sweep.sweep] over a dict of factories).
      trials: how many trials to run.
      batch: trials asked, and run, together: the sweep's ``capacity`` (one compiled
        program for the whole study).
      **sweep_kwargs: ``steps`` and the other keywords of [`jgd.sweep`][jgd.sweep.sweep]
        (``seeds``, ``key``, ``data``, ``batch_size``, ``evaluate``...).

    Returns:
      The sweeps, one per batch (their ``hparams`` are the trials' suggestions, in order).
    """
    try:
        import optuna
    except ImportError:
        raise ImportError("jgd.optuna needs optuna: pip install 'jgd[optuna]'") from None
    if not isinstance(study, optuna.Study):
        raise TypeError(f"study must be an optuna.Study (optuna.create_study(...)), got {study!r}")
    if not callable(suggest):
        raise TypeError(f"suggest must be a function trial -> {{name: value}}, got {suggest!r}")
    trials = _check_int("trials", trials, 1)
    batch = _check_int("batch", batch, 1)
    for name in ("points", "grid", "samples", "capacity"):
        if name in sweep_kwargs:
            raise TypeError(f"optimize makes the points from the study's trials; {name}= is not taken")
    evaluate = sweep_kwargs.get("evaluate")
    mode = evaluate.mode if evaluate is not None and evaluate.monitor is not None else "min"
    wanted = optuna.study.StudyDirection.MAXIMIZE if mode == "max" else optuna.study.StudyDirection.MINIMIZE
    if study.direction != wanted:
        raise ValueError(f"the study's direction is {study.direction.name.lower()} but the score is to "
                         f"{wanted.name.lower()} (evaluate's mode={mode!r}): create the study with "
                         f"direction={wanted.name.lower()!r}")
    results = []
    for start in range(0, trials, batch):
        asked = [study.ask() for _ in range(min(batch, trials - start))]
        suggested = [suggest(trial) for trial in asked]
        names = _common_names(suggested, asked, study, optuna)
        points = {name: [s[name] for s in suggested] for name in names}
        result = sweep(fun, params, factory, points=points, capacity=batch, **sweep_kwargs)
        means = result._point_scores()[0]  # best()'s ranking: ±inf where a seed diverged or is not finite
        for trial, value in zip(asked, means):
            if np.isfinite(value):
                study.tell(trial, float(value))
            else:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
        results.append(result)
    return results


def _common_names(suggested, asked, study, optuna) -> list:
    """The names every trial of a batch suggested (in the first's order); a trial that
    suggested others, or not a dict, fails the batch with an error that says why."""
    first = suggested[0]
    for s in suggested:
        if not isinstance(s, dict) or not s or set(s) != set(first):
            for trial in asked:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise ValueError(f"suggest must return the same non-empty {{name: value}} for every trial; got "
                             f"{first!r} and {s!r} in one batch (a conditional space: one study per factory, "
                             "or jgd.sweep over a dict of factories)")
    return list(first)

"""``jgd.halving``: successive halving, every rung calls of the same compiled program, whose
survivors continue from where they stopped."""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import jax
import numpy as np

from jgd._arguments import _as_key, _check_bool, _check_int
from jgd._points import grid_points
from jgd._sweep_program import _cpu_lanes, default_chunk, run_keys
from jgd._sweep_segments import empty_store, record_segment, sweep_saved, sweep_segments
from jgd.checkpoint import sweep_fingerprint
from jgd.evaluation import Eval
from jgd.sweep import _check_kwargs
from jgd.sweep_result import SweepResult

__all__ = ["halving"]


def rung_budgets(min_steps: int, eta: int, steps: int) -> list:
    """The steps each rung has run in all: ``min_steps·eta^r`` below ``steps``, then ``steps``."""
    budgets, b = [], min_steps
    while b < steps:
        budgets.append(b)
        b *= eta
    return budgets + [steps]


def halving(
    fun: Callable,
    params,
    factory: Callable,
    grid: dict,
    *,
    samples: int | None = None,
    steps: int,
    eta: int = 3,
    min_steps: int,
    evaluate: Eval,
    seeds: int = 1,
    key=None,
    chunk_size: int | None = None,
    keep_params: bool = True,
    save_dir=None,
    save_every: int | None = None,
    progress: bool = False,
    **minimize_kwargs,
) -> SweepResult:
    """Successive halving over ``grid`` (or ``samples`` points of it), all rungs ONE program.

    Rung ``r`` runs its configurations until they have run ``min_steps·eta^r`` steps in
    all (the last rung: ``steps``), continuing each from where it stopped (optimizer and
    model state, sampler position, keys, best-iterate tracking): survivors are never
    restarted. Every rung ends with an evaluation; the best ``max(1, n // eta)`` of its
    ``n`` configurations by ``evaluate``'s monitored metric there (mean over seeds;
    non-finite ranks last) go on to the next rung (Jamieson & Talwalkar, AISTATS 2016;
    the rung schedule of Hyperband, Li et al., JMLR 2018).

    Args:
      fun, params, factory, seeds, key, chunk_size, keep_params, **minimize_kwargs: as
        for [`jgd.sweep`][jgd.sweep.sweep].
      grid, samples: the configurations: the grid's points, or ``samples`` points drawn
        from it (distributions allowed).
      steps: the steps of a configuration that reaches the last rung.
      eta: the reduction factor (>= 2): a rung keeps 1/eta of its configurations and the
        next one runs eta times as many steps in all.
      min_steps: the steps of the first rung.
      evaluate: a [`jgd.Eval`][jgd.Eval] with a ``monitor``. Its ``every`` must divide every
        rung's budget; ``None`` evaluates at the rung ends' common divisor.
      save_dir, save_every: survive preemption: every rung runs in segments of
        ``save_every`` steps (it must divide every rung's budget), saved after each in
        ``save_dir/rung<r>`` (orbax-checkpoint); called again, finished rungs are read
        back and the interrupted one resumes from its newest checkpoint, so the result
        equals an uninterrupted halving.
      progress: show a tqdm bar over the rungs, advanced from the host after each, with
        the configurations still in the race.

    Returns a [`jgd.SweepResult`][jgd.SweepResult] over all configurations (grid shape ``(N,)``),
    with ``rung`` (the last rung each reached) and ``steps_spent`` (the run-steps of all
    configurations together, for one seed). A configuration equals a ``minimize`` run of
    it, with its seed key, for the steps it reached; entries past those are NaN.

    Examples:
      >>> def loss(w):
      ...     return jnp.sum((w - 1.0) ** 2)
      >>> val = jgd.Eval(lambda w: loss(w), monitor="eval")
      >>> s = jgd.halving(loss, jnp.zeros(2), jgd.sgd, {"learning_rate": jgd.loguniform(1e-3, 0.5)},
      ...                 samples=9, steps=90, min_steps=10, eta=3, evaluate=val)
      >>> np.bincount(s.rung).tolist()  # configurations that stopped at rung 0, 1, 2
      [6, 2, 1]
      >>> s.steps_spent  # 9·10 + 3·(30 − 10) + 1·(90 − 30)
      210
    """
    if isinstance(factory, dict):
        raise TypeError("halving takes one factory; a dict of factories (the optimizer as a hyperparameter) "
                        "is supported by jgd.sweep, or run one halving per factory")
    if not callable(factory):
        raise TypeError(f"factory must be an optimizer factory such as jgd.adam, got {factory!r}")
    steps = _check_int("steps", steps, 1)
    min_steps = _check_int("min_steps", min_steps, 1)
    if min_steps > steps:
        raise ValueError(f"min_steps={min_steps} must be <= steps={steps}")
    eta = _check_int("eta", eta, 2)
    seeds = _check_int("seeds", seeds, 1)
    if chunk_size is not None:
        chunk_size = _check_int("chunk_size", chunk_size, 1)
    _check_bool("keep_params", keep_params)
    _check_bool("progress", progress)
    if not isinstance(evaluate, Eval):
        raise TypeError(f"halving needs evaluate=jgd.Eval(..., monitor=...) to rank by, got {evaluate!r}")
    if evaluate.monitor is None:
        raise ValueError("halving needs evaluate.monitor: the metric that ranks configurations at each rung")
    if minimize_kwargs.get("record_aux"):
        raise ValueError("halving does not take record_aux=True (each rung keeps its last step's aux)")
    if evaluate.patience is not None:
        raise ValueError("halving does not take an Eval with patience (halving itself stops configurations)")
    budgets = rung_budgets(min_steps, eta, steps)
    every = evaluate.every if evaluate.every is not None else math.gcd(*budgets)
    if any(b % every for b in budgets):
        raise ValueError(
            f"evaluate.every={every} must divide every rung's budget {budgets} (min_steps·eta^r and "
            "steps), so that each rung ends with an evaluation"
        )
    evaluate = Eval(evaluate.fun, evaluate.data, every, evaluate.monitor, evaluate.mode)
    _check_kwargs({**minimize_kwargs, "steps": steps, "evaluate": evaluate})
    key = _as_key(key)
    points, _, axes, hparams = grid_points(factory, grid, samples, key)
    if samples is None:  # a grid's points, listed
        hparams = {n: np.asarray(v).ravel() for n, v in hparams.items()}
        axes = dict(hparams)
    num = points.shape[0]
    seed_keys = jax.random.split(key, seeds)
    key_impl = jax.random.key_impl(seed_keys)
    names = tuple(axes)

    if save_dir is not None or save_every is not None:
        if save_dir is None or save_every is None:
            raise ValueError(f"save_dir and save_every go together, got save_dir={save_dir!r}, "
                             f"save_every={save_every!r}")
        save_every = _check_int("save_every", save_every, 1)
        if any(b % save_every for b in budgets) or save_every % every:
            raise ValueError(f"save_every={save_every} must divide every rung's budget {budgets} and be a "
                             f"multiple of evaluate.every={every}")

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(budgets), desc=f"halving {num} configurations", unit="rung")
    try:
        store, rung, spent = _rungs(fun, params, factory, names, points, seeds, seed_keys, key_impl, chunk_size,
                                    keep_params, minimize_kwargs, evaluate, budgets, every, save_dir, save_every,
                                    key, steps, eta, bar)
    finally:
        if bar is not None:
            bar.close()
    store = jax.tree.map(lambda x: x.reshape((num, seeds) + x.shape[1:]), store)
    store["eval_steps"] = every * np.arange(1, steps // every + 1, dtype=np.int32)
    return SweepResult.from_runs(store, grid=axes, hparams=hparams, sampled=True, monitor=evaluate.monitor,
                                 mode=evaluate.mode, rung=rung, steps_spent=int(spent))


def _rung_chunk(params, key_data, key_impl, num, seeds, eta, rungs):
    """The runs of one call of every rung's program. On CPU at most the last rung's runs
    per lane (core), so that it is not padded up to the first rung's chunk and runs on
    every core (measured on the digits MLP: chunks of 32 made halving's compiled search
    0.77x the grid's time, against chunks of the last rung's size); on GPU/TPU the whole
    first rung, whose padding in later rungs costs a small model nothing."""
    chunk = default_chunk(params, key_data, key_impl, num * seeds)
    if jax.default_backend() != "cpu":
        return chunk
    last = num
    for _ in range(rungs - 1):
        last = max(1, last // eta)
    per_device = -(-last * seeds // jax.device_count())
    return max(1, min(chunk, -(-per_device // _cpu_lanes())))


def _rungs(fun, params, factory, names, points, seeds, seed_keys, key_impl, chunk_size, keep_params, minimize_kwargs,
           evaluate, budgets, every, save_dir, save_every, key, steps, eta, bar):
    """The rungs, one after another: every run's records, the last rung each reached and the run-steps spent.

    Every rung goes in segments of the same length (``save_every``, or the rung budgets'
    common divisor) over chunks of the same size (``_rung_chunk``), so that every call of
    every rung is one compiled program: a rung compiles nothing (measured on the digits
    MLP, a compilation costs about as much as a whole rung's runs)."""
    num = points.shape[0]
    alive = np.arange(num)
    rung = np.zeros(num, np.int32)
    segment = save_every or math.gcd(*budgets)
    all_keys = run_keys(seed_keys, num)
    chunk = chunk_size or _rung_chunk(params, all_keys, key_impl, num, seeds, eta, len(budgets))
    carried, store, done, spent = None, None, 0, 0
    for r, budget in enumerate(budgets):
        if bar is not None:
            bar.set_postfix(configurations=alive.size, steps=budget)
        run_steps = budget - done
        args = (fun, params, factory, names, np.repeat(points[alive], seeds, axis=0), run_keys(seed_keys, alive.size),
                key_impl, chunk, keep_params, {**minimize_kwargs, "steps": run_steps, "evaluate": evaluate})
        if save_dir is None:
            out, carried = sweep_segments(*args, segment=segment, carried=carried, return_carry=True,
                                          pad_to_chunk=True)
        else:
            fingerprint = sweep_fingerprint("halving", args, grid=points[alive], seeds=seeds, key=key, rung=r,
                                            budgets=budgets)
            out, carried = sweep_saved(*args, save_dir=os.path.join(os.fspath(save_dir), f"rung{r}"),
                                       save_every=save_every, fingerprint=fingerprint, carried=carried,
                                       return_carry=True, pad_to_chunk=True)
        out.pop("stopped", None)
        if store is None:
            store = empty_store(out, num * seeds, steps, every)
        rows = (alive[:, None] * seeds + np.arange(seeds)).ravel()
        record_segment(store, out, rows, np.arange(rows.size), done, run_steps, every)
        rung[alive] = r
        spent += alive.size * run_steps
        done = budget
        if bar is not None:
            bar.update(1)
        if r == len(budgets) - 1:
            break
        score = out["evals"][evaluate.monitor][:, -1].reshape(alive.size, seeds)  # at the rung's end
        score = score if evaluate.mode == "min" else -score
        mean = np.where(np.isfinite(score).all(-1), score.mean(-1), np.inf)
        keep = np.sort(np.argsort(mean, kind="stable")[: max(1, alive.size // eta)])
        alive = alive[keep]
        kept_rows = (keep[:, None] * seeds + np.arange(seeds)).ravel()
        carried = jax.tree.map(lambda x: x[kept_rows], carried)

    assert store is not None  # there is always a rung
    store.pop("stopped")
    return store, rung, spent

"""``jgd.sweep``: a whole hyperparameter grid × seeds as one compiled, vmapped program.

The front: it checks the arguments, lists the points (``_points``) and runs them as calls
of one program (``_sweep_program``), to the end or in segments from the host
(``_sweep_segments``: progress, saving)."""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import numpy as np

from jgd._arguments import _as_key, _check_bool, _check_int
from jgd._points import explicit_points, grid_points
from jgd._sweep_program import _run, run_keys
from jgd._sweep_segments import progress_segment, sweep_saved, sweep_segments
from jgd.checkpoint import sweep_fingerprint
from jgd.evaluation import Eval
from jgd.minimize import _LOOPS
from jgd.sweep_result import SweepResult

__all__ = ["sweep", "SweepResult"]


# The keywords of minimize that a sweep passes through to every run.
_PASSED = ("steps", "data", "batch_size", "microbatches", "tol", "has_aux", "model_state",
           "with_key", "evaluate", "record_aux", "loop")


def _check_kwargs(minimize_kwargs):
    for name in minimize_kwargs:
        if name not in _PASSED:
            if name in ("key", "init_state"):
                raise TypeError(f"sweep does not take {name}= (pass key= to sweep itself)")
            raise TypeError(
                f"sweep got an unexpected keyword {name}=; it takes fun, params, factory, grid, "
                f"seeds, key, chunk_size, keep_params and minimize's {', '.join(_PASSED)}"
            )
    if "steps" not in minimize_kwargs:
        raise TypeError("sweep needs steps=")
    if minimize_kwargs.get("loop", "device") not in _LOOPS:
        raise ValueError(f"loop must be one of {_LOOPS}, got {minimize_kwargs['loop']!r}")
    evaluate = minimize_kwargs.get("evaluate")
    if evaluate is not None:
        if not isinstance(evaluate, Eval):
            raise TypeError(f"evaluate must be a jgd.Eval, got {evaluate!r}")
        evaluate.static(_check_int("steps", minimize_kwargs["steps"], 1))


def sweep(
    fun: Callable,
    params,
    factory: Callable,
    grid: dict | None = None,
    *,
    seeds: int = 1,
    key=None,
    samples: int | None = None,
    points: dict | None = None,
    capacity: int | None = None,
    chunk_size: int | None = None,
    keep_params: bool = True,
    save_dir=None,
    save_every: int | None = None,
    progress: bool = False,
    **minimize_kwargs,
) -> SweepResult:
    """Runs [`jgd.minimize`][jgd.minimize.minimize] for every point of ``grid`` × ``seeds`` as ONE program.

    Args:
      fun: the loss, as for [`jgd.minimize`][jgd.minimize.minimize].
      params: a pytree, or a function ``key -> params`` (a fresh init per seed).
      factory: an optimizer factory, e.g. ``jgd.momentum``; called with each grid point.
        Or a dict ``{name: factory}`` with ``grid`` (or ``points``) a dict ``{name: that
        factory's grid}``: the optimizer itself as a hyperparameter (a conditional space).
        Each factory's runs are swept apart (none computes another's rule) and joined in
        one result, flat (grid shape ``(K,)``), with an ``optimizer`` entry in ``hparams``
        (NaN for a hyperparameter a factory does not have); ``best()`` ranks them all.
      grid: ``{name: values}``; the Cartesian product of the axes is swept. An axis may
        be a distribution (``jgd.loguniform``, ``jgd.uniform``, ``jgd.choice``) instead.
      points: explicit points instead of a grid: ``{name: values}`` with lists (or
        arrays) of one length K, paired (point i takes the i-th value of every name); the
        result's grid shape is ``(K,)``. The way to feed points that change between calls
        (a tuner's suggestions): a factory that reads a mutable global table is not
        supported (the compiled program is cached by the factory, so JAX would keep the
        table it saw first).
      capacity: pad the runs to this many points (>= the number of points) with copies
        of the first, dropped from the result, so any number of points up to it reuses
        one compiled program.
      samples: random search: every axis is sampled ``samples`` times (a list as a
        uniform choice) and the result's grid shape is ``(samples,)``. Required with a
        distribution. Samples come from a key derived from ``key`` apart from the seed
        keys, so the seed rule below still holds run by run.
      seeds: runs per grid point; seed ``s`` uses ``jax.random.split(key, seeds)[s]``
        for ``params(k)``, ``model_state(k)``, the mini-batch sampler and the per-step keys.
      key: PRNG key (default ``jax.random.key(0)``).
      chunk_size: runs vmapped together on one device; chunks run one after another,
        each a call of the same compiled program. Default: all runs on GPU/TPU; on CPU as many as keep a
        chunk's params and optimizer state within ~2 MiB of cache.
      keep_params: keep every run's final and best params (and model state) in the
        result; ``False`` keeps none (for models too large to keep one per run).
      save_dir, save_every: survive preemption: run in segments of ``save_every`` steps
        (one compiled program for all) and save every run's state and results so far in
        ``save_dir`` after each (orbax-checkpoint); called again with the same
        ``save_dir``, the sweep resumes from the newest complete checkpoint and its
        result equals an uninterrupted sweep bit for bit.
      progress: show a tqdm bar over the steps, advanced from the host: the runs go in
        up to 10 segments (each the same compiled program continuing every run; a
        multiple of ``evaluate.every``), or in the segments of ``save_every``.
      **minimize_kwargs: ``steps`` and any of ``data``, ``batch_size``,
        ``microbatches``, ``tol``, ``has_aux``, ``model_state`` (a pytree or a function
        ``key -> model_state``), ``with_key``, ``evaluate``, ``record_aux``, ``loop``, as
        for [`jgd.minimize`][jgd.minimize.minimize]. With ``loop="host"`` each chunk of
        runs goes through the host loop: a few vmapped straight-line steps a call (conv
        nets on CPU; not with a ``jgd.flat`` optimizer); ``"auto"`` picks it as
        ``minimize`` does.

    Run ``(i, s)`` equals ``minimize(fun, p, factory(**hparams_i), key=k_s, ...)`` with
    the grid values as float32 (float64 under x64) scalars. With several devices
    (``jax.devices()``, hosts joined by ``jax.distributed.initialize`` included) the run
    axis is sharded over a 1-D mesh; every process gets the whole result. On one CPU
    device the runs are split into one lane per core, run side by side. A diverging run
    gives NaN/inf in its own row only.

    Examples:
      >>> def loss(w):
      ...     return jnp.sum((w - 1.0) ** 2)
      >>> s = jgd.sweep(loss, jnp.zeros(2), jgd.momentum,
      ...               grid={"learning_rate": [0.01, 0.1], "beta": [0.0, 0.9]}, steps=50)
      >>> s.final_loss.shape  # (learning rates, betas, seeds)
      (2, 2, 1)
      >>> best = s.best()
      >>> best["learning_rate"], best["beta"]
      (0.1, 0.0)
      >>> best["params"].round(3)  # the winner's trained params, no retraining
      array([1., 1.], dtype=float32)
    """
    if isinstance(factory, dict):
        return _each_factory(fun, params, factory, grid, points, seeds=seeds, key=key, samples=samples,
                             capacity=capacity, chunk_size=chunk_size, keep_params=keep_params, save_dir=save_dir,
                             save_every=save_every, progress=progress, **minimize_kwargs)
    if not callable(factory):
        raise TypeError(f"factory must be an optimizer factory such as jgd.adam, got {factory!r}")
    seeds = _check_int("seeds", seeds, 1)
    if chunk_size is not None:
        chunk_size = _check_int("chunk_size", chunk_size, 1)
    _check_bool("keep_params", keep_params)
    _check_bool("progress", progress)
    _check_kwargs(minimize_kwargs)
    key = _as_key(key)
    if (grid is None) == (points is None):
        raise ValueError("sweep takes grid= (a product, or samples=N of it) or points= (paired values), "
                         f"one of them; got {'both' if points is not None else 'neither'}")
    if points is not None:
        if samples is not None:
            raise ValueError(f"samples={samples!r} draws from a grid; points= are the values themselves")
        run_points, grid_shape, axes, hparams = explicit_points(factory, points)
    else:
        run_points, grid_shape, axes, hparams = grid_points(factory, grid, samples, key)
    real = run_points.shape[0]
    if capacity is not None:  # pad with copies of point 0, dropped below: one program for any count
        capacity = _check_int("capacity", capacity, 1)
        if capacity < real:
            raise ValueError(f"capacity={capacity} must be >= the number of points {real}")
        run_points = np.concatenate([run_points, np.repeat(run_points[:1], capacity - real, axis=0)])
    seed_keys = jax.random.split(key, seeds)
    args = (fun, params, factory, tuple(axes), np.repeat(run_points, seeds, axis=0),
            run_keys(seed_keys, run_points.shape[0]), jax.random.key_impl(seed_keys), chunk_size,
            keep_params, minimize_kwargs)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=minimize_kwargs["steps"], desc=f"sweep of {real * seeds} runs")
    try:
        if save_dir is None and save_every is None and not progress:
            result = _run(*args)
        elif save_dir is None and save_every is None:
            evaluate = minimize_kwargs.get("evaluate")
            steps = minimize_kwargs["steps"]
            every = 1 if evaluate is None else (evaluate.every or steps)
            result = sweep_segments(*args, segment=progress_segment(steps, every), bar=bar)
            result.pop("stopped", None)
        else:
            result = sweep_saved(*args, save_dir=save_dir, save_every=save_every, bar=bar,
                                 fingerprint=sweep_fingerprint("sweep", args, grid=run_points, seeds=seeds, key=key))
            result.pop("stopped", None)
    finally:
        if bar is not None:
            bar.close()
    result = jax.tree.map(lambda x: x[:real * seeds], result)
    out = jax.tree.map(lambda x: x.reshape(grid_shape + (seeds,) + x.shape[1:]), result)
    evaluate = minimize_kwargs.get("evaluate")
    return SweepResult.from_runs(
        out, grid=axes, hparams=hparams, sampled=samples is not None or grid is None,
        monitor=None if evaluate is None else evaluate.monitor,
        mode="min" if evaluate is None else evaluate.mode,
    )


def _each_factory(fun, params, factories: dict, grid, points, *, save_dir, **kwargs) -> SweepResult:
    """``sweep`` with ``factory`` a dict name → factory and ``grid`` (or ``points``) a dict
    name → that factory's grid: one sweep per factory (no run computes another factory's
    rule; the same key and seeds, so the seed rule holds run by run), joined into one
    result with an ``optimizer`` entry (`SweepResult.joined`)."""
    if not factories:
        raise ValueError("factory={} names no factory; give {name: factory} with at least one")
    for name, factory in factories.items():
        if not isinstance(name, str) or not callable(factory):
            raise TypeError(f"factory[{name!r}] must be an optimizer factory such as jgd.adam (names are "
                            f"strings), got {factory!r}")
    if (grid is None) == (points is None):
        raise ValueError("sweep takes grid= or points=, one of them; with a dict of factories, a dict "
                         f"{{factory name: its grid}}; got {'both' if points is not None else 'neither'}")
    argument, spaces = ("grid", grid) if grid is not None else ("points", points)
    if not isinstance(spaces, dict) or set(spaces) != set(factories):
        given = sorted(spaces) if isinstance(spaces, dict) else spaces
        raise ValueError(f"with factory a dict, {argument} must be a dict {{factory name: its {argument}}} with "
                         f"the names {sorted(factories)}; got {given!r}")
    for name, space in spaces.items():
        if not isinstance(space, dict):
            raise TypeError(f"{argument}[{name!r}] must be a dict {{hyperparameter: values}}, got {space!r}")
        if "optimizer" in space:
            raise ValueError(f"{argument}[{name!r}] names a hyperparameter 'optimizer', which the joined "
                             "result uses for the factory's name")
    results = {name: sweep(fun, params, factory, **{argument: spaces[name]},
                           save_dir=None if save_dir is None else os.path.join(os.fspath(save_dir), name), **kwargs)
               for name, factory in factories.items()}
    return SweepResult.joined(results)

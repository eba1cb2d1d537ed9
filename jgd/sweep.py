"""``jgd.sweep``: a whole hyperparameter grid × seeds as one compiled, vmapped program."""

from __future__ import annotations

import concurrent.futures
import functools
import inspect
import itertools
import math
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jgd import _compile
from jgd._arguments import _as_key, _check_bool, _check_int, _is_init_function
from jgd._transform import scalar_dtype
from jgd.checkpoint import Saver, check_segments, fingerprint_of, sweep_fingerprint, unfilled
from jgd.evaluation import Eval
from jgd.minimize import initial_state, minimize
from jgd.search import Distribution, choice, sample_grid
from jgd.sweep_result import SweepResult

__all__ = ["sweep", "SweepResult"]

# Per-run working set (params, gradient, two moments) that keeps a CPU chunk in cache;
# measured on 2 cores: 64 runs of a 10k-param MLP ran 0.55-0.69x sequential speed as one
# vmap and 1.2-1.35x in chunks of 8.
_CPU_CHUNK_BYTES = 2 * 2**20

# Samples of a random search come from fold_in(key, this), apart from the seed keys.
_SAMPLE_STREAM = 0x5A3D1E

# The keywords of minimize that a sweep passes through to every run.
_PASSED = ("steps", "data", "batch_size", "microbatches", "tol", "has_aux", "model_state",
           "with_key", "evaluate", "record_aux")


def _accepted_names(factory):
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    return {
        name for name, p in signature.parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def _check_grid(factory, grid, samples=None, what="grid"):
    """The axes as 1-D numpy arrays (distributions kept as they are), names checked."""
    if not isinstance(grid, dict) or not grid:
        raise ValueError(f"{what} must be a non-empty dict of name -> values, got {grid!r}")
    accepted = _accepted_names(factory)
    axes = {}
    for name, values in grid.items():
        if accepted is not None and name not in accepted:
            raise ValueError(
                f"{what} key {name!r} is not an argument of {getattr(factory, '__name__', factory)}; "
                f"it takes {sorted(accepted)}"
            )
        if isinstance(values, Distribution):
            if what == "points":
                raise ValueError(f"points[{name!r}] is a distribution ({values!r}): points are explicit values; "
                                 "pass grid= with samples=N to draw them")
            if samples is None:
                raise ValueError(
                    f"grid[{name!r}] is a distribution ({values!r}): pass samples=N to draw N points"
                )
            axes[name] = values
            continue
        if isinstance(values, (str, bytes)):
            raise ValueError(f"{what}[{name!r}] must be numbers, got {values!r}")
        try:
            axis = np.asarray(values)
        except Exception:  # noqa: BLE001
            raise ValueError(f"{what}[{name!r}] must be numbers, got {values!r}") from None
        axis = np.atleast_1d(axis)
        if axis.ndim != 1 or axis.size == 0:
            raise ValueError(f"{what}[{name!r}] must be a non-empty 1-D list of numbers, got {values!r}")
        if not (np.issubdtype(axis.dtype, np.number) or axis.dtype == np.bool_) or np.issubdtype(axis.dtype, np.complexfloating):
            raise ValueError(f"{what}[{name!r}] must be real numbers, got {values!r}")
        axes[name] = axis
    return axes


def _check_values(factory, axes, drawn=()):
    """Concrete values are validated by the factory itself, one axis at a time; an axis
    drawn from a continuous distribution (names in ``drawn``) by its least and greatest
    draw (a factory's checks are ranges), not by every draw: 81 draws of 3 axes took as
    long to check as halving's compiled rungs took to run."""
    first = {n: a[0].item() for n, a in axes.items()}
    for name, axis in axes.items():
        values = (axis.min(), axis.max()) if name in drawn else np.unique(axis)
        for value in values:
            factory(**{**first, name: value.item()})


def explicit_points(factory, points):
    """``points=``: ``(points (K, H), (K,), axes, hparams)``, the i-th values of every name
    paired (not a product)."""
    axes = _check_grid(factory, points, what="points")
    lengths = {name: axis.size for name, axis in axes.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"points' lists must have one length (they are paired, not a product), got {lengths}")
    _check_values(factory, axes)
    dtype = scalar_dtype()
    stacked = np.stack([np.asarray(v, dtype) for v in axes.values()], axis=1)
    return stacked, (stacked.shape[0],), axes, dict(axes)


def grid_points(factory, grid, samples, key):
    """The points a sweep runs: ``(points (G, H), grid_shape, axes, hparams)``. A grid's
    points are the Cartesian product of its axes; with ``samples=N`` every axis is
    sampled N times from a key derived from ``key`` apart from the seed keys."""
    if samples is not None:
        samples = _check_int("samples", samples, 1)
    axes = _check_grid(factory, grid, samples)
    dtype = scalar_dtype()
    if samples is None:
        _check_values(factory, axes)
        points = np.stack([np.asarray(v, dtype) for v in itertools.product(*axes.values())])  # (G, H)
        grid_shape = tuple(a.size for a in axes.values())
        hparams = dict(zip(axes, np.meshgrid(*axes.values(), indexing="ij")))
        return points, grid_shape, axes, hparams
    columns = sample_grid(axes, samples, jax.random.fold_in(key, _SAMPLE_STREAM))
    _check_values(factory, columns, drawn={n for n, a in axes.items() if isinstance(a, Distribution)
                                           and not isinstance(a, choice)})
    points = np.stack([np.asarray(v, dtype) for v in columns.values()], axis=1)
    return points, (samples,), columns, dict(columns)


def _chunk_size(params_spec, runs_per_device):
    if jax.default_backend() != "cpu":
        return runs_per_device
    leaves = jax.tree.leaves(params_spec)
    per_run = 4 * sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in leaves)
    chunk = max(1, _CPU_CHUNK_BYTES // max(per_run, 1))
    chunk = 1 << (int(chunk).bit_length() - 1)  # a power of two
    return int(min(chunk, runs_per_device))


def default_chunk(params, key_data, key_impl, runs, carried=None):
    """The runs vmapped together on a device when ``chunk_size`` is not given (see
    ``_chunk_size``), for ``runs`` runs of ``params`` (or of ``carried``'s params)."""
    if isinstance(carried, DeviceCarry):
        params_spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), carried.calls[0]["params"])
    elif carried is not None:
        params_spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), carried["params"])
    elif _is_init_function(params):
        params_spec = jax.eval_shape(params, jax.random.wrap_key_data(key_data[0], impl=key_impl))
    else:
        params_spec = params
    per_device = -(-runs // jax.device_count())
    return _chunk_size(params_spec, -(-per_device // _cpu_lanes()))


def _cpu_lanes():
    """Cores this process may use. XLA:CPU runs one program's small kernels on one core
    (measured: a 384-run sweep took the same time pinned to one core of two), while two
    programs dispatched from two threads run side by side, so a one-device CPU sweep
    splits its runs into one lane per core."""
    if jax.default_backend() != "cpu" or jax.device_count() > 1:
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@functools.cache
def _lane_pool(lanes):
    """The threads the lanes run from, kept for the process (a halving or a segmented
    sweep calls the program many times; starting threads each time showed in its time)."""
    return concurrent.futures.ThreadPoolExecutor(lanes, thread_name_prefix="jgd-lane")


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
        ``key -> model_state``), ``with_key``, ``evaluate``, ``record_aux``, as for
        [`jgd.minimize`][jgd.minimize.minimize].

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


def run_keys(seed_keys, num_points):
    """The key data of every run, runs ordered (grid point, seed)."""
    key_data = np.asarray(jax.random.key_data(seed_keys))
    return np.tile(key_data, (num_points,) + (1,) * (key_data.ndim - 1))


def _run(fun, params, factory, names, run_points, key_data, key_impl, chunk_size, keep_params,
         minimize_kwargs, carried=None, emit_carry=False, abstract=False, pad_to_chunk=False, keep_on_device=False):
    """The runs as calls of one compiled program: ``{field: (runs, ...)}`` in numpy. Run
    ``i`` has the hyperparameters ``run_points[i]`` and the key ``key_data[i]``; with
    ``carried`` (``{"params", "state", "model_state"}``, leading run axis) each run
    continues from its own params and loop state; with ``emit_carry`` the output has the
    ``carried`` to go on from. With ``abstract``, only the outputs' shapes
    (``jax.ShapeDtypeStruct``s whose leading axis is not the run count).

    The program runs one chunk of ``chunk`` runs per device (vmapped; the devices' chunks
    side by side over a 1-D mesh) and is called once per chunk from the host. Called
    chunks rather than a loop over chunks inside the program, because every loop level of
    the program costs compile time (measured: 0.2 s of the digits sweep's 2.2 s). With
    ``pad_to_chunk``, ``chunk_size`` is kept even above the runs per device (runs padded
    up to it), so that any number of runs reuses the same program (halving's rungs).
    ``carried`` may be a ``DeviceCarry``; with ``keep_on_device``, the output's
    ``carried`` is one (the runs' state stays on device). With ``emit_carry`` the output
    has no params (nor model state): they are the carry's."""
    runs = run_points.shape[0]
    devices = jax.devices()
    num_devices = len(devices)
    lanes = _cpu_lanes()
    per_device = -(-runs // num_devices)
    chunk = chunk_size or default_chunk(params, key_data, key_impl, runs, carried)
    if not pad_to_chunk:
        chunk = min(chunk, per_device)
    call_size = chunk * num_devices
    num_calls = -(-runs // call_size)
    lanes = max(1, min(lanes, num_calls))
    total = num_calls * call_size
    # Padding repeats run 0; its copies are dropped below.
    pad = lambda x: np.concatenate([x, np.repeat(x[:1], total - runs, 0)])  # noqa: E731
    on_device = isinstance(carried, DeviceCarry)
    if on_device and len(carried.calls) != num_calls:
        raise AssertionError("a DeviceCarry is laid out for another number of calls")
    per_run = (pad(run_points), pad(key_data), None if on_device else jax.tree.map(lambda x: pad(np.asarray(x)), carried))

    kwargs = dict(minimize_kwargs)
    data = kwargs.pop("data", None)
    model_state = kwargs.pop("model_state", None)
    evaluate = kwargs.pop("evaluate", None)
    eval_data = None if evaluate is None else evaluate.data
    evaluation = None if evaluate is None else evaluate.static(kwargs["steps"])
    tol = kwargs.pop("tol", None)
    program = _program(fun, params if _is_init_function(params) and carried is None else None, factory, names,
                       tuple(sorted(kwargs.items())), key_impl,
                       model_state if _is_init_function(model_state) and carried is None else None,
                       model_state is not None, evaluation, keep_params, tol is not None, carried is not None,
                       emit_carry)
    mesh = Mesh(np.asarray(devices), ("runs",))
    shard = NamedSharding(mesh, PartitionSpec("runs"))
    replicated = NamedSharding(mesh, PartitionSpec())
    fixed = lambda x: None if _is_init_function(x) or carried is not None else x  # noqa: E731
    shared = jax.tree.map(lambda x: _put(x, replicated), (fixed(params), fixed(model_state), data, eval_data, tol))
    def call(k):
        points, keys, given = jax.tree.map(lambda x: _put(x[k * call_size:(k + 1) * call_size], shard), per_run)
        return (points, keys, carried.calls[k] if on_device else given) + shared

    first = call(0)
    if abstract:
        return jax.eval_shape(functools.partial(program, mesh), *first)
    executable = _executable(program, mesh, *_signature(first))
    if lanes == 1:  # dispatched asynchronously, one after another
        outs = [executable(*(first if k == 0 else call(k))) for k in range(num_calls)]
    else:
        outs = list(_lane_pool(lanes).map(lambda k: jax.block_until_ready(executable(*(first if k == 0 else call(k)))),
                                          range(num_calls)))
    kept = DeviceCarry([out.pop("carried") for out in outs], runs, shard) if keep_on_device else None
    outs = [jax.tree.map(_gather, out) for out in outs]
    out = jax.tree.map(lambda *x: np.concatenate(x)[:runs], *outs)
    if kept is not None:
        out["carried"] = kept
    return out


class DeviceCarry:
    """What runs continue from, left on device between calls of ``_run``: one tree per
    call of its program (runs padded to whole calls), so a run in segments sends its
    state to the device once, not every segment."""

    def __init__(self, calls, runs, sharding):
        self.calls, self.runs, self.sharding = calls, runs, sharding

    def numpy(self):
        """The runs' trees on the host, leading run axis (padding dropped)."""
        return jax.tree.map(lambda *x: np.concatenate([_gather(a) for a in x])[:self.runs], *self.calls)

    def like(self, host):
        """A ``DeviceCarry`` laid out as this one, holding the runs of ``host`` (a tree with
        a leading run axis)."""
        size = jax.tree.leaves(self.calls[0])[0].shape[0]
        total = len(self.calls) * size
        padded = jax.tree.map(lambda x: np.concatenate([x, np.repeat(x[:1], total - x.shape[0], 0)]), host)
        calls = [jax.tree.map(lambda x: _put(x[k * size:(k + 1) * size], self.sharding), padded)
                 for k in range(len(self.calls))]
        return DeviceCarry(calls, self.runs, self.sharding)

    def keep(self, previous, stopped):
        """This carry, but ``previous``'s for the runs ``stopped`` (host bools, one per run)."""
        size = jax.tree.leaves(self.calls[0])[0].shape[0]
        mask = np.concatenate([stopped, np.zeros(len(self.calls) * size - stopped.size, bool)])
        calls = [_keep_stopped(old, new, _put(mask[k * size:(k + 1) * size], self.sharding))
                 for k, (old, new) in enumerate(zip(previous.calls, self.calls))]
        return DeviceCarry(calls, self.runs, self.sharding)


@jax.jit
def _keep_stopped(old, new, stopped):
    return jax.tree.map(lambda a, b: jnp.where(stopped.reshape((-1,) + (1,) * (b.ndim - 1)), a, b), old, new)


def initial_carry(fun, params, factory, names, run_points, key_data, key_impl, minimize_kwargs):
    """Every run's fresh params, loop state and model state (what a run that has not
    started continues from), so that every segment of a saved sweep is the same program."""
    kwargs = dict(minimize_kwargs)
    model_state, evaluate = kwargs.pop("model_state", None), kwargs.pop("evaluate", None)
    data, eval_data = kwargs.pop("data", None), None if evaluate is None else evaluate.data
    kwargs.pop("tol", None)
    program = _initial_program(fun, params if _is_init_function(params) else None, factory, names, key_impl,
                               model_state if _is_init_function(model_state) else None,
                               None if evaluate is None else evaluate.static(kwargs["steps"]),
                               tuple(sorted(kwargs.items())))
    fixed = lambda x: None if _is_init_function(x) else x  # noqa: E731
    out = program(run_points, key_data, fixed(params), fixed(model_state), data, eval_data)
    return jax.tree.map(lambda x: np.array(x), out)


def initial_draw(init_fn, state_fn, key_impl):
    """``key data -> {"params", "model_state"}`` drawn by the init functions (None for
    one not given), or None without any. Meant for ``lax.map`` over the runs, not
    ``vmap``: the init functions' random draws compile to the unbatched kernels (XLA:CPU
    compiles threefry over a run axis to kernels twice the size: measured, the digits
    sweep's program compiled in 2.36 s with its inits vmapped and 1.83 s mapped, against
    1.26 s for one ``minimize``), and an init runs once per run, so running the inits one
    after another costs nothing that shows."""
    if init_fn is None and state_fn is None:
        return None

    def draw(key_data):
        key = jax.random.wrap_key_data(key_data, impl=key_impl)
        return {"params": None if init_fn is None else init_fn(key),
                "model_state": None if state_fn is None else state_fn(key)}

    return draw


@functools.lru_cache(maxsize=64)
def _initial_program(fun, init_fn, factory, names, key_impl, state_fn, evaluation, kwargs):
    kwargs = dict(kwargs)

    def one(point, kd, fixed_params, fixed_state, data, eval_data):
        key = jax.random.wrap_key_data(kd, impl=key_impl)
        p = init_fn(key) if init_fn is not None else fixed_params
        s = state_fn(key) if state_fn is not None else fixed_state
        opt = factory(**{n: point[i] for i, n in enumerate(names)})
        evaluate = None if evaluation is None else evaluation.bind(eval_data)
        state = initial_state(fun, p, opt, model_state=s, key=key, data=data, evaluate=evaluate, **kwargs)
        return {"params": p, "state": state, "model_state": s}

    @_compile.jit
    def initial_program(points, key_data, *shared):
        # one run after another (see initial_draw): runs once per sweep, compiles as one run's
        return jax.lax.map(lambda run: one(*run, *shared), (points, key_data))

    return initial_program


def empty_store(out, runs, steps, every):
    """Arrays for every run's whole outputs (``(runs, ...)``, per-step records ``steps``
    long, evaluations ``steps // every``), NaN (floating) or 0 until written; ``out`` is
    (the shapes of) one segment's outputs."""
    def empty(x, last=None):
        shape = (runs,) + tuple(x.shape[1:]) if last is None else (runs,) + tuple(x.shape[1:-1]) + (last,)
        return unfilled(jax.ShapeDtypeStruct(shape, x.dtype))

    store = {k: jax.tree.map(empty, v) for k, v in out.items()
             if k not in ("losses", "evals", "eval_steps", "carried")}
    store["losses"] = empty(out["losses"], steps)
    store["evals"] = {k: empty(v, steps // every) for k, v in out["evals"].items()} if out["evals"] else {}
    store["eval_steps"] = None if out["eval_steps"] is None else empty(out["eval_steps"], steps // every)
    store["num_steps"] = np.zeros((runs,), np.int32)
    store["stopped"] = np.zeros((runs,), bool)
    return store


def record_segment(store, out, rows, out_rows, done, length, every):
    """Writes a segment's outputs (rows ``out_rows`` of ``out``) into rows ``rows`` of the
    store: per-step records at ``[done, done + length)``, evaluations at their global
    indices, step counts added up, everything else replaced."""
    store["losses"][rows, done:done + length] = out["losses"][out_rows]
    evals = slice(done // every, (done + length) // every) if every else None
    for name, values in (out["evals"] or {}).items():
        store["evals"][name][rows, evals] = values[out_rows]
    if out["eval_steps"] is not None:
        store["eval_steps"][rows, evals] = out["eval_steps"][out_rows]
    store["num_steps"][rows] += out["num_steps"][out_rows]
    for name, value in out.items():
        if name not in ("losses", "evals", "eval_steps", "num_steps", "carried", "stopped"):
            jax.tree.map(lambda dst, src: dst.__setitem__(rows, src[out_rows]), store[name], value)


def _signature(args):
    leaves, treedef = jax.tree.flatten(args)
    return treedef, tuple(jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding) for x in leaves)


@functools.lru_cache(maxsize=64)
def _executable(program, mesh, treedef, specs):
    """The program compiled once for these argument shapes, so that the lanes, started
    together from several threads, share one compilation."""
    return program.lower(mesh, *jax.tree.unflatten(treedef, specs)).compile(compiler_options=_compile.options())


def _put(x, sharding):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        # a global array (each process holds its part: several hosts' input pipeline) is
        # passed as it is: the program gathers what it needs, nothing is fetched here
        return x
    x = np.asarray(x)
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    # Every process holds the same host values; each keeps its own shards.
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _gather(x):
    if jax.process_count() == 1 or x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


@functools.lru_cache(maxsize=64)
def _program(fun, init_fn, factory, names, kwargs, key_impl, state_fn, has_model_state,
             evaluation, keep_params, has_tol, continuing, emit_carry):
    kwargs = dict(kwargs)

    def one(point, key_data, carried, drawn, fixed_params, fixed_state, data, eval_data, tol):
        key = jax.random.wrap_key_data(key_data, impl=key_impl)
        init_state = None
        if continuing:
            params, model_state, init_state = carried["params"], carried["model_state"], carried["state"]
        else:
            params = drawn["params"] if init_fn is not None else fixed_params
            model_state = drawn["model_state"] if state_fn is not None else fixed_state
        opt = factory(**{n: point[i] for i, n in enumerate(names)})
        evaluate = None if evaluation is None else evaluation.bind(eval_data)
        r = minimize(fun, params, opt, key=key, data=data, evaluate=evaluate,
                     model_state=model_state if has_model_state else None, init_state=init_state,
                     tol=tol if has_tol else None, **kwargs)
        out = dict(losses=r.losses, num_steps=r.num_steps, converged=r.converged,
                   diverged=r.diverged, stopped_early=r.stopped_early, best_loss=r.best_loss,
                   best_step=r.best_step, evals=r.evals, eval_steps=r.eval_steps, aux=r.aux)
        if keep_params and not emit_carry:  # a segment's params are its carry's
            out.update(params=r.params, best_params=r.best_params)
            if has_model_state:
                out.update(model_state=r.model_state, best_model_state=r.best_model_state)
        if emit_carry:
            out.update(carried=dict(params=r.params, state=r.state, model_state=r.model_state))
        return out

    draw = None if continuing else initial_draw(init_fn, state_fn, key_impl)

    def local(points, keys, carried, *shared):
        drawn = None if draw is None else jax.lax.map(draw, keys)
        return jax.vmap(one, in_axes=(0, 0, 0, 0) + (None,) * len(shared))(points, keys, carried, drawn, *shared)

    @functools.partial(jax.jit, static_argnums=0)
    def program(mesh, points, keys, carried, *shared):
        runs = PartitionSpec("runs")
        return jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(runs, runs, runs) + (PartitionSpec(),) * len(shared),
            out_specs=runs,
            check_vma=False,
        )(points, keys, carried, *shared)

    return program


def sweep_saved(fun, params, factory, names, run_points, key_data, key_impl, chunk_size, keep_params,
                minimize_kwargs, *, save_dir, save_every, fingerprint, carried=None, return_carry=False, bar=None,
                pad_to_chunk=False):
    """``sweep``'s runs in segments of ``save_every`` steps, saved after each (see
    ``sweep_segments``)."""
    save_every, _ = check_segments(minimize_kwargs["steps"], save_dir, save_every, minimize_kwargs.get("evaluate"))
    saver = Saver(save_dir, fingerprint_of(**fingerprint, save_every=save_every))
    try:
        return sweep_segments(fun, params, factory, names, run_points, key_data, key_impl, chunk_size, keep_params,
                              minimize_kwargs, segment=save_every, saver=saver, carried=carried,
                              return_carry=return_carry, bar=bar, pad_to_chunk=pad_to_chunk)
    finally:
        saver.close()


def sweep_segments(fun, params, factory, names, run_points, key_data, key_impl, chunk_size, keep_params,
                   minimize_kwargs, *, segment, saver=None, carried=None, return_carry=False, bar=None,
                   pad_to_chunk=False):
    """``sweep``'s runs in segments of ``segment`` steps called from the host, every
    segment the same program continuing each run: ``{field: (runs, ...)}`` as ``_run``
    returns. With a ``checkpoint.Saver``, everything is saved after each segment and a
    saved sweep resumes; with a tqdm ``bar``, it advances after each. ``carried``
    continues runs that have already run (a halving's survivors); ``return_carry`` also
    returns what the runs continue from; ``pad_to_chunk`` as for ``_run``."""
    steps = minimize_kwargs["steps"]
    evaluate = minimize_kwargs.get("evaluate")
    every = None if evaluate is None else (evaluate.every if evaluate.every is not None else steps)
    segment_kwargs = {**minimize_kwargs, "steps": segment}
    if carried is None:
        carried = initial_carry(fun, params, factory, names, run_points, key_data, key_impl, segment_kwargs)
    runs = run_points.shape[0]
    store = None
    done = 0
    if saver is not None:
        saver.manager.reload()
        if saver.manager.all_steps():
            # The saved state's structure: one segment's outputs, abstractly.
            spec = _run(fun, params, factory, names, run_points, key_data, key_impl, chunk_size, keep_params,
                        segment_kwargs, carried=carried, emit_carry=True, abstract=True, pad_to_chunk=pad_to_chunk)
            like = {"carried": carried, "store": empty_store(spec, runs, steps, every)}
            saved, done = saver.restore(like)
            if saved is not None:
                carried, store = saved["carried"], saved["store"]
    if bar is not None:
        bar.update(done - bar.n)
    on_device = None  # the runs' state between segments, once one has run: it stays on device
    while done < steps:
        out = _run(fun, params, factory, names, run_points, key_data, key_impl, chunk_size, keep_params,
                   segment_kwargs, carried=carried if on_device is None else on_device, emit_carry=True,
                   pad_to_chunk=pad_to_chunk, keep_on_device=True)
        advanced = out.pop("carried")
        if store is None:
            store = empty_store(out, runs, steps, every)
        stopped = store["stopped"].copy()
        rows = np.flatnonzero(~stopped)  # a stopped run stays stopped, as in one minimize call
        record_segment(store, out, rows, rows, done, segment, every)
        store["stopped"][rows] |= (out["converged"] | out["diverged"] | out["stopped_early"])[rows]
        if stopped.any():  # the stopped runs keep the state they stopped with
            advanced = advanced.keep(advanced.like(carried) if on_device is None else on_device, stopped)
        on_device = advanced
        done += segment
        if store["stopped"].all():
            done = steps
        if saver is not None:
            saver.save(done, {"carried": on_device.numpy(), "store": store})
        if bar is not None:
            bar.update(done - bar.n)
            bar.set_postfix(running=int((~store["stopped"]).sum()))
    if on_device is not None:
        carried = on_device.numpy()
    if keep_params:  # the runs' params are their carry's (a segment's outputs hold none)
        store["params"], store["best_params"] = carried["params"], carried["state"].best.params
        if minimize_kwargs.get("model_state") is not None:
            store["model_state"], store["best_model_state"] = carried["model_state"], carried["state"].best.model_state
    return (store, carried) if return_carry else store


def progress_segment(steps: int, every: int) -> int:
    """The segment of a sweep shown with ``progress=True``: the shortest multiple of the
    evaluations' spacing that divides ``steps`` into at most 10 segments."""
    return min(d for d in range(every, steps + 1, every) if steps % d == 0 and steps // d <= 10)

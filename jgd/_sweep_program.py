"""A sweep's runs as calls of one compiled program: one chunk of runs per device,
vmapped, the devices' chunks side by side over a 1-D mesh, called once per chunk from the
host (on a one-device CPU from one thread per core); what runs continue from, left on
device between calls; the program that draws every run's fresh state."""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jgd import _compile
from jgd._arguments import _is_init_function
from jgd._sweep_host import HostChunk, host_phases
from jgd._sweep_run import initial_draw, run_outputs, starting_point
from jgd.minimize import _auto_loop, initial_state, minimize

__all__ = ["DeviceCarry", "default_chunk", "initial_carry", "run_keys"]


# Per-run working set (params, gradient, two moments) that keeps a CPU chunk in cache;
# measured on 2 cores: 64 runs of a 10k-param MLP ran 0.55-0.69x sequential speed as one
# vmap and 1.2-1.35x in chunks of 8.
_CPU_CHUNK_BYTES = 2 * 2**20


def _chunk_size(params_spec, runs_per_device):
    if jax.default_backend() != "cpu":
        return runs_per_device
    leaves = jax.tree.leaves(params_spec)
    per_run = 4 * sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in leaves)
    chunk = max(1, _CPU_CHUNK_BYTES // max(per_run, 1))
    chunk = 1 << (int(chunk).bit_length() - 1)  # a power of two
    return int(min(chunk, runs_per_device))


def _one_run(name, given, key_data, key_impl, carried):
    """One run's ``params`` or ``model_state`` (``name``), or their shapes: from ``carried``
    (a leading run axis), an init function's output, or ``given`` itself."""
    if carried is not None:
        tree = (carried.calls[0] if isinstance(carried, DeviceCarry) else carried)[name]
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), tree)
    if _is_init_function(given):
        return jax.eval_shape(given, jax.random.wrap_key_data(key_data[0], impl=key_impl))
    return given


def default_chunk(params, key_data, key_impl, runs, carried=None):
    """The runs vmapped together on a device when ``chunk_size`` is not given (see
    ``_chunk_size``), for ``runs`` runs of ``params`` (or of ``carried``'s params)."""
    per_device = -(-runs // jax.device_count())
    return _chunk_size(_one_run("params", params, key_data, key_impl, carried), -(-per_device // _cpu_lanes()))


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
    on_device = isinstance(carried, DeviceCarry)
    if on_device and len(carried.calls) != num_calls:
        raise AssertionError("a DeviceCarry is laid out for another number of calls")
    per_run = jax.tree.map(lambda x: _padded(np.asarray(x), total),
                           (run_points, key_data, None if on_device else carried))

    kwargs = dict(minimize_kwargs)
    data = kwargs.pop("data", None)
    model_state = kwargs.pop("model_state", None)
    evaluate = kwargs.pop("evaluate", None)
    eval_data = None if evaluate is None else evaluate.data
    evaluation = None if evaluate is None else evaluate.static(kwargs["steps"])
    tol = kwargs.pop("tol", None)
    loop = kwargs.pop("loop", "device")
    if loop == "auto":  # as minimize decides it for one run
        loop = _auto_loop(fun, _one_run("params", params, key_data, key_impl, carried),
                          _one_run("model_state", model_state, key_data, key_impl, carried), data,
                          kwargs.get("batch_size"), kwargs.get("microbatches", 1), kwargs.get("with_key", False),
                          False, ())
    programs = _program if loop == "device" else host_phases
    program = programs(fun, params if _is_init_function(params) and carried is None else None, factory, names,
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
        points, keys, given = _call_of(per_run, k, call_size, shard)
        return (points, keys, carried.calls[k] if on_device else given) + shared

    first = call(0)
    if loop == "host":  # the chunk's host loop, called as the device loop's program is
        host = HostChunk(program, mesh, replicated, _gather, _put)
        if abstract:
            return host.abstract(*first)
        executable = host
    elif abstract:
        return jax.eval_shape(functools.partial(program, mesh), *first)
    else:
        executable = _compile.executable(program, mesh, first)
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


def _padded(x, total):
    """``x`` with its leading (run) axis padded to ``total`` by copies of run 0 (dropped
    from every result)."""
    return np.concatenate([x, np.repeat(x[:1], total - x.shape[0], 0)])


def _call_of(tree, k, size, sharding):
    """Call ``k``'s runs of ``tree`` (a leading run axis, padded to whole calls), on device."""
    return jax.tree.map(lambda x: _put(x[k * size:(k + 1) * size], sharding), tree)


def initial_carry(fun, params, factory, names, run_points, key_data, key_impl, minimize_kwargs):
    """Every run's fresh params, loop state and model state (what a run that has not
    started continues from), so that every segment of a saved sweep is the same program."""
    kwargs = dict(minimize_kwargs)
    model_state, evaluate = kwargs.pop("model_state", None), kwargs.pop("evaluate", None)
    data, eval_data = kwargs.pop("data", None), None if evaluate is None else evaluate.data
    kwargs.pop("tol", None)
    kwargs.pop("loop", None)  # a fresh state is the same for either loop
    program = _initial_program(fun, params if _is_init_function(params) else None, factory, names, key_impl,
                               model_state if _is_init_function(model_state) else None,
                               None if evaluate is None else evaluate.static(kwargs["steps"]),
                               tuple(sorted(kwargs.items())))
    fixed = lambda x: None if _is_init_function(x) else x  # noqa: E731
    out = program(run_points, key_data, fixed(params), fixed(model_state), data, eval_data)
    return jax.tree.map(lambda x: np.array(x), out)


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
        params, model_state, init_state = starting_point(continuing, carried, drawn, fixed_params, fixed_state)
        opt = factory(**{n: point[i] for i, n in enumerate(names)})
        evaluate = None if evaluation is None else evaluation.bind(eval_data)
        r = minimize(fun, params, opt, key=key, data=data, evaluate=evaluate,
                     model_state=model_state if has_model_state else None, init_state=init_state,
                     tol=tol if has_tol else None, **kwargs)
        return run_outputs(r, keep_params, emit_carry, has_model_state, carried if continuing else None)

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

"""A sweep's chunk of runs through the host loop (``loop="host"``): the engine's phases
(the initial carry, a few straight-line steps, a segment's end, the result), each one
compiled program of the chunk's vmapped runs, called from Python as ``minimize``'s host
loop calls them for one run. XLA:CPU runs convolutions slowly inside a while loop
(jax#12868), and a sweep's device loop is one."""

from __future__ import annotations

import functools
import threading

import jax
import numpy as np
from jax.sharding import PartitionSpec

from jgd import _compile
from jgd._drivers import host_steps
from jgd._engine import Engine
from jgd._step import select
from jgd._sweep_run import initial_draw, run_outputs, starting_point
from jgd.minimize import run_setup

__all__ = ["HostChunk", "host_phases"]

_COMPILING = threading.Lock()  # the lanes start together; each phase compiles once


class _Phases:
    """The programs of a chunk's host loop and the runs' static configuration (known
    once a phase has been traced)."""

    def __init__(self, initial, steps, conclude, result):
        self.initial, self._steps, self.conclude, self.result = initial, steps, conclude, result
        self.config, self._programs = None, {}

    def steps(self, length):
        """The program of ``length`` straight-line steps."""
        with _COMPILING:  # the lanes ask together
            if length not in self._programs:
                self._programs[length] = _sharded(functools.partial(self._steps, length=length), 4)
            return self._programs[length]


@functools.lru_cache(maxsize=64)
def host_phases(fun, init_fn, factory, names, kwargs, key_impl, state_fn, has_model_state, evaluation,
                keep_params, has_tol, continuing, emit_carry):
    """The phases for these runs (arguments as ``_sweep_program._program``'s)."""
    kwargs = dict(kwargs)
    draw = None if continuing else initial_draw(init_fn, state_fn, key_impl)

    def outputs(r, carried):
        return run_outputs(r, keep_params, emit_carry, has_model_state, carried if continuing else None)

    def engine(point, key_data, params, model_state, data, eval_data, tol):
        opt = factory(**{n: point[i] for i, n in enumerate(names)})
        run = run_setup(fun, params, opt, key=jax.random.wrap_key_data(key_data, impl=key_impl), data=data,
                        evaluate=None if evaluation is None else evaluation.bind(eval_data),
                        model_state=model_state if has_model_state else None, tol=tol if has_tol else None,
                        loop="host", **kwargs)
        phases.config = run.config
        return Engine(run.config, run.opt, params, model_state, run.key, data, run.eval_data, run.tol)

    def of_carry(point, key_data, c, data, eval_data, tol):
        return engine(point, key_data, c.step.params, c.step.model_state, data, eval_data, tol)

    def initial(points, keys, carried, fixed_params, fixed_state, data, eval_data, tol):
        drawn = None if draw is None else jax.lax.map(draw, keys)

        def one(point, key_data, carried, drawn):
            params, model_state, init_state = starting_point(continuing, carried, drawn, fixed_params, fixed_state)
            e = engine(point, key_data, params, model_state, data, eval_data, tol)
            c = e.initial(params, model_state, init_state)
            if continuing and "stopped" in carried:  # stopped in an earlier segment: frozen from the start
                return c, e.running(c) & ~carried["stopped"]
            return c, e.running(c)

        return jax.vmap(one)(points, keys, carried, drawn)

    # A run that has stopped is frozen while the rest of its chunk goes on, as a vmapped
    # while loop freezes it: ``active`` is whether it was running when the segment began.
    def steps(points, keys, c, active, first, segment_end, data, eval_data, tol, *, length):
        def one(p, k, c, active):
            advanced = of_carry(p, k, c, data, eval_data, tol).advance(c, first, length, segment_end, unroll=True)
            return select(active, advanced, c)

        return jax.vmap(one)(points, keys, c, active)

    def conclude(points, keys, c, active, segment_end, data, eval_data, tol):
        def one(p, k, c, active):
            e = of_carry(p, k, c, data, eval_data, tol)
            c = e.conclude(c, segment_end)  # nothing is due for a frozen run (its step is not the segment's end)
            return c, active & e.running(c)

        return jax.vmap(one)(points, keys, c, active)

    def result(points, keys, c, carried, data, eval_data, tol):
        return jax.vmap(lambda p, k, c, carried: outputs(of_carry(p, k, c, data, eval_data, tol).result(c), carried))(
            points, keys, c, carried)

    phases = _Phases(_sharded(initial, 3), steps, _sharded(conclude, 4), _sharded(result, 4))
    return phases


def _sharded(local, batched):
    """``local`` (its first ``batched`` arguments with a leading run axis, the rest
    shared) as one program over the runs' 1-D mesh (``mesh`` its static first argument)."""
    @functools.partial(jax.jit, static_argnums=0)
    def program(mesh, *args):
        specs = tuple(PartitionSpec("runs") if i < batched else PartitionSpec() for i in range(len(args)))
        return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=PartitionSpec("runs"),
                             check_vma=False)(*args)

    return program


class HostChunk:
    """Called like the device loop's compiled program, ``(points, keys, carried,
    *shared) -> outputs``, it runs the chunk's host loop: ``host_steps`` straight-line
    steps a call, a segment's end a call, one host sync a segment."""

    def __init__(self, phases: _Phases, mesh, replicated, gather, put):
        self.phases, self.mesh, self.replicated, self.gather, self.put = phases, mesh, replicated, gather, put
        self._executables: dict = {}

    def _call(self, name, program, *args):
        """``program`` called on ``args``, compiled once for this chunk's shapes."""
        executable = self._executables.get(name)
        if executable is None:
            with _COMPILING:
                executable = self._executables[name] = _compile.executable(program, self.mesh, args)
        return executable(*args)

    def _scalar(self, value):
        return self.put(np.int32(value), self.replicated)

    def abstract(self, points, keys, carried, fixed_params, fixed_state, data, eval_data, tol):
        """The outputs' shapes."""
        p, mesh, rest = self.phases, self.mesh, (data, eval_data, tol)
        return jax.eval_shape(lambda *a: p.result(mesh, a[0], a[1], p.initial(mesh, *a)[0], a[2], *rest),
                              points, keys, carried, fixed_params, fixed_state, *rest)

    def __call__(self, points, keys, carried, fixed_params, fixed_state, data, eval_data, tol):
        p, rest = self.phases, (data, eval_data, tol)
        c, active = self._call("initial", p.initial, points, keys, carried, fixed_params, fixed_state, *rest)
        config = p.config
        length = host_steps(config)
        steps = p.steps(length)
        # runs stopped in an earlier segment are behind the others (and frozen)
        start = int(np.max(self.gather(c.start)))
        end, t = start + config.steps, start
        while t < end and np.any(self.gather(active)):  # one host sync a segment
            segment_end = min(end, (t // config.segment + 1) * config.segment)
            last = self._scalar(segment_end)
            for first in range(t, segment_end, length):  # past segment_end: masked, as in the device loop
                c = self._call("steps", steps, points, keys, c, active, self._scalar(first), last, *rest)
            c, active = self._call("conclude", p.conclude, points, keys, c, active, last, *rest)
            t = segment_end
        return self._call("result", p.result, points, keys, c, carried, *rest)

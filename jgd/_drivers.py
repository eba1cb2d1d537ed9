"""The drivers: how a run's segments are called.

- ``to_the_end``: every segment in one compiled program (a ``while_loop`` over them; with
  ``differentiable``, a scan of a fixed number of segments that reverse mode goes through).
- ``on_the_host``: the same segments called from Python, each a compiled program of
  straight-line steps (``loop="host"``): XLA:CPU runs convolutions slowly inside a while
  loop (jax#12868), not in straight-line code.
- ``saved``: segments of ``save_every`` steps, everything needed to go on saved after each
  with ``checkpoint.Saver`` (a service: it imports no driver).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jgd import _compile, checkpoint
from jgd._engine import Engine, LoopState, Result, initial_state, shapes
from jgd._transform import unwrap

# Steps per host call of ``loop="host"``, as straight-line code: enough to amortise the
# call, few enough that the program compiles quickly (benchmarks/host_loop.py).
HOST_STEPS = 2


@functools.partial(_compile.jit, static_argnums=0)
def to_the_end(config, opt, params, model_state, state, key, data, eval_data, tol) -> Result:
    """The whole run as one program."""
    engine = Engine(config, opt, params, model_state, key, data, eval_data, tol)
    body = engine.segment
    if config.progress:
        def body(c):
            c = engine.segment(c)
            done = c.step.t - c.start
            jax.debug.callback(Progress.update, done, c.losses[jnp.maximum(done - 1, 0)])
            return c

    c = engine.initial(params, model_state, state)
    if config.differentiable:
        # A scan over a fixed number of segments (one more than steps / segment, for a
        # resumed run whose start is not on a segment boundary); a finished or stopped
        # run skips the rest. Each segment may be rematerialised in the backward pass.
        def scan_body(c, _):
            return jax.lax.cond(engine.running(c), body, lambda c: c, c), None

        if config.rematerialise:
            scan_body = jax.checkpoint(scan_body)
        c, _ = jax.lax.scan(scan_body, c, length=-(-config.steps // config.segment) + 1)
    else:
        c = jax.lax.while_loop(engine.running, body, c)
    return engine.result(c)


@functools.partial(_compile.jit, static_argnums=0)
def fresh_state(config, opt, params, model_state, key, data, eval_data) -> LoopState:
    """The loop state a fresh run starts from (what ``init_state=None`` makes)."""
    best_dtype = shapes(config, params, model_state, data, eval_data, key)[3]
    return initial_state(config, unwrap(opt), params, model_state, None, best_dtype)


def _engine(config, opt, c, key, data, eval_data, tol):
    return Engine(config, opt, c.step.params, c.step.model_state, key, data, eval_data, tol)


@functools.partial(_compile.jit, static_argnums=0)
def _host_initial(config, opt, params, model_state, state, key, data, eval_data, tol):
    return Engine(config, opt, params, model_state, key, data, eval_data, tol).initial(params, model_state, state)


@functools.partial(_compile.jit, static_argnums=(0, 9))
def _host_steps(config, opt, key, data, eval_data, tol, c, first, segment_end, length):
    return _engine(config, opt, c, key, data, eval_data, tol).advance(c, first, length, segment_end, unroll=True)


@functools.partial(_compile.jit, static_argnums=0)
def _host_conclude(config, opt, key, data, eval_data, tol, c, segment_end):
    engine = _engine(config, opt, c, key, data, eval_data, tol)
    c = engine.conclude(c, segment_end)
    return c, engine.running(c), c.losses[jnp.maximum(c.step.t - c.start - 1, 0)]


@functools.partial(_compile.jit, static_argnums=0)
def _host_result(config, opt, key, data, eval_data, tol, c):
    return _engine(config, opt, c, key, data, eval_data, tol).result(c)


def on_the_host(config, opt, params, model_state, state, key, data, eval_data, tol, bar=None) -> Result:
    """The run's segments called from Python: ``host_steps(config)`` straight-line steps
    a call (one compiled program), the segment's end (evaluation, the stopping test) a
    call; one host sync a segment."""
    opt, key, data, eval_data, tol = jax.device_put((opt, key, data, eval_data, tol))
    c = _host_initial(config, opt, params, model_state, state, key, data, eval_data, tol)
    start = int(c.start)
    end, t, segment, length = start + config.steps, start, config.segment, host_steps(config)
    while t < end:
        segment_end = min(end, (t // segment + 1) * segment)
        # steps past segment_end (a segment cut short by the end) run masked, as in the device loop
        for first in range(t, segment_end, length):
            c = _host_steps(config, opt, key, data, eval_data, tol, c, np.int32(first), np.int32(segment_end), length)
        c, running, loss = _host_conclude(config, opt, key, data, eval_data, tol, c, np.int32(segment_end))
        t = segment_end
        if bar is not None:
            bar.update(t - start - bar.n)
            bar.set_postfix(loss=float(loss))
        if not bool(running):
            break
    return _host_result(config, opt, key, data, eval_data, tol, c)


def host_steps(config) -> int:
    """Steps per host call: the largest divisor of the segment up to ``HOST_STEPS`` (so
    every call is the same program and no step is computed in vain but at the end)."""
    return max(k for k in range(1, min(HOST_STEPS, config.segment) + 1) if config.segment % k == 0)


def run(config, opt, params, model_state, state, key, data, eval_data, tol, *, loop="device", bar=None):
    """The run to its end by the device loop or the host loop."""
    if loop == "host":
        return on_the_host(config, opt, params, model_state, state, key, data, eval_data, tol, bar=bar)
    return to_the_end(config, opt, params, model_state, state, key, data, eval_data, tol)


class Progress:
    """The tqdm bar of the run in flight, fed by ``jax.debug.callback``."""

    bar = None

    @classmethod
    def start(cls, total, desc="minimize"):
        from tqdm.auto import tqdm

        cls.bar = tqdm(total=total, desc=desc)
        return cls.bar

    @classmethod
    def update(cls, done, loss):
        bar = cls.bar
        if bar is not None:
            done = int(np.max(done))
            bar.update(max(0, done - bar.n))
            bar.set_postfix(loss=float(np.min(loss)))

    @classmethod
    def close(cls):
        if cls.bar is not None:
            cls.bar.close()
        cls.bar = None


def saved(config, opt, params, model_state, init_state, key, data, eval_data, tol, *, steps, save_dir,
          every, fingerprint, loop="device", progress=False) -> Result:
    """The run in segments of ``config.steps`` steps (``save_every``), everything needed to
    go on saved in ``save_dir`` after each; a run found there resumes (DESIGN §5)."""
    save_every = config.steps
    start = init_state if init_state is not None else fresh_state(config, opt, params, model_state, key, data,
                                                                  eval_data)
    one = jax.eval_shape(lambda *a: to_the_end(config, *a), opt, params, model_state, start, key, data,
                         eval_data, tol)
    n_evals = 0 if every is None else steps // every
    unfilled = checkpoint.unfilled
    records = {
        "losses": np.full((steps,), np.nan, one.losses.dtype),
        "grad_norms": np.full((steps,), np.nan, one.grad_norms.dtype),
        "evals": {k: np.full((n_evals,), np.nan, v.dtype) for k, v in (one.evals or {}).items()},
        "aux": unfilled(jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype), one.aux), (steps,))
        if config.record_aux else unfilled(one.aux),
        "flags": np.zeros(3, bool),  # converged, diverged, stopped_early
        "num_steps": np.zeros((), np.int32),
    }
    carry = {"params": params, "model_state": model_state, "loop": start}
    as_numpy = lambda tree: jax.tree.map(np.asarray, tree)  # noqa: E731
    saver = checkpoint.Saver(save_dir, checkpoint.fingerprint_of(**fingerprint, start=start.step))
    try:
        saved_state, done = saver.restore({"carry": as_numpy(carry), "records": records})
        if saved_state is not None:
            carry, records = saved_state["carry"], saved_state["records"]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, initial=done, desc="minimize (resumed)" if done else "minimize")
        while done < steps and not records["flags"].any():
            r = run(config, opt, carry["params"], carry["model_state"], carry["loop"], key, data, eval_data, tol,
                    loop=loop)
            r = as_numpy(r._replace(key=None))
            records["losses"][done:done + save_every] = r.losses
            records["grad_norms"][done:done + save_every] = r.grad_norms
            for name, values in records["evals"].items():
                values[done // every: (done + save_every) // every] = r.evals[name]
            if config.record_aux:
                jax.tree.map(lambda dst, src: dst.__setitem__(slice(done, done + save_every), src), records["aux"],
                             r.aux)
            else:
                records["aux"] = r.aux
            records["flags"] = np.array([r.converged, r.diverged, r.stopped_early])
            records["num_steps"] = records["num_steps"] + r.num_steps
            carry = {"params": r.params, "model_state": r.model_state, "loop": r.state}
            done = steps if records["flags"].any() else done + save_every
            saver.save(done, {"carry": carry, "records": records})
            if bar is not None:
                bar.update(done - bar.n)
        if bar is not None:
            bar.close()
    finally:
        saver.close()
    loop_state = carry["loop"]
    first = None if every is None else (int(start.step) // every + 1) * every
    return Result(
        params=carry["params"], state=loop_state, key=key, losses=records["losses"], grad_norms=records["grad_norms"],
        num_steps=records["num_steps"], converged=records["flags"][0], diverged=records["flags"][1],
        best_params=loop_state.best.params, best_loss=loop_state.best.value,
        aux=records["aux"] if config.has_aux else None, stopped_early=records["flags"][2],
        best_step=loop_state.best.step, model_state=carry["model_state"],
        best_model_state=loop_state.best.model_state, evals=None if every is None else records["evals"],
        eval_steps=None if every is None else first + every * np.arange(n_evals, dtype=np.int32),
    )

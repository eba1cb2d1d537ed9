"""A sweep's runs in segments called from the host: every segment the same compiled
program continuing each run, the records written into a store after each, saved with
``checkpoint.Saver`` (``save_every``), shown by a progress bar, or continued by halving's
next rung."""

from __future__ import annotations

import jax
import numpy as np

from jgd._sweep_program import _run, initial_carry
from jgd.checkpoint import Saver, check_segments, fingerprint_of, unfilled

__all__ = ["empty_store", "record_segment", "sweep_saved", "sweep_segments", "progress_segment"]


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
    # which runs have stopped goes with their state: the program keeps a stopped run's
    # state as it is (this call's stops only: a halving's next rung continues every run)
    carried = {**carried, "stopped": np.zeros((runs,), bool)}
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
        on_device = out.pop("carried")
        if store is None:
            store = empty_store(out, runs, steps, every)
        rows = np.flatnonzero(~store["stopped"])  # a stopped run stays stopped, as in one minimize call
        record_segment(store, out, rows, rows, done, segment, every)
        store["stopped"][rows] |= (out["converged"] | out["diverged"] | out["stopped_early"])[rows]
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
    evaluations' spacing that divides ``steps`` into at most 10 segments; ``steps`` (one
    segment) when none does (61 steps evaluated every 5)."""
    return min((d for d in range(every, steps + 1, every) if steps % d == 0 and steps // d <= 10), default=steps)

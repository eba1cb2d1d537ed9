"""Surviving preemption: a run in segments of ``save_every`` steps, everything needed to go
on saved with orbax-checkpoint after each, resumed from the newest complete checkpoint.

orbax writes a checkpoint into a temporary directory and renames it when complete, so a
process killed mid-save leaves no checkpoint that looks complete; the last two are kept,
so a damaged newest one (a file missing or truncated) falls back to the previous one.
Each checkpoint carries a fingerprint of its configuration (shapes, grid, seeds, steps,
key, optimizer): another configuration pointed at the same directory is refused.
"""

from __future__ import annotations

import os
import re
import sys
import warnings

import jax
import numpy as np

__all__ = ["Saver", "fingerprint_of", "sweep_fingerprint"]


def _orbax():
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        raise ImportError(
            "save_dir= needs orbax-checkpoint: pip install 'jgd[checkpoint]'"
        ) from None
    return ocp


def fingerprint_of(**parts) -> dict:
    """A JSON-able description of a run's configuration: arrays and pytrees become their
    shapes and dtypes (or, for small numeric ones such as keys and grids, their values)."""
    def describe(value):
        leaves, treedef = jax.tree.flatten(value)
        treedef = re.sub(r" at 0x[0-9a-f]+", "", str(treedef))  # function addresses differ between processes
        if not leaves:
            return treedef
        out = []
        for leaf in leaves:
            if isinstance(leaf, jax.ShapeDtypeStruct):
                out.append([list(leaf.shape), str(leaf.dtype)])
                continue
            array = np.asarray(jax.random.key_data(leaf) if jax.dtypes.issubdtype(
                getattr(leaf, "dtype", None), jax.dtypes.prng_key) else leaf)
            out.append([list(array.shape), str(array.dtype)] + ([array.ravel().tolist()] if array.size <= 4096 else []))
        return [treedef, out]

    return {name: value if isinstance(value, (int, float, str, bool, type(None))) else describe(value)
            for name, value in parts.items()}


def sweep_fingerprint(kind: str, run_args: tuple, *, grid, seeds: int, key, **extra) -> dict:
    """The configuration of a saved sweep (or halving rung) from the arguments of its
    runs (as ``sweep._run`` takes them): what another call must match to resume."""
    _, params, factory, names, _, key_data, key_impl, _, keep_params, kwargs = run_args
    if callable(params):  # an init function: the shapes it makes
        params = jax.eval_shape(params, jax.random.wrap_key_data(key_data[0], impl=key_impl))
    return dict(kind=kind, steps=kwargs["steps"], grid=grid, names=list(names), seeds=seeds, key=key,
                factory=getattr(factory, "__qualname__", repr(factory)), params=params,
                data=kwargs.get("data"), batch_size=kwargs.get("batch_size"), keep_params=keep_params, **extra)


class Saver:
    """Saves and restores a run's state (a pytree of numpy arrays) in ``save_dir``."""

    def __init__(self, save_dir, fingerprint: dict):
        ocp = _orbax()
        self.ocp, self.fingerprint = ocp, fingerprint
        self.path = os.path.abspath(os.fspath(save_dir))
        options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
        self.manager = ocp.CheckpointManager(self.path, options=options)

    def _differences(self, saved: dict) -> list:
        names = sorted(set(saved) | set(self.fingerprint))
        return [n for n in names if saved.get(n) != _jsonable(self.fingerprint.get(n))]

    def restore(self, like):
        """The newest complete checkpoint's state (shaped like ``like``) and its step, or
        ``(None, 0)`` when there is none. A checkpoint of another configuration is a
        ValueError naming what differs; an unreadable one falls back to the previous."""
        ocp = self.ocp
        self.manager.reload()
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            except Exception as error:  # noqa: BLE001 - any damage: fall back
                warnings.warn(f"checkpoint {step} in {self.path} is damaged ({type(error).__name__}: "
                              f"{str(error)[:200]}); trying the previous one", RuntimeWarning, stacklevel=3)
                continue
            differences = self._differences(meta)
            if differences:
                raise ValueError(
                    f"save_dir={self.path!r} holds a checkpoint of another configuration: "
                    f"{', '.join(differences)} differ (saved {[meta.get(d) for d in differences]!r:.300}, "
                    f"now {[_jsonable(self.fingerprint.get(d)) for d in differences]!r:.300}); "
                    "use another save_dir or remove it"
                )
            target = jax.tree.map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype), like)
            try:
                state = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target)))["state"]
            except Exception as error:  # noqa: BLE001 - any damage: fall back
                warnings.warn(f"checkpoint {step} in {self.path} is damaged ({type(error).__name__}: "
                              f"{str(error)[:200]}); trying the previous one", RuntimeWarning, stacklevel=3)
                continue
            state = jax.tree.map(np.asarray, state)
            print(f"jgd: resuming from {self.path} at step {step} of {self.fingerprint.get('steps')}",
                  file=sys.stderr)
            return state, step
        return None, 0

    def save(self, step: int, state) -> None:
        """Saves ``state`` as the checkpoint of ``step`` (asynchronously: it is written
        while the next segment runs, and complete before the next save or ``close``)."""
        ocp = self.ocp
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(_jsonable(self.fingerprint))))

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _jsonable(value):
    """``value`` as JSON reads it back (tuples become lists)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _check_segments(steps, save_dir, save_every, evaluate):
    from jgd._arguments import _check_int

    if save_dir is None or save_every is None:
        raise ValueError(f"save_dir and save_every go together, got save_dir={save_dir!r}, save_every={save_every!r}")
    save_every = _check_int("save_every", save_every, 1)
    if steps % save_every:
        raise ValueError(f"save_every={save_every} must divide steps={steps} (every segment is the same program)")
    every = None
    if evaluate is not None:
        every = evaluate.every if evaluate.every is not None else steps
        if save_every % every:
            raise ValueError(
                f"save_every={save_every} must be a multiple of evaluate.every={every}, so that each "
                "segment ends on an evaluation schedule of its own"
            )
    return save_every, every


def minimize_saved(fun, params, opt, *, steps, save_dir, save_every, key, init_state, evaluate,
                   model_state, has_aux, record_aux, progress, **kwargs):
    """``minimize`` in segments of ``save_every`` steps, saved after each (DESIGN §5)."""
    from jgd._arguments import _as_key, _check_int
    from jgd.flat import layout
    from jgd.minimize import LoopState, Result, initial_state, minimize
    from jgd.sweep import unfilled

    steps = _check_int("steps", steps, 1)
    save_every, every = _check_segments(steps, save_dir, save_every, evaluate)
    if layout(opt, params) is not None:
        raise ValueError("save_dir does not take a jgd.flat optimizer yet; save the inner rule's run instead")
    if init_state is not None and not isinstance(init_state, LoopState):
        raise ValueError("with save_dir, init_state must be a Result.state (a jgd.LoopState) or None")
    key = _as_key(key)
    segment = dict(kwargs, evaluate=evaluate, has_aux=has_aux, record_aux=record_aux, key=key)
    start = init_state if init_state is not None else initial_state(
        fun, params, opt, model_state=model_state, steps=save_every, **segment)
    one = jax.eval_shape(lambda p, s, m: minimize(fun, p, opt, steps=save_every, init_state=s, model_state=m,
                                                  **segment), params, start, model_state)
    n_evals = 0 if evaluate is None else steps // every
    records = {
        "losses": np.full((steps,), np.nan, one.losses.dtype),
        "grad_norms": np.full((steps,), np.nan, one.grad_norms.dtype),
        "evals": {k: np.full((n_evals,), np.nan, v.dtype) for k, v in (one.evals or {}).items()},
        "aux": unfilled(jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype), one.aux), (steps,))
        if record_aux else unfilled(one.aux),
        "flags": np.zeros(3, bool),  # converged, diverged, stopped_early
        "num_steps": np.zeros((), np.int32),
    }
    carry = {"params": params, "model_state": model_state, "loop": start}
    as_numpy = lambda tree: jax.tree.map(np.asarray, tree)  # noqa: E731
    saver = Saver(save_dir, fingerprint_of(
        kind="minimize", steps=steps, save_every=save_every, params=params, model_state=model_state,
        key=key, optimizer=opt, data=kwargs.get("data"), batch_size=kwargs.get("batch_size"),
        microbatches=kwargs.get("microbatches", 1), start=start.step))
    try:
        saved, done = saver.restore({"carry": as_numpy(carry), "records": records})
        if saved is not None:
            carry, records = saved["carry"], saved["records"]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, initial=done, desc="minimize (resumed)" if done else "minimize")
        while done < steps and not records["flags"].any():
            r = minimize(fun, carry["params"], opt, steps=save_every, init_state=carry["loop"],
                         model_state=carry["model_state"], **segment)
            r = as_numpy(r._replace(key=None))
            records["losses"][done:done + save_every] = r.losses
            records["grad_norms"][done:done + save_every] = r.grad_norms
            for name, values in records["evals"].items():
                values[done // every: (done + save_every) // every] = r.evals[name]
            if record_aux:
                jax.tree.map(lambda dst, src: dst.__setitem__(slice(done, done + save_every), src), records["aux"], r.aux)
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
    loop = carry["loop"]
    first = None if evaluate is None else (int(start.step) // every + 1) * every
    return Result(
        params=carry["params"], state=loop, key=key, losses=records["losses"], grad_norms=records["grad_norms"],
        num_steps=records["num_steps"], converged=records["flags"][0], diverged=records["flags"][1],
        best_params=loop.best.params, best_loss=loop.best.value, aux=records["aux"] if has_aux else None,
        stopped_early=records["flags"][2], best_step=loop.best.step, model_state=carry["model_state"],
        best_model_state=loop.best.model_state, evals=None if evaluate is None else records["evals"],
        eval_steps=None if evaluate is None else first + every * np.arange(n_evals, dtype=np.int32),
    )


def sweep_saved(fun, params, factory, names, run_points, key_data, key_impl, chunk_size, keep_params,
                minimize_kwargs, *, save_dir, save_every, fingerprint, carried=None, return_carry=False):
    """``sweep``'s runs in segments of ``save_every`` steps, every segment the same program
    continuing each run, saved after each: ``{field: (runs, ...)}`` as ``_run`` returns.
    ``carried`` continues runs that have already run (a halving's survivors);
    ``return_carry`` also returns what the runs continue from."""
    from jgd.sweep import _run, empty_store, initial_carry, record_segment

    steps = minimize_kwargs["steps"]
    evaluate = minimize_kwargs.get("evaluate")
    save_every, every = _check_segments(steps, save_dir, save_every, evaluate)
    segment_kwargs = {**minimize_kwargs, "steps": save_every}
    if carried is None:
        carried = initial_carry(fun, params, factory, names, run_points, key_data, key_impl, segment_kwargs)
    runs = run_points.shape[0]
    store = None
    saver = Saver(save_dir, fingerprint_of(**fingerprint, save_every=save_every))
    try:
        like = None
        done = 0
        saver.manager.reload()
        if saver.manager.all_steps():
            # The saved state's structure: one segment's outputs, abstractly.
            spec = _run(fun, params, factory, names, run_points, key_data, key_impl, chunk_size, keep_params,
                        segment_kwargs, carried=carried, emit_carry=True, abstract=True)
            like = {"carried": carried, "store": empty_store(spec, runs, steps, every)}
            saved, done = saver.restore(like)
            if saved is not None:
                carried, store = saved["carried"], saved["store"]
        while done < steps:
            out = _run(fun, params, factory, names, run_points, key_data, key_impl, chunk_size, keep_params,
                       segment_kwargs, carried=carried, emit_carry=True)
            if store is None:
                store = empty_store(out, runs, steps, every)
            rows = np.flatnonzero(~store["stopped"])  # a stopped run stays stopped, as in one minimize call
            record_segment(store, out, rows, rows, done, save_every, every)
            store["stopped"][rows] |= (out["converged"] | out["diverged"] | out["stopped_early"])[rows]
            jax.tree.map(lambda old, new: old.__setitem__(rows, new[rows]), carried, out["carried"])
            done += save_every
            if store["stopped"].all():
                done = steps
            saver.save(done, {"carried": carried, "store": store})
    finally:
        saver.close()
    return (store, carried) if return_carry else store

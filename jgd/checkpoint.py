"""Surviving preemption: a run in segments of ``save_every`` steps, everything needed to go
on saved with orbax-checkpoint after each, resumed from the newest complete checkpoint.

orbax writes a checkpoint into a temporary directory and renames it when complete, so a
process killed mid-save leaves no checkpoint that looks complete; the last two are kept,
so a damaged newest one (a file missing or truncated) falls back to the previous one.
Each checkpoint carries a fingerprint of its configuration (shapes, grid, seeds, steps,
key, optimizer): another configuration pointed at the same directory is refused.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import sys
import types
import warnings

import jax
import numpy as np

from jgd._arguments import _check_int, _is_init_function

__all__ = ["Saver", "fingerprint_of", "sweep_fingerprint", "check_segments", "unfilled"]


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
            if isinstance(leaf, jax.ShapeDtypeStruct) or (isinstance(leaf, jax.Array) and not leaf.is_fully_addressable):
                out.append([list(leaf.shape), str(leaf.dtype)])  # a global array's values are not all here
                continue
            array = np.asarray(jax.random.key_data(leaf) if jax.dtypes.issubdtype(
                getattr(leaf, "dtype", None), jax.dtypes.prng_key) else leaf)
            out.append([list(array.shape), str(array.dtype)] + ([array.ravel().tolist()] if array.size <= 4096 else []))
        return [treedef, out]

    return {name: value if isinstance(value, (int, float, str, bool, type(None))) else describe(value)
            for name, value in parts.items()}


def sweep_fingerprint(kind: str, run_args: tuple, *, grid, seeds: int, key, **extra) -> dict:
    """The configuration of a saved sweep (or halving rung) from the arguments of its
    runs (as ``_sweep_program._run`` takes them): what another call must match to resume."""
    _, params, factory, names, _, key_data, key_impl, _, keep_params, kwargs = run_args
    if _is_init_function(params):  # an init function: the shapes it makes
        params = jax.eval_shape(params, jax.random.wrap_key_data(key_data[0], impl=key_impl))
    return dict(kind=kind, steps=kwargs["steps"], grid=grid, names=list(names), seeds=seeds, key=key,
                factory=getattr(factory, "__qualname__", repr(factory)), params=params,
                data=kwargs.get("data"), batch_size=kwargs.get("batch_size"), keep_params=keep_params, **extra)


# How a checkpoint holds the state; one written in another layout is refused by name.
# 2: one flat array per dtype (``_packed``); a sweep's params once, in the runs' carry.
# 3: those arrays as ``.npy`` files (``_arrays_handler``), not orbax's PyTree format.
_LAYOUT = 3


def _packed(state) -> dict:
    """``state``'s leaves as one flat array per dtype (``{dtype name: array}``): orbax's
    cost is per array (threads, futures, files), and a run's state is dozens of small
    ones (measured: 8 saves of the digits sweep's ~30 arrays took 0.43 s on the host)."""
    groups: dict = {}
    for leaf in jax.tree.leaves(state):
        leaf = np.asarray(leaf)
        groups.setdefault(leaf.dtype.name, []).append(leaf.ravel())
    return {name: np.concatenate(parts) for name, parts in groups.items()}


def _unpacked(packed: dict, like):
    """The tree shaped like ``like`` whose leaves ``_packed`` put in ``packed``."""
    leaves, treedef = jax.tree.flatten(like)
    offsets: dict = {}
    out = []
    for leaf in leaves:
        leaf = np.asarray(leaf)
        name, start = leaf.dtype.name, offsets.get(leaf.dtype.name, 0)
        out.append(packed[name][start:start + leaf.size].reshape(leaf.shape))
        offsets[name] = start + leaf.size
    return jax.tree.unflatten(treedef, out)


@functools.cache
def _arrays_handler():
    """An orbax checkpoint handler for a few flat numpy arrays, each one ``.npy`` file
    written by orbax's background thread. orbax's PyTree handler (tensorstore, OCDBT, a
    thread per array) took ~0.25 s of CPU for 8 saves of the digits sweep's state, CPU
    the next segment's lanes needed on a 2-core machine; ``np.save`` takes ~10 ms."""
    ocp = _orbax()

    class ArraysHandler(ocp.AsyncCheckpointHandler):
        def save(self, directory, args):
            if ocp.multihost.is_primary_host(0):  # every process holds the same values
                for name, array in args.arrays.items():
                    with open(os.path.join(os.fspath(directory), f"{name}.npy"), "wb") as f:
                        np.save(f, array, allow_pickle=False)

        async def async_save(self, directory, args):
            async def write():
                self.save(directory, args)

            return [ocp.future.CommitFutureAwaitingContractedSignals(write(), name="jgd_arrays_save")]

        def restore(self, directory, args):
            out = {}
            for name, like in args.like.items():
                array = np.load(os.path.join(os.fspath(directory), f"{name}.npy"), allow_pickle=False)
                if array.shape != like.shape or array.dtype != like.dtype:
                    raise ValueError(f"{name}.npy holds {array.dtype}{list(array.shape)}, "
                                     f"expected {like.dtype}{list(like.shape)}")
                out[name] = array
            return out

    @ocp.args.register_with_handler(ArraysHandler, for_save=True)
    @dataclasses.dataclass
    class ArraysSave(ocp.args.CheckpointArgs):
        arrays: dict

    @ocp.args.register_with_handler(ArraysHandler, for_restore=True)
    @dataclasses.dataclass
    class ArraysRestore(ocp.args.CheckpointArgs):
        like: dict

    return types.SimpleNamespace(handler=ArraysHandler, save=ArraysSave, restore=ArraysRestore)


class Saver:
    """Saves and restores a run's state (a pytree of numpy arrays) in ``save_dir``."""

    def __init__(self, save_dir, fingerprint: dict):
        ocp = _orbax()
        self.ocp, self.fingerprint = ocp, {**fingerprint, "layout": _LAYOUT}
        self.path = os.path.abspath(os.fspath(save_dir))
        options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
        # uncompressed: zstd took CPU from the next segment, and trained floats barely compress
        handlers = {"state": _arrays_handler().handler(), "meta": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.path, options=options, item_handlers=handlers)

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
            target = _packed(jax.tree.map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype), like))
            try:
                packed = self.manager.restore(step, args=ocp.args.Composite(
                    state=_arrays_handler().restore(target)))["state"]
            except Exception as error:  # noqa: BLE001 - any damage: fall back
                warnings.warn(f"checkpoint {step} in {self.path} is damaged ({type(error).__name__}: "
                              f"{str(error)[:200]}); trying the previous one", RuntimeWarning, stacklevel=3)
                continue
            state = _unpacked(jax.tree.map(np.asarray, packed), like)
            print(f"jgd: resuming from {self.path} at step {step} of {self.fingerprint.get('steps')}",
                  file=sys.stderr)
            return state, step
        return None, 0

    def save(self, step: int, state) -> None:
        """Saves ``state`` as the checkpoint of ``step`` (asynchronously: it is written
        while the next segment runs, and complete before the next save or ``close``)."""
        ocp = self.ocp
        self.manager.save(step, args=ocp.args.Composite(
            state=_arrays_handler().save(_packed(state)), meta=ocp.args.JsonSave(_jsonable(self.fingerprint))))

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


def check_segments(steps, save_dir, save_every, evaluate):
    """``save_every`` checked against the run's ``steps`` and evaluation schedule, and the
    evaluations' spacing (None without ``evaluate``)."""

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


def unfilled(spec, prefix=()):
    """Host arrays shaped ``prefix + spec.shape`` for every leaf of ``spec``: NaN where
    floating, 0 otherwise (what a record holds until it is written)."""
    return jax.tree.map(lambda s: np.full(prefix + tuple(s.shape), np.nan if np.issubdtype(s.dtype, np.inexact) else 0,
                                          s.dtype), spec)

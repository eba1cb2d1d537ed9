"""``jgd.minimize``: the front. It checks the arguments (clear errors at the boundary),
builds the run's static configuration, changes the problem's form once where the rule asks
for it (``jgd.flat``: params as buffers) and picks a driver (``_drivers``): the whole loop
as one program, segments called from the host, or segments saved for preemption.

One step's story is in ``_step`` (sample, value and gradient, update, record, stop), a
segment's in ``_engine``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jgd import _drivers, checkpoint
from jgd._arguments import (
    _as_key,
    _check_bool,
    _check_int,
    _check_model_state,
    _check_params,
    _leading_size,
    _linearized,
    _spec,
)
from jgd._engine import LoopState, Result
from jgd._step import Config
from jgd._transform import Static, as_hyperparameter
from jgd.evaluation import Eval
from jgd.flat import FlatState, join, layout, split

__all__ = ["minimize", "Result", "LoopState"]

# Steps per segment without evaluation: long enough that the per-segment work is
# amortised, short enough that the masked tail of the last segment costs little.
_SEGMENT = 32

_LOOPS = ("device", "host", "auto")


def minimize(
    fun: Callable,
    params,
    opt: optax.GradientTransformation,
    *,
    steps: int,
    data=None,
    batch_size: int | None = None,
    microbatches: int = 1,
    key=None,
    tol=None,
    has_aux: bool = False,
    model_state=None,
    with_key: bool = False,
    evaluate: Eval | None = None,
    record_aux: bool = False,
    differentiable: bool = False,
    checkpoint_every: int | None = None,
    init_state=None,
    progress: bool = False,
    save_dir=None,
    save_every: int | None = None,
    loop: str = "device",
    data_shards: int | None = None,
) -> Result:
    """Minimizes ``fun`` with ``opt`` in one compiled program.

    Args:
      fun: ``fun(params[, model_state][, batch][, key])`` returning a scalar loss; with
        ``has_aux`` ``(loss, aux)``; with ``model_state`` ``(loss, new_model_state)``, or
        ``(loss, (new_model_state, aux))`` with both. A batch keeps the leading axis,
        also for ``batch_size=1``. Reuse the same function object between calls: it is
        part of the compilation cache key (the optimizer, params and data are not).
      params: the initial params, a pytree of floating arrays.
      opt: any optax ``GradientTransformation``; jgd optimizers are arguments of the
        compiled program, so another learning rate does not recompile. With
        ``jgd.flat(inner)`` the params stay ``flat`` buffers for the whole loop (the
        update and ``apply_updates`` run once per buffer instead of once per leaf);
        ``Result.params`` and ``best_params`` come back as the params' tree.
      steps: the maximum number of steps.
      data: a pytree of arrays sharing a leading example axis of size ``n``.
      batch_size: ``None`` → full-batch GD; ``1`` → SGD; ``b`` → mini-batch GD. Batches
        are drawn on device from ``key`` at O(b) cost a step: each epoch visits the
        examples in a fresh random order, cut into ``n // b`` batches, so within an
        epoch every example is used at most once; when ``n % b != 0`` the last ``n % b``
        of each epoch's order are left out of that epoch.
      microbatches: splits each batch into this many equal slices whose gradients are
        averaged in a ``lax.scan`` (the same gradient as the whole batch for a mean
        loss, with less memory; ``model_state`` threads through the slices). Must
        divide the batch size.
      key: a PRNG key for the sampler and the per-step keys (required with
        ``batch_size``; default ``jax.random.key(0)`` otherwise).
      tol: stop when the gradient's global norm is ``<= tol`` (``converged=True``); with
        ``jgd.proximal_gradient``, when its prox-gradient residual
        ``‖y − prox(y − η∇f(y), η)‖/η`` is (``grad_norms`` then records the residual).
      has_aux: ``fun`` returns ``(loss, aux)``.
      model_state: non-trainable state (batch-norm statistics, …) threaded through the
        loop and never differentiated; ``Result.model_state`` is its final value.
      with_key: pass ``fun`` a typed PRNG key of its own at every step (every
        micro-batch), derived from ``key`` (dropout).
      evaluate: a [`jgd.Eval`][jgd.Eval]: held-out metrics inside the loop.
      record_aux: keep every step's aux, stacked on a leading ``(steps,)`` axis.
      differentiable: run the loop in a form reverse-mode autodiff goes through (a scan
        of exactly ``steps`` steps; a stop freezes the params instead of leaving the loop),
        so ``jax.grad`` of anything returned works with respect to the initial params, the
        data, the factory's arguments and the optimizer itself (an optimizer-shaped
        gradient, one entry per hyperparameter). Results equal the normal loop's.
      checkpoint_every: with ``differentiable``, rematerialise every this many steps (it
        must divide ``steps``): the backward pass keeps the loop's state once per
        segment and recomputes a segment's steps when it reaches them, so memory grows
        with ``steps / checkpoint_every`` instead of ``steps``.
      init_state: continue a run from ``result.state`` (or start from an optimizer
        state made by ``opt.init``).
      progress: show a tqdm progress bar fed from the device.
      save_dir, save_every: survive preemption: run in segments of ``save_every`` steps
        (one compiled program for all) and save everything needed to go on in
        ``save_dir`` after each (orbax-checkpoint, ``pip install 'jgd[checkpoint]'``);
        called again with the same ``save_dir``, the run resumes from the newest complete
        checkpoint and its result equals an uninterrupted run bit for bit.
      loop: ``"device"``: the whole descent is one compiled program. ``"host"``: the same
        steps as compiled segments of straight-line steps called from Python (one
        compilation for every hyperparameter value, the same ``Result`` to float
        rounding), for models XLA runs slowly inside a compiled loop: convolutions on
        XLA:CPU (jax#12868) ran 8–10× faster this way (benchmarks/host_loop.py). Not under ``jit``, ``vmap`` or
        ``grad`` (a host loop cannot be traced) nor with ``differentiable``. ``"auto"``:
        the host loop when the backend is CPU and ``fun`` uses convolutions, else the
        device loop.
      data_shards: sample each of this many equal blocks of ``data``'s leading axis on its
        own: each block gives ``batch_size / data_shards`` examples of every batch from its
        own rows (keyed ``fold_in(sample_key, block)``, every example still at most once
        an epoch). Default: the number of shards of ``data``'s leading axis when it is
        sharded (a ``NamedSharding`` over a mesh, Auto or Explicit), so each device
        samples and computes its share of the batch and the gradient is all-reduced —
        data parallelism; else none. On one device it emulates the same stratified
        sampling (the equality oracle). ``batch_size`` and each micro-batch must divide
        by it.

    The loop also stops when the loss turns non-finite (``diverged=True``, no exception).

    Hypergradients: with ``differentiable=True``, the validation loss after training is a
    differentiable function of the learning rate (here, the gradient is negative: a
    larger step would have got closer in 20 steps)::

      >>> def after(lr):
      ...     r = jgd.minimize(lambda w: jnp.sum((w - 3.0) ** 2), jnp.zeros(2), jgd.sgd(lr),
      ...                      steps=20, differentiable=True, checkpoint_every=5)
      ...     return jnp.sum((r.params - 3.0) ** 2)
      >>> bool(jax.grad(after)(0.01) < 0)
      True

    Examples:
      >>> r = jgd.minimize(lambda w: jnp.sum((w - 3.0) ** 2), jnp.zeros(2), jgd.sgd(0.1), steps=100)
      >>> r.params.round(4), int(r.num_steps), bool(r.converged)
      (Array([3., 3.], dtype=float32), 100, False)
    """
    _check_bool("progress", progress)
    if loop not in _LOOPS:
        raise ValueError(f"loop must be one of {_LOOPS}, got {loop!r}")
    saving = save_dir is not None or save_every is not None
    if saving and differentiable:
        raise ValueError("differentiable=True cannot be combined with save_dir/save_every: "
                         "a differentiated run is one program, not a series of saved segments")
    if loop == "host" and differentiable:
        raise ValueError("loop='host' cannot be combined with differentiable=True: a host loop is not "
                         "one program that autodiff goes through; use loop='device'")
    user_params, user_opt = params, opt
    _check_params(params)
    if loop == "auto":
        loop = _auto_loop(fun, params, model_state, data, batch_size, microbatches, with_key, differentiable,
                          (opt, init_state, key, tol, evaluate))
    buffers = layout(opt, params)
    if buffers is not None:  # jgd.flat: the whole run on the params as buffers
        if saving:
            raise ValueError("save_dir does not take a jgd.flat optimizer yet; save the inner rule's run instead")
        fun, params, opt, evaluate, init_state = _on_buffers(fun, params, buffers[0], buffers[1], evaluate, init_state)
    segment_steps, every = steps, None
    if saving:
        steps = _check_int("steps", steps, 1)
        segment_steps, every = checkpoint.check_segments(steps, save_dir, save_every, evaluate)
        if init_state is not None and not isinstance(init_state, LoopState):
            raise ValueError("with save_dir, init_state must be a Result.state (a jgd.LoopState) or None")
    run = _setup(fun, params, opt, steps=segment_steps, data=data, batch_size=batch_size,
                 microbatches=microbatches, key=key, tol=tol, has_aux=has_aux,
                 model_state=model_state, with_key=with_key, evaluate=evaluate,
                 record_aux=record_aux, progress=progress and loop == "device" and not saving,
                 differentiable=differentiable, checkpoint_every=checkpoint_every, loop=loop,
                 data_shards=data_shards)
    traced = _linearized(params, run.opt, data, model_state, init_state, run.eval_data)
    if not differentiable and traced:
        raise ValueError(
            "reverse-mode differentiation (jax.grad, jax.vjp) through minimize needs "
            "differentiable=True (and checkpoint_every=k to bound its memory); forward mode "
            "(jax.jvp, jax.jacfwd) works either way"
        )
    if (loop == "host" or saving) and any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(
            (params, run.opt, data, model_state, init_state, run.eval_data, run.key, run.tol))):
        what = "loop='host'" if loop == "host" else "save_dir"
        raise ValueError(f"{what} runs segments from Python, so minimize cannot be traced (jit, vmap, grad) "
                         "with it; call it outside the transformation, or use loop='device'")
    args = (run.config, run.opt, params, model_state, init_state, run.key, data, run.eval_data, run.tol)
    if saving:
        fingerprint = dict(kind="minimize", steps=steps, save_every=segment_steps, params=user_params,
                           model_state=model_state, key=run.key, optimizer=user_opt, data=data,
                           batch_size=batch_size, microbatches=microbatches)
        result = _drivers.saved(*args, steps=steps, save_dir=save_dir, every=every, fingerprint=fingerprint,
                                loop=loop, progress=progress)
    elif progress:
        bar = _drivers.Progress.start(steps)
        try:
            result = _drivers.run(*args, loop=loop, bar=bar)
        finally:
            _drivers.Progress.close()
    else:
        result = _drivers.run(*args, loop=loop)
    if buffers is not None:
        result = _from_buffers(result, user_params, buffers[1])
    return result


def _auto_loop(fun, params, model_state, data, batch_size, microbatches, with_key, differentiable, rest) -> str:
    """``loop="auto"``: the host loop for a loss with convolutions on XLA:CPU, which runs
    them 8–10× slower inside a compiled loop than in straight-line code (jax#12868;
    benchmarks/host_loop.py); the device loop otherwise, and under a transformation."""
    leaves = jax.tree.leaves((params, model_state, data, rest))
    if differentiable or jax.default_backend() != "cpu" or any(isinstance(x, jax.core.Tracer) for x in leaves):
        return "device"
    try:
        args = [params] + ([model_state] if model_state is not None else [])
        if data is not None:
            size = (batch_size or _leading_size("data", data)) // max(int(microbatches), 1)
            args.append(jax.tree.map(lambda x: jax.ShapeDtypeStruct((size,) + np.shape(x)[1:], x.dtype), data))
        if with_key:
            args.append(jax.random.key(0))
        jaxpr = jax.make_jaxpr(fun)(*args)
    except Exception:  # noqa: BLE001 - a loss that does not trace: _setup's checks say why
        return "device"
    return "host" if _uses(jaxpr.jaxpr, "conv_general_dilated") else "device"


def _uses(jaxpr, primitive: str) -> bool:
    """Whether ``jaxpr`` (or one nested in it: jit, custom_vjp, scan, cond...) uses ``primitive``."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == primitive:
            return True
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns") and _uses(inner, primitive):
                    return True
    return False


class _Setup(NamedTuple):
    config: Any
    opt: Any
    key: Any
    eval_data: Any
    tol: Any


def _setup(fun, params, opt, *, steps, data, batch_size, microbatches, key, tol, has_aux,
           model_state, with_key, evaluate, record_aux, progress, differentiable=False,
           checkpoint_every=None, loop="device", data_shards=None) -> _Setup:
    """Validates minimize's arguments (clear errors at the boundary) and builds the static
    configuration of the compiled loop."""
    if not callable(fun):
        raise TypeError(f"fun must be callable, got {fun!r}")
    if not (hasattr(opt, "init") and hasattr(opt, "update")):
        raise TypeError(f"opt must be an optax GradientTransformation, got {opt!r}")
    steps = _check_int("steps", steps, 1)
    microbatches = _check_int("microbatches", microbatches, 1)
    for name, value in (("has_aux", has_aux), ("with_key", with_key), ("record_aux", record_aux),
                        ("progress", progress), ("differentiable", differentiable)):
        _check_bool(name, value)
    if checkpoint_every is not None:
        if not differentiable:
            raise ValueError(f"checkpoint_every={checkpoint_every!r} needs differentiable=True "
                             "(it sets the rematerialisation of a differentiated loop)")
        checkpoint_every = _check_int("checkpoint_every", checkpoint_every, 1)
        if steps % checkpoint_every:
            raise ValueError(f"checkpoint_every={checkpoint_every} must divide steps={steps}")
    if record_aux and not has_aux:
        raise ValueError("record_aux=True needs has_aux=True (fun must return (loss, aux))")
    if evaluate is not None and not isinstance(evaluate, Eval):
        raise TypeError(f"evaluate must be a jgd.Eval, got {evaluate!r}")
    _check_params(params)
    if model_state is not None:
        _check_model_state(model_state)
    if data is None:
        if batch_size is not None:
            raise ValueError(f"batch_size={batch_size!r} needs data to sample batches from")
        if microbatches != 1:
            raise ValueError(f"microbatches={microbatches!r} needs data to split")
        n = 0
    else:
        n = _leading_size("data", data)
    if batch_size is not None:
        batch_size = _check_int("batch_size", batch_size, 1)
        if batch_size > n:
            raise ValueError(f"batch_size must be <= the number of examples {n}, got {batch_size}")
        if key is None:
            raise ValueError("key is required with batch_size (mini-batches are sampled from it)")
    full = n if batch_size is None else batch_size
    if data is not None and full % microbatches:
        raise ValueError(
            f"microbatches={microbatches} must divide the batch size {full}"
        )
    shards, sharding = _data_shards(data, data_shards)
    if shards is not None:
        if n % shards:
            raise ValueError(f"data's {n} examples must split into {shards} equal shards (data_shards)")
        if (full // microbatches) % shards:
            what = f"batch_size={full}" if microbatches == 1 else f"each micro-batch ({full} // {microbatches})"
            raise ValueError(f"{what} must divide by the data's {shards} shards, so that every shard gives an "
                             "equal share of each batch")
    if tol is not None and not isinstance(tol, jax.core.Tracer):
        tol_ = np.asarray(tol)
        if tol_.shape or not np.isfinite(tol_) or tol_ < 0:
            raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    evaluation = None if evaluate is None else evaluate.static(steps)
    eval_data = None if evaluate is None else evaluate.data
    key = _as_key(key)
    if tol is None:
        tol = np.float32(-1.0)
    elif not isinstance(tol, jax.core.Tracer):
        tol = np.asarray(tol, np.float32)
    segment = evaluation.every if evaluation is not None else math.ceil(steps / math.ceil(steps / _SEGMENT))
    if loop == "host" and evaluation is None:
        # without evaluations the segment's length changes no result (steps are masked
        # past a stop); the host loop takes one that its calls divide
        segment = min(steps, _SEGMENT)
    if checkpoint_every is not None:
        # a segment is the unit of rematerialisation; evaluations stay on segment ends
        segment = checkpoint_every if evaluation is None else math.gcd(evaluation.every, checkpoint_every)
    config = Config(fun, steps, segment, batch_size, microbatches, has_aux, model_state is not None,
                     with_key, record_aux, evaluation, progress, differentiable, checkpoint_every is not None,
                    shards, sharding)
    # jgd optimizers are pytrees of numbers and stay arguments; an optax closure is static.
    opt = as_hyperparameter(optax.with_extra_args_support(opt))
    return _Setup(config, opt, key, eval_data, tol)


def _data_shards(data, data_shards):
    """``(the blocks data's leading axis is sampled in, that axis' NamedSharding)``: the
    number of shards of that axis when it is sharded (or ``data_shards`` when given; the
    sharding when the two agree), ``(None, None)`` when there are none."""
    found, shardings = set(), {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(data)[0]:
        sharding = _sharding_of(leaf)
        spec = tuple(sharding.spec) if isinstance(sharding, NamedSharding) else ()
        if not spec or all(axis is None for axis in spec):
            continue
        if spec[0] is None:
            raise ValueError(
                f"data{jax.tree_util.keystr(path)} is sharded over an axis other than its leading (example) "
                f"axis ({sharding.spec}); shard the examples (PartitionSpec('data')) or replicate it")
        axes = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
        count = math.prod(sharding.mesh.shape[a] for a in axes)
        found.add(count)
        shardings[count] = NamedSharding(sharding.mesh, P(spec[0]))
    found.discard(1)
    if data_shards is not None:
        data_shards = _check_int("data_shards", data_shards, 1)
        if data is None:
            raise ValueError(f"data_shards={data_shards} needs data to sample from")
        return (None, None) if data_shards == 1 else (data_shards, shardings.get(data_shards))
    if len(found) > 1:
        raise ValueError(f"data's leaves split their leading axis into different numbers of shards {sorted(found)}; "
                         "shard them alike or pass data_shards=")
    if not found:
        return None, None
    count = found.pop()
    return count, shardings[count]


def _sharding_of(leaf):
    if isinstance(leaf, jax.core.Tracer):  # an Explicit mesh's sharding is part of the type
        try:
            return jax.typeof(leaf).sharding
        except Exception:  # noqa: BLE001
            return None
    return getattr(leaf, "sharding", None)


# minimize's defaults of the keywords a sweep's runs need not pass
_RUN_DEFAULTS = dict(data=None, key=None, model_state=None, evaluate=None, batch_size=None, microbatches=1,
                     tol=None, has_aux=False, with_key=False, record_aux=False, progress=False)


def run_setup(fun, params, opt, *, steps, **kwargs) -> _Setup:
    """One run's checked configuration, as ``minimize`` builds it (no ``jgd.flat``), for
    drivers that call the engine themselves: ``initial_state``, a sweep's host loop."""
    if layout(opt, params) is not None:
        raise ValueError("a jgd.flat optimizer runs through minimize itself (not through initial_state, "
                         "nor a sweep's loop='host'); use the rule it wraps, or loop='device'")
    return _setup(fun, params, opt, steps=steps, **{**_RUN_DEFAULTS, **kwargs})


def initial_state(fun, params, opt, *, model_state=None, key=None, data=None, evaluate=None, steps=1,
                  **kwargs) -> LoopState:
    """The [`jgd.LoopState`][jgd.LoopState] that ``minimize`` starts a fresh run from (for continuing
    many runs with ``init_state``, as sweeps saved in segments do)."""
    run = run_setup(fun, params, opt, steps=steps, data=data, key=key, model_state=model_state, evaluate=evaluate,
                    **kwargs)
    return _drivers.fresh_state(run.config, run.opt, params, model_state, run.key, data, run.eval_data)


class _OnBuffers:
    """``fun`` of the params' tree, called with the params as ``jgd.flat`` buffers.
    Hashable by value, so it is a stable part of the compilation cache key."""

    def __init__(self, fun, like, groups):
        self.fun, self.layout = fun, groups
        self.like = _spec(like)

    def _key(self):
        return (self.fun, jax.tree.structure(self.like), tuple(jax.tree.leaves(self.like)), self.layout)

    def __eq__(self, other):
        return isinstance(other, _OnBuffers) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __call__(self, buffers, *rest):
        return self.fun(split(buffers, self.like, self.layout), *rest)




def _on_buffers(fun, params, inner, groups, evaluate, init_state):
    """The problem in ``jgd.flat(inner)``'s form: the params as buffers (so the update and
    ``apply_updates`` run once per buffer, not per leaf), ``fun`` and the evaluation
    taking them, the rule the inner one."""
    if isinstance(init_state, LoopState) and isinstance(init_state.opt_state, FlatState):
        init_state = init_state._replace(opt_state=init_state.opt_state.inner)
    elif isinstance(init_state, FlatState):
        init_state = init_state.inner
    if evaluate is not None:
        evaluate = Eval(_OnBuffers(evaluate.fun, params, groups), evaluate.data, evaluate.every,
                        evaluate.monitor, evaluate.mode, evaluate.patience)
    return _OnBuffers(fun, params, groups), join(params, groups), inner, evaluate, init_state


def _from_buffers(r: Result, like, groups) -> Result:
    """A run on buffers back in the params' form."""
    state = r.state._replace(opt_state=FlatState(inner=r.state.opt_state, layout=Static(groups)))
    return r._replace(params=split(r.params, like, groups), state=state,
                      best_params=split(r.best_params, like, groups))

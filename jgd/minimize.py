"""``jgd.minimize``: the whole descent loop as one compiled program.

The loop's story, one step: sample the batch (``_sampling``), value and gradient
(averaged over micro-batches), update, record, stop. Steps run in segments of a fixed
length (a ``lax.scan``), so per-step records leave the loop as scan outputs and the
once-per-segment work — writing the records, held-out evaluation (``evaluation``),
the stopping test — is paid once per segment, not once per step.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jgd import _sampling
from jgd._arguments import (
    _as_key,
    _check_bool,
    _check_int,
    _check_loss,
    _check_model_state,
    _check_params,
    _leading_size,
    _linearized,
    _spec,
)
from jgd._transform import Static, as_hyperparameter, global_norm, unwrap
from jgd.evaluation import Best, Eval, EvalConfig
from jgd.flat import FlatState, join, layout, split
from jgd.wrappers import apply_updates

__all__ = ["minimize", "Result", "LoopState"]

# Steps per segment without evaluation: long enough that the per-segment work is
# amortised, short enough that the masked tail of the last segment costs little.
_SEGMENT = 32


class LoopState(NamedTuple):
    """What a run needs to continue exactly: the optimizer state, the number of steps
    taken so far (the sampler's position, the evaluation schedule and the per-step keys
    all follow from it) and the best iterate so far.

    Attributes:
      opt_state: the optimizer's state.
      step: the number of steps taken so far.
      best: the best iterate so far (its params, value and step).

    Examples:
      >>> f = lambda w: jnp.sum((w - 1.0) ** 2)
      >>> first = jgd.minimize(f, jnp.zeros(2), jgd.adam(0.1), steps=30)
      >>> int(first.state.step)
      30
      >>> second = jgd.minimize(f, first.params, jgd.adam(0.1), steps=30, init_state=first.state, key=first.key)
      >>> whole = jgd.minimize(f, jnp.zeros(2), jgd.adam(0.1), steps=60)
      >>> bool((second.params == whole.params).all())  # 30 + 30 steps are 60 steps, bit for bit
      True
    """

    opt_state: Any
    step: jax.Array
    best: Best


class Result(NamedTuple):
    """The outcome of [`jgd.minimize`][jgd.minimize.minimize] (a pytree; it pickles and comes out of ``vmap``).

    ``state`` and ``key`` continue the run: ``minimize(fun, r.params, opt,
    init_state=r.state, key=r.key, ...)``. Per-step entries past the stop are NaN.

    Attributes:
      params: the params after the last step.
      state: the [`jgd.LoopState`][jgd.LoopState] that continues the run.
      key: the PRNG key that continues the run.
      losses: ``(steps,)``: ``losses[t]`` is the loss of step ``t``'s batch at the params
        before step ``t``'s update.
      grad_norms: ``(steps,)``: that gradient's global norm.
      num_steps: the recorded entries, the step that met ``tol`` or turned non-finite
        included (no update is applied at that step).
      converged: the run stopped on ``tol``.
      diverged: the loss or gradient turned non-finite.
      best_params: the params with the lowest recorded loss (or, with
        ``Eval(monitor=...)``, the best value of that metric; for a rule that reports a
        non-smooth term g, such as ``proximal_gradient`` with a ``jgd.prox`` operator, the
        lowest f + g).
      best_loss: that value.
      aux: the auxiliary output of the last recorded step (``has_aux=True``), or of every
        step with ``record_aux=True``.
      stopped_early: an evaluation's ``patience`` ran out.
      best_step: the number of steps taken to reach ``best_params``.
      model_state: the model state after the last step (with ``model_state=``).
      best_model_state: the model state that goes with ``best_params``.
      evals: metric name → its values at ``eval_steps`` (NaN past the stop).
      eval_steps: the steps at which the evaluations were made.

    Examples:
      >>> r = jgd.minimize(lambda w: jnp.sum(w ** 2), jnp.ones(2), jgd.sgd(0.1), steps=50, tol=1e-3)
      >>> int(r.num_steps), bool(r.converged), r.losses.shape  # stopped on tol, NaN past the stop
      (37, True, (50,))
      >>> bool(jnp.isnan(r.losses[37:]).all())
      True
    """

    params: Any
    state: LoopState
    key: jax.Array
    losses: jax.Array
    grad_norms: jax.Array
    num_steps: jax.Array
    converged: jax.Array
    diverged: jax.Array
    best_params: Any
    best_loss: jax.Array
    aux: Any = None
    stopped_early: Any = None
    best_step: Any = None
    model_state: Any = None
    best_model_state: Any = None
    evals: Any = None
    eval_steps: Any = None


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
    if save_dir is not None or save_every is not None:
        if differentiable:
            raise ValueError("differentiable=True cannot be combined with save_dir/save_every: "
                             "a differentiated run is one program, not a series of saved segments")
        from jgd.checkpoint import minimize_saved

        return minimize_saved(fun, params, opt, steps=steps, save_dir=save_dir, save_every=save_every,
                              key=key, init_state=init_state, evaluate=evaluate, model_state=model_state,
                              has_aux=has_aux, record_aux=record_aux, progress=progress, data=data,
                              batch_size=batch_size, microbatches=microbatches, tol=tol, with_key=with_key)
    run = _setup(fun, params, opt, steps=steps, data=data, batch_size=batch_size,
                 microbatches=microbatches, key=key, tol=tol, has_aux=has_aux,
                 model_state=model_state, with_key=with_key, evaluate=evaluate,
                 record_aux=record_aux, progress=progress, differentiable=differentiable,
                 checkpoint_every=checkpoint_every)
    if run.buffers is not None:
        return _minimize_on_buffers(
            fun, params, *run.buffers, steps=steps, data=data, batch_size=batch_size,
            microbatches=microbatches, key=run.key, tol=tol, has_aux=has_aux,
            model_state=model_state, with_key=with_key, evaluate=evaluate,
            record_aux=record_aux, init_state=init_state, progress=progress,
            differentiable=differentiable, checkpoint_every=checkpoint_every,
        )
    if not differentiable and _linearized(params, run.opt, data, model_state, init_state, run.eval_data):
        raise ValueError(
            "reverse-mode differentiation (jax.grad, jax.vjp) through minimize needs "
            "differentiable=True (and checkpoint_every=k to bound its memory); forward mode "
            "(jax.jvp, jax.jacfwd) works either way"
        )
    if progress:
        _Progress.start(steps)
    try:
        return _loop(run.config, run.opt, params, model_state, init_state, run.key, data, run.eval_data, run.tol)
    finally:
        if progress:
            _Progress.close()


class _Setup(NamedTuple):
    config: Any
    opt: Any
    key: Any
    eval_data: Any
    tol: Any
    buffers: Any  # (inner, layout) for jgd.flat(inner), else None


def _setup(fun, params, opt, *, steps, data, batch_size, microbatches, key, tol, has_aux,
           model_state, with_key, evaluate, record_aux, progress, differentiable=False,
           checkpoint_every=None) -> _Setup:
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
    if tol is not None and not isinstance(tol, jax.core.Tracer):
        tol_ = np.asarray(tol)
        if tol_.shape or not np.isfinite(tol_) or tol_ < 0:
            raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    evaluation = None if evaluate is None else evaluate.static(steps)
    eval_data = None if evaluate is None else evaluate.data
    key = _as_key(key)
    buffers = layout(opt, params)
    if tol is None:
        tol = np.float32(-1.0)
    elif not isinstance(tol, jax.core.Tracer):
        tol = np.asarray(tol, np.float32)
    segment = evaluation.every if evaluation is not None else math.ceil(steps / math.ceil(steps / _SEGMENT))
    if checkpoint_every is not None:
        # a segment is the unit of rematerialisation; evaluations stay on segment ends
        segment = checkpoint_every if evaluation is None else math.gcd(evaluation.every, checkpoint_every)
    config = _Config(fun, steps, segment, batch_size, microbatches, has_aux, model_state is not None,
                     with_key, record_aux, evaluation, progress, differentiable, checkpoint_every is not None)
    # jgd optimizers are pytrees of numbers and stay arguments; an optax closure is static.
    opt = as_hyperparameter(optax.with_extra_args_support(opt))
    return _Setup(config, opt, key, eval_data, tol, buffers)


def initial_state(fun, params, opt, *, model_state=None, key=None, data=None, evaluate=None, steps=1,
                  **kwargs) -> LoopState:
    """The [`jgd.LoopState`][jgd.LoopState] that ``minimize`` starts a fresh run from (for continuing
    many runs with ``init_state``, as sweeps saved in segments do)."""
    run = _setup(fun, params, opt, steps=steps, data=data, key=key, model_state=model_state,
                 evaluate=evaluate, **{**dict(batch_size=None, microbatches=1, tol=None, has_aux=False,
                                              with_key=False, record_aux=False, progress=False), **kwargs})
    if run.buffers is not None:
        raise ValueError("initial_state does not take a jgd.flat optimizer")
    return _start(run.config, run.opt, params, model_state, run.key, data, run.eval_data)


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


def _minimize_on_buffers(fun, params, inner, groups, *, init_state, evaluate, **kwargs):
    """``minimize`` with ``jgd.flat(inner)``: the params stay ``jgd.flat`` buffers for the
    whole loop, so the update and ``apply_updates`` run once per buffer, not per leaf."""
    if isinstance(init_state, LoopState) and isinstance(init_state.opt_state, FlatState):
        init_state = init_state._replace(opt_state=init_state.opt_state.inner)
    elif isinstance(init_state, FlatState):
        init_state = init_state.inner
    if evaluate is not None:
        evaluate = Eval(_OnBuffers(evaluate.fun, params, groups), evaluate.data, evaluate.every,
                        evaluate.monitor, evaluate.mode, evaluate.patience)
    r = minimize(_OnBuffers(fun, params, groups), join(params, groups), inner,
                 init_state=init_state, evaluate=evaluate, **kwargs)
    state = r.state._replace(opt_state=FlatState(inner=r.state.opt_state, layout=Static(groups)))
    return r._replace(params=split(r.params, params, groups), state=state,
                      best_params=split(r.best_params, params, groups))


class _Config(NamedTuple):
    fun: Callable
    steps: int
    segment: int
    batch_size: int | None
    microbatches: int
    has_aux: bool
    has_model_state: bool
    with_key: bool
    record_aux: bool
    evaluation: EvalConfig | None
    progress: bool
    differentiable: bool = False
    rematerialise: bool = False


class _Progress:
    """The tqdm bar of the run in flight, fed by ``jax.debug.callback``."""

    bar = None

    @classmethod
    def start(cls, total):
        from tqdm.auto import tqdm

        cls.bar = tqdm(total=total, desc="minimize")

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


def _call(config, params, model_state, batch, key):
    """``fun`` in one form: ``(loss, (new_model_state, aux))``."""
    args = (params,) + ((model_state,) if config.has_model_state else ())
    args += (() if batch is None else (batch,)) + ((key,) if config.with_key else ())
    out = config.fun(*args)
    if config.has_model_state and config.has_aux:
        return out[0], out[1]
    if config.has_model_state:
        return out[0], (out[1], None)
    if config.has_aux:
        return out[0], (model_state, out[1])
    return out, (model_state, None)


def _value_and_grad(config, params, model_state, batch, key):
    """Loss, new model state, aux and gradient of a batch, averaged over micro-batches
    in a scan (the model state threads through them, each gets its own key)."""
    value_and_grad = jax.value_and_grad(
        lambda p, s, b, k: _call(config, p, s, b, k), has_aux=True)
    m = config.microbatches
    if m == 1:
        (loss, (model_state, aux)), g = value_and_grad(params, model_state, batch, key)
        return loss, model_state, aux, g
    slices = jax.tree.map(lambda x: x.reshape((m, x.shape[0] // m) + x.shape[1:]), batch)
    keys = None if key is None else jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(m))

    def body(carry, micro):
        total_loss, total_g, state = carry
        (loss, (state, aux)), g = value_and_grad(params, state, *micro)
        return (total_loss + loss, jax.tree.map(jnp.add, total_g, g), state), aux

    first = jax.tree.map(lambda x: x[0], slices)
    loss_shape = jax.eval_shape(lambda: _call(config, params, model_state, first,
                                              None if key is None else keys[0])[0])
    zero = (jnp.zeros((), loss_shape.dtype), jax.tree.map(jnp.zeros_like, params), model_state)
    (loss, g, model_state), auxes = jax.lax.scan(body, zero, (slices, keys))
    scale = 1.0 / m
    return (
        loss * jnp.asarray(scale, loss.dtype),
        model_state,
        jax.tree.map(lambda x: x[-1], auxes),
        jax.tree.map(lambda x: x * jnp.asarray(scale, x.dtype), g),
    )


def _value_and_grad_reusing(config, c, batch, key, loss_dtype):
    """`_value_and_grad` at the step's params, except that a line search's stored
    value and gradient at this very point are reused instead of computed again (optax's
    ``value_and_grad_from_state``): on the full batch with no key, model state or aux, the
    point the search accepted is the next step's params and the objective is the same."""
    # what optax's line searches (scale_by_zoom_linesearch, scale_by_backtracking_linesearch,
    # so optax.lbfgs) store in their state at the point they accepted
    value, grad = _reported(c.opt_state, "value"), _reported(c.opt_state, "grad")
    reusable = (config.batch_size is None and config.microbatches == 1 and not config.with_key
                and not config.has_model_state and not config.has_aux)
    if value is None or grad is None or not reusable:
        return _value_and_grad(config, c.params, c.model_state, batch, key)

    def stored(params):
        return jnp.asarray(value).astype(loss_dtype), jax.tree.map(lambda g, p: jnp.asarray(g).astype(p.dtype),
                                                                  grad, params)

    def fresh(params):
        loss, _, _, grads = _value_and_grad(config, params, c.model_state, batch, key)
        return loss, grads

    known = jnp.isfinite(jnp.asarray(value))  # inf before the first search
    loss, grads = jax.lax.cond(known, stored, fresh, c.params)
    return loss, c.model_state, None, grads


def _reported(opt_state, field: str):
    """What the rule reports to the loop in its state's ``field`` (the protocol:
    ``residual``, its own stationarity measure, which ``tol`` tests instead of the
    gradient's norm; ``objective_term``, the non-smooth g at the current params, so the best
    iterate is by f + g; ``value`` and ``grad``, what a line search stored at the point it
    accepted): the one such field's value, or None when there is none, several, or it holds
    None (``jgd.proximal_gradient`` reports residual and objective_term)."""
    found = [v for _, v in optax.tree.get_all_with_path(opt_state, field)]
    return found[0] if len(found) == 1 and found[0] is not None else None


def _select(flag, new, old):
    return jax.tree.map(lambda a, b: jnp.where(flag, a, b), new, old)


def _fill(tree, shape_prefix=()):
    """NaN for floating leaves, 0 for the others, shaped ``shape_prefix + leaf shape``."""
    def leaf(s):
        fill = jnp.nan if jnp.issubdtype(s.dtype, jnp.inexact) else 0
        return jnp.full(shape_prefix + s.shape, fill, s.dtype)

    return jax.tree.map(leaf, tree)


def _initial_state(config, opt, params, model_state, state, best_dtype):
    if isinstance(state, LoopState):
        return state
    if state is None:
        state = opt.init(params)
    worst = (config.evaluation.worst(best_dtype) if config.evaluation and config.evaluation.monitor
             else jnp.asarray(jnp.inf, best_dtype))
    zero = jnp.zeros([], jnp.int32)
    return LoopState(state, zero, Best(params, model_state, worst, zero, zero))


def _shapes(config, params, model_state, data, eval_data, key):
    """Traces ``fun`` (and the evaluation) abstractly, with clear errors for user mistakes:
    the loss dtype, the aux's shapes, the metrics' shapes and the best value's dtype."""
    sample_key, step_key = jax.random.split(key)
    first_batch = _sampling.batch_at(data, sample_key, jnp.zeros([], jnp.int32), config.batch_size)
    micro = None if first_batch is None else jax.tree.map(
        lambda x: x[: x.shape[0] // config.microbatches], first_batch)
    _check_loss(config, params, model_state, micro, step_key)
    out = jax.eval_shape(lambda p, s, b, k: _value_and_grad(config, p, s, b, k),
                         params, model_state, first_batch, step_key if config.with_key else None)
    loss_dtype, aux_shape = out[0].dtype, out[2]
    evaluation, metrics = config.evaluation, None
    if evaluation is not None:
        metrics = evaluation.check(params, model_state, eval_data, config.has_model_state)
    monitored = evaluation is not None and evaluation.monitor is not None
    return loss_dtype, aux_shape, metrics, metrics[evaluation.monitor].dtype if monitored else loss_dtype


@functools.partial(jax.jit, static_argnums=0)
def _start(config, opt, params, model_state, key, data, eval_data):
    """The loop state a fresh run starts from (what ``init_state=None`` makes)."""
    best_dtype = _shapes(config, params, model_state, data, eval_data, key)[3]
    return _initial_state(config, unwrap(opt), params, model_state, None, best_dtype)


@functools.partial(jax.jit, static_argnums=0)
def _loop(config, opt, params, model_state, state, key, data, eval_data, tol):
    # Everything here runs once per compilation, so calling again costs no Python work.
    opt = unwrap(opt)
    steps, segment, evaluation = config.steps, config.segment, config.evaluation
    sample_key, step_key = jax.random.split(key)
    loss_dtype, aux_shape, metrics, best_dtype = _shapes(config, params, model_state, data, eval_data, key)
    monitored = evaluation is not None and evaluation.monitor is not None
    state = _initial_state(config, opt, params, model_state, state, best_dtype)
    tol = jnp.asarray(tol, jnp.float32)
    start = state.step
    end = start + steps
    nan = jnp.asarray(jnp.nan, loss_dtype)

    class Step(NamedTuple):  # the carry of one step
        t: jax.Array  # steps taken, over all calls
        params: Any
        model_state: Any
        opt_state: Any
        best: Best
        converged: jax.Array
        diverged: jax.Array
        aux: Any

    def per_step_inputs(first):
        """The batch indices and keys of steps ``first, …, first + segment − 1``, computed
        for the whole segment at once (vectorised; each depends on its step count alone)."""
        steps_ = first + jnp.arange(segment, dtype=jnp.int32)
        index = None
        if config.batch_size is not None:
            n = jax.tree.leaves(data)[0].shape[0]
            index = jax.vmap(lambda t: _sampling.batch_indices(sample_key, t, n, config.batch_size))(steps_)
        keys = jax.vmap(lambda t: jax.random.fold_in(step_key, t))(steps_) if config.with_key else None
        return index, keys

    def one_step(c, segment_end, index, key):
        active = (c.t < segment_end) & ~c.converged & ~c.diverged
        batch = data if index is None else _sampling.gather(data, index)
        loss, new_model_state, aux, grads = _value_and_grad_reusing(config, c, batch, key, loss_dtype)
        # optax's extra-args convention: line searches evaluate the step's batch at trial points
        value_fn = lambda p: _call(config, p, c.model_state, batch, key)[0]  # noqa: E731
        updates, opt_state = opt.update(grads, c.opt_state, c.params, value=loss, grad=grads, value_fn=value_fn)
        residual = _reported(opt_state, "residual")
        # a proximal rule stops on its prox-gradient residual (the gradient of the smooth
        # part does not vanish at a non-smooth optimum)
        norm = global_norm(grads) if residual is None else residual
        diverged = active & ~jnp.isfinite(loss)
        converged = active & ~diverged & (norm <= tol.astype(norm.dtype))
        best = c.best
        if not monitored:  # the best iterate by training loss
            term = _reported(c.opt_state, "objective_term")  # g at c.params, for a composite f + g
            objective = loss if term is None else loss + term.astype(loss.dtype)
            better = active & (objective < best.value)
            best = _select(better, Best(c.params, c.model_state, objective, c.t, best.waiting), best)
        # No update on the step that stops: the reported params are the ones that met tol.
        advance = active & ~converged & ~diverged
        params = _select(advance, apply_updates(c.params, updates), c.params)
        opt_state = _select(advance, opt_state, c.opt_state)
        new_model_state = _select(advance, new_model_state, c.model_state)
        record = (jnp.where(active, loss, nan), jnp.where(active, norm.astype(loss_dtype), nan))
        if config.record_aux:
            record += (_select(active, aux, _fill(aux_shape)),)
            aux = None
        else:
            aux = _select(active, aux, c.aux)
        return Step(c.t + active.astype(jnp.int32), params, new_model_state, opt_state, best,
                    c.converged | converged, c.diverged | diverged, aux), record

    # Records are written a segment at a time at offset (segment start - start); the
    # buffers have room for a whole segment past the end, cut off on return.
    room = steps + segment
    num_evals = 0 if evaluation is None else steps // evaluation.every
    first_eval = None if evaluation is None else (start // evaluation.every + 1) * evaluation.every

    class Carry(NamedTuple):
        step: Step
        losses: jax.Array
        grad_norms: jax.Array
        aux: Any
        evals: Any
        stopped_early: jax.Array

    def segment_body(c):
        s = c.step
        segment_start = s.t
        segment_end = jnp.minimum(end, (segment_start // segment + 1) * segment)
        s, record = jax.lax.scan(lambda s, xs: one_step(s, segment_end, *xs), s, per_step_inputs(segment_start),
                                 length=segment)
        offset = segment_start - start
        write = lambda buffer, rows: jax.lax.dynamic_update_slice_in_dim(buffer, rows, offset, 0)  # noqa: E731
        losses, grad_norms = write(c.losses, record[0]), write(c.grad_norms, record[1])
        aux = jax.tree.map(write, c.aux, record[2]) if config.record_aux else None
        evals, stopped_early = c.evals, c.stopped_early
        if evaluation is not None:
            due = (s.t == segment_end) & (segment_end % evaluation.every == 0) & ~s.converged & ~s.diverged
            values = jax.lax.cond(
                due,
                lambda: evaluation.metrics(s.params, s.model_state, eval_data, config.has_model_state),
                lambda: {k: jnp.full((), jnp.nan, v.dtype) for k, v in metrics.items()},
            )
            index = (segment_end - first_eval) // evaluation.every
            evals = {k: evals[k].at[index].set(jnp.where(due, values[k], evals[k][index]), mode="drop")
                     for k in evals}
            if monitored:
                value = values[evaluation.monitor]
                better = due & evaluation.improved(value, s.best.value)
                waiting = jnp.where(due, jnp.where(better, 0, s.best.waiting + 1), s.best.waiting)
                best = _select(better, Best(s.params, s.model_state, value, s.t, waiting),
                               s.best._replace(waiting=waiting))
                s = s._replace(best=best)
                if evaluation.patience is not None:
                    stopped_early = stopped_early | (due & (waiting >= evaluation.patience))
        if config.progress:
            jax.debug.callback(_Progress.update, s.t - start, losses[jnp.maximum(s.t - start - 1, 0)])
        return Carry(s, losses, grad_norms, aux, evals, stopped_early)

    def cond(c):
        s = c.step
        return (s.t < end) & ~s.converged & ~s.diverged & ~c.stopped_early

    zero_aux = _fill(aux_shape)
    init = Carry(
        step=Step(start, params, model_state, state.opt_state, state.best,
                  jnp.zeros([], bool), jnp.zeros([], bool), None if config.record_aux else zero_aux),
        losses=jnp.full((room,), nan),
        grad_norms=jnp.full((room,), nan),
        aux=_fill(aux_shape, (room,)) if config.record_aux else None,
        evals=None if evaluation is None else {
            k: jnp.full((num_evals,), jnp.nan, v.dtype) for k, v in metrics.items()},
        stopped_early=jnp.zeros([], bool),
    )
    if config.differentiable:
        # A scan over a fixed number of segments (one more than steps / segment, for a
        # resumed run whose start is not on a segment boundary); a finished or stopped
        # run skips the rest. Each segment may be rematerialised in the backward pass.
        def scan_body(c, _):
            return jax.lax.cond(cond(c), segment_body, lambda c: c, c), None

        if config.rematerialise:
            scan_body = jax.checkpoint(scan_body)
        c, _ = jax.lax.scan(scan_body, init, length=-(-steps // segment) + 1)
    else:
        c = jax.lax.while_loop(cond, segment_body, init)
    s = c.step
    if config.record_aux:
        aux = jax.tree.map(lambda x: x[:steps], c.aux)
    else:
        aux = s.aux if config.has_aux else None
    return Result(
        params=s.params,
        state=LoopState(s.opt_state, s.t, s.best),
        key=key,
        losses=c.losses[:steps],
        grad_norms=c.grad_norms[:steps],
        num_steps=s.t - start,
        converged=s.converged,
        diverged=s.diverged,
        best_params=s.best.params,
        best_loss=s.best.value,
        aux=aux,
        stopped_early=c.stopped_early,
        best_step=s.best.step,
        model_state=s.model_state,
        best_model_state=s.best.model_state,
        evals=c.evals,
        eval_steps=None if evaluation is None else first_eval + evaluation.every * jnp.arange(
            num_evals, dtype=jnp.int32),
    )

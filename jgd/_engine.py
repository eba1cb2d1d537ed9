"""The engine: a segment of steps as one program, and what a run carries and returns.

A run goes in segments of ``config.segment`` steps (a ``lax.scan`` of ``_step.step``),
so per-step records leave the steps as scan outputs and the once-per-segment work —
writing the records, held-out evaluation (``evaluation``), the stopping test — is paid
once per segment, not once per step. ``Engine`` is built inside a trace; the drivers
(``_drivers``) call its pieces in one program or from the host.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jgd import _sampling
from jgd._arguments import _check_loss
from jgd._step import Config, Context, Step, fill, select, step, value_and_grad
from jgd._transform import unwrap
from jgd.evaluation import Best

__all__ = ["LoopState", "Result", "Engine"]


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


class Carry(NamedTuple):
    """The carry of a segment: the step's carry and the records so far."""

    step: Step
    start: jax.Array  # the step count this call started from
    losses: jax.Array
    grad_norms: jax.Array
    aux: Any
    evals: Any
    stopped_early: jax.Array


class Engine:
    """A run's programs, built inside a trace from its arguments: the initial carry, a
    stretch of steps, the end of a segment (records, evaluation, patience), the test
    that goes on and the ``Result``. The drivers compose them (to the end in one
    program, a differentiable scan, segments called from the host)."""

    def __init__(self, config: Config, opt, params, model_state, key, data, eval_data, tol):
        self.config, self.data, self.eval_data, self.key = config, data, eval_data, key
        self.sample_key, self.step_key = jax.random.split(key)
        loss_dtype, aux_shape, self.metrics, self.best_dtype = shapes(config, params, model_state, data,
                                                                      eval_data, key)
        evaluation = config.evaluation
        self.monitored = evaluation is not None and evaluation.monitor is not None
        self.context = Context(config, unwrap(opt), jnp.asarray(tol, jnp.float32), loss_dtype, aux_shape,
                               self.monitored)

    def initial(self, params, model_state, state) -> Carry:
        """The carry a call starts from: ``state`` a ``LoopState``, an optimizer state or None."""
        config, ctx = self.config, self.context
        state = initial_state(config, ctx.opt, params, model_state, state, self.best_dtype)
        evaluation, nan = config.evaluation, jnp.asarray(jnp.nan, ctx.loss_dtype)
        # Records are written a segment at a time at offset (segment start - start); the
        # buffers have room for a whole segment past the end, cut off on return.
        room = config.steps + config.segment
        num_evals = 0 if evaluation is None else config.steps // evaluation.every
        return Carry(
            step=Step(state.step, params, model_state, state.opt_state, state.best, jnp.zeros([], bool),
                      jnp.zeros([], bool), None if config.record_aux else fill(ctx.aux_shape)),
            start=state.step,
            losses=jnp.full((room,), nan),
            grad_norms=jnp.full((room,), nan),
            aux=fill(ctx.aux_shape, (room,)) if config.record_aux else None,
            evals=None if evaluation is None else {
                k: jnp.full((num_evals,), jnp.nan, v.dtype) for k, v in self.metrics.items()},
            stopped_early=jnp.zeros([], bool),
        )

    def segment_end(self, c: Carry):
        """Where the segment that starts at ``c.step.t`` ends."""
        segment = self.config.segment
        return jnp.minimum(c.start + self.config.steps, (c.step.t // segment + 1) * segment)

    def _inputs(self, first, length):
        """The batch indices and keys of steps ``first, …, first + length − 1``, computed
        at once (vectorised; each depends on its step count alone)."""
        config = self.config
        steps_ = first + jnp.arange(length, dtype=jnp.int32)
        index = None
        if config.batch_size is not None:
            n = jax.tree.leaves(self.data)[0].shape[0]
            index = jax.vmap(lambda t: _sampling.indices(self.sample_key, t, n, config.batch_size,
                                                         config.data_shards))(steps_)
        keys = jax.vmap(lambda t: jax.random.fold_in(self.step_key, t))(steps_) if config.with_key else None
        return index, keys

    def advance(self, c: Carry, first, length: int, segment_end, unroll: int | bool = 1) -> Carry:
        """Steps ``first, …, first + length − 1`` (those before ``segment_end`` and the
        stop), their records written at their offsets. ``unroll=True`` writes them as
        straight-line code (no while loop: XLA:CPU runs convolutions slowly inside one)."""
        def body(s, inputs):
            index, key = inputs
            batch = self.data if index is None else _sampling.take(self.data, index, self.config.data_shards,
                                                                   self.config.data_sharding)
            return step(self.context, s, segment_end, batch, key)

        inputs = self._inputs(first, length)
        if unroll is True:  # a Python loop: a scan of length 1 would still be a while loop
            s, records = c.step, []
            for i in range(length):
                s, row = body(s, jax.tree.map(lambda x: x[i], inputs))
                records.append(row)
            record = jax.tree.map(lambda *rows: jnp.stack(rows), *records)
        else:
            s, record = jax.lax.scan(body, c.step, inputs, length=length, unroll=unroll)
        offset = first - c.start
        write = lambda buffer, rows: jax.lax.dynamic_update_slice_in_dim(buffer, rows, offset, 0)  # noqa: E731
        aux = jax.tree.map(write, c.aux, record[2]) if self.config.record_aux else None
        return c._replace(step=s, losses=write(c.losses, record[0]), grad_norms=write(c.grad_norms, record[1]),
                          aux=aux)

    def conclude(self, c: Carry, segment_end) -> Carry:
        """The end of a segment: the evaluation when one is due there, the best iterate by
        the monitored metric and the patience."""
        evaluation, config = self.config.evaluation, self.config
        if evaluation is None:
            return c
        s = c.step
        first_eval = (c.start // evaluation.every + 1) * evaluation.every
        due = (s.t == segment_end) & (segment_end % evaluation.every == 0) & ~s.converged & ~s.diverged
        values = jax.lax.cond(
            due,
            lambda: evaluation.metrics(s.params, s.model_state, self.eval_data, config.has_model_state),
            lambda: {k: jnp.full((), jnp.nan, v.dtype) for k, v in self.metrics.items()},
        )
        index = (segment_end - first_eval) // evaluation.every
        evals = {k: c.evals[k].at[index].set(jnp.where(due, values[k], c.evals[k][index]), mode="drop")
                 for k in c.evals}
        stopped_early = c.stopped_early
        if self.monitored:
            value = values[evaluation.monitor]
            better = due & evaluation.improved(value, s.best.value)
            waiting = jnp.where(due, jnp.where(better, 0, s.best.waiting + 1), s.best.waiting)
            best = select(better, Best(s.params, s.model_state, value, s.t, waiting),
                          s.best._replace(waiting=waiting))
            s = s._replace(best=best)
            if evaluation.patience is not None:
                stopped_early = stopped_early | (due & (waiting >= evaluation.patience))
        return c._replace(step=s, evals=evals, stopped_early=stopped_early)

    def segment(self, c: Carry) -> Carry:
        """One segment: its steps as a scan, then its end."""
        segment_end = self.segment_end(c)
        return self.conclude(self.advance(c, c.step.t, self.config.segment, segment_end), segment_end)

    def running(self, c: Carry):
        s = c.step
        return (s.t < c.start + self.config.steps) & ~s.converged & ~s.diverged & ~c.stopped_early

    def result(self, c: Carry) -> Result:
        config, evaluation, s = self.config, self.config.evaluation, c.step
        steps = config.steps
        if config.record_aux:
            aux = jax.tree.map(lambda x: x[:steps], c.aux)
        else:
            aux = s.aux if config.has_aux else None
        eval_steps = None
        if evaluation is not None:
            first_eval = (c.start // evaluation.every + 1) * evaluation.every
            eval_steps = first_eval + evaluation.every * jnp.arange(steps // evaluation.every, dtype=jnp.int32)
        return Result(
            params=s.params, state=LoopState(s.opt_state, s.t, s.best), key=self.key,
            losses=c.losses[:steps], grad_norms=c.grad_norms[:steps], num_steps=s.t - c.start,
            converged=s.converged, diverged=s.diverged, best_params=s.best.params, best_loss=s.best.value,
            aux=aux, stopped_early=c.stopped_early, best_step=s.best.step, model_state=s.model_state,
            best_model_state=s.best.model_state, evals=c.evals, eval_steps=eval_steps,
        )


def initial_state(config, opt, params, model_state, state, best_dtype) -> LoopState:
    """``state`` as a ``LoopState``: a fresh one (from ``opt.init``) when it is None, one
    around it when it is an optimizer state."""
    if isinstance(state, LoopState):
        return state
    if state is None:
        state = opt.init(params)
    worst = (config.evaluation.worst(best_dtype) if config.evaluation and config.evaluation.monitor
             else jnp.asarray(jnp.inf, best_dtype))
    zero = jnp.zeros([], jnp.int32)
    return LoopState(state, zero, Best(params, model_state, worst, zero, zero))


def shapes(config, params, model_state, data, eval_data, key):
    """Traces ``fun`` (and the evaluation) abstractly, with clear errors for user mistakes:
    the loss dtype, the aux's shapes, the metrics' shapes and the best value's dtype."""
    sample_key, step_key = jax.random.split(key)
    first_batch = _sampling.batch_at(data, sample_key, jnp.zeros([], jnp.int32), config.batch_size,
                                     config.data_shards, config.data_sharding)
    micro = None if first_batch is None else jax.tree.map(
        lambda x: x[: x.shape[0] // config.microbatches], first_batch)
    _check_loss(config, params, model_state, micro, step_key)
    out = jax.eval_shape(lambda p, s, b, k: value_and_grad(config, p, s, b, k),
                         params, model_state, first_batch, step_key if config.with_key else None)
    loss_dtype, aux_shape = out[0].dtype, out[2]
    evaluation, metrics = config.evaluation, None
    if evaluation is not None:
        metrics = evaluation.check(params, model_state, eval_data, config.has_model_state)
    monitored = evaluation is not None and evaluation.monitor is not None
    return loss_dtype, aux_shape, metrics, metrics[evaluation.monitor].dtype if monitored else loss_dtype

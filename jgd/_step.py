"""One step of one run: the batch's loss and gradient (averaged over micro-batches), the
update, the record and the stopping test, with what a rule reports to the loop.

``fun`` is called in one form, ``(loss, (new_model_state, aux))``, whatever the user's
form (``Config`` says which); a step that stops the run (``tol`` met, a non-finite loss)
applies no update, so the reported params are the ones that met ``tol``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jgd._transform import global_norm
from jgd.evaluation import Best, EvalConfig
from jgd.wrappers import apply_updates


class Config(NamedTuple):
    """The static configuration of a run: what its compiled programs are specialised on."""

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
    data_shards: int | None = None  # sample each block of data's leading axis on its own
    data_sharding: Any = None  # the NamedSharding of data's leading axis, when it is sharded


class Step(NamedTuple):
    """The carry of one step."""

    t: jax.Array  # steps taken, over all calls
    params: Any
    model_state: Any
    opt_state: Any
    best: Best
    converged: jax.Array
    diverged: jax.Array
    aux: Any


class Context(NamedTuple):
    """What every step of a run shares (traced once per program)."""

    config: Config
    opt: Any
    tol: jax.Array
    loss_dtype: Any
    aux_shape: Any
    monitored: bool


def call(config, params, model_state, batch, key):
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


def value_and_grad(config, params, model_state, batch, key):
    """Loss, new model state, aux and gradient of a batch, averaged over micro-batches
    in a scan (the model state threads through them, each gets its own key)."""
    value_and_grad = jax.value_and_grad(
        lambda p, s, b, k: call(config, p, s, b, k), has_aux=True)
    m = config.microbatches
    if m == 1:
        (loss, (model_state, aux)), g = value_and_grad(params, model_state, batch, key)
        return loss, model_state, aux, g
    slices = jax.tree.map(lambda x: _micro_slices(x, m, config.data_shards), batch)
    keys = None if key is None else jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(m))

    def body(carry, micro):
        total_loss, total_g, state = carry
        (loss, (state, aux)), g = value_and_grad(params, state, *micro)
        return (total_loss + loss, jax.tree.map(jnp.add, total_g, g), state), aux

    first = jax.tree.map(lambda x: x[0], slices)
    loss_shape = jax.eval_shape(lambda: call(config, params, model_state, first,
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


def _micro_slices(x, m: int, shards: int | None):
    """``x``'s rows as ``m`` micro-batches; with ``shards``, each micro-batch takes an equal
    share of every shard's rows (the batch holds them in shard order), so each stays
    data-parallel."""
    if shards is None:
        return x.reshape((m, x.shape[0] // m) + x.shape[1:])
    per_shard = x.reshape((shards, m, x.shape[0] // (shards * m)) + x.shape[1:])
    return jnp.swapaxes(per_shard, 0, 1).reshape((m, x.shape[0] // m) + x.shape[1:])


def value_and_grad_reusing(config, c, batch, key, loss_dtype):
    """`value_and_grad` at the step's params, except that a line search's stored
    value and gradient at this very point are reused instead of computed again (optax's
    ``value_and_grad_from_state``): on the full batch with no key, model state or aux, the
    point the search accepted is the next step's params and the objective is the same."""
    # what optax's line searches (scale_by_zoom_linesearch, scale_by_backtracking_linesearch,
    # so optax.lbfgs) store in their state at the point they accepted
    value, grad = reported(c.opt_state, "value"), reported(c.opt_state, "grad")
    reusable = (config.batch_size is None and config.microbatches == 1 and not config.with_key
                and not config.has_model_state and not config.has_aux)
    if value is None or grad is None or not reusable:
        return value_and_grad(config, c.params, c.model_state, batch, key)

    def stored(params):
        return jnp.asarray(value).astype(loss_dtype), jax.tree.map(lambda g, p: jnp.asarray(g).astype(p.dtype),
                                                                  grad, params)

    def fresh(params):
        loss, _, _, grads = value_and_grad(config, params, c.model_state, batch, key)
        return loss, grads

    known = jnp.isfinite(jnp.asarray(value))  # inf before the first search
    loss, grads = jax.lax.cond(known, stored, fresh, c.params)
    return loss, c.model_state, None, grads


def reported(opt_state, field: str):
    """What the rule reports to the loop in its state's ``field`` (the protocol:
    ``residual``, its own stationarity measure, which ``tol`` tests instead of the
    gradient's norm; ``objective_term``, the non-smooth g at the current params, so the best
    iterate is by f + g; ``value`` and ``grad``, what a line search stored at the point it
    accepted): the one such field's value, or None when there is none, several, or it holds
    None (``jgd.proximal_gradient`` reports residual and objective_term)."""
    found = [v for _, v in optax.tree.get_all_with_path(opt_state, field)]
    return found[0] if len(found) == 1 and found[0] is not None else None


def select(flag, new, old):
    return jax.tree.map(lambda a, b: jnp.where(flag, a, b), new, old)


def fill(tree, shape_prefix=()):
    """NaN for floating leaves, 0 for the others, shaped ``shape_prefix + leaf shape``."""
    def leaf(s):
        fill = jnp.nan if jnp.issubdtype(s.dtype, jnp.inexact) else 0
        return jnp.full(shape_prefix + s.shape, fill, s.dtype)

    return jax.tree.map(leaf, tree)


def step(ctx: Context, c: Step, segment_end, batch, key):
    """Step ``c.t`` of a run, inactive (nothing changes, NaN records) once the run has
    stopped or reached ``segment_end``: ``(the next Step, (loss, norm[, aux]))``."""
    config, opt, loss_dtype = ctx.config, ctx.opt, ctx.loss_dtype
    active = (c.t < segment_end) & ~c.converged & ~c.diverged
    loss, new_model_state, aux, grads = value_and_grad_reusing(config, c, batch, key, loss_dtype)
    # optax's extra-args convention: line searches evaluate the step's batch at trial points
    value_fn = lambda p: call(config, p, c.model_state, batch, key)[0]  # noqa: E731
    updates, opt_state = opt.update(grads, c.opt_state, c.params, value=loss, grad=grads, value_fn=value_fn)
    residual = reported(opt_state, "residual")
    # a proximal rule stops on its prox-gradient residual (the gradient of the smooth
    # part does not vanish at a non-smooth optimum)
    norm = global_norm(grads) if residual is None else residual
    diverged = active & ~jnp.isfinite(loss)
    converged = active & ~diverged & (norm <= ctx.tol.astype(norm.dtype))
    best = c.best
    if not ctx.monitored:  # the best iterate by training loss
        term = reported(c.opt_state, "objective_term")  # g at c.params, for a composite f + g
        objective = loss if term is None else loss + term.astype(loss.dtype)
        better = active & (objective < best.value)
        best = select(better, Best(c.params, c.model_state, objective, c.t, best.waiting), best)
    # No update on the step that stops: the reported params are the ones that met tol.
    advance = active & ~converged & ~diverged
    params = select(advance, apply_updates(c.params, updates), c.params)
    opt_state = select(advance, opt_state, c.opt_state)
    new_model_state = select(advance, new_model_state, c.model_state)
    nan = jnp.asarray(jnp.nan, loss_dtype)
    record: tuple = (jnp.where(active, loss, nan), jnp.where(active, norm.astype(loss_dtype), nan))
    if config.record_aux:
        record += (select(active, aux, fill(ctx.aux_shape)),)
        aux = None
    else:
        aux = select(active, aux, c.aux)
    return Step(c.t + active.astype(jnp.int32), params, new_model_state, opt_state, best,
                c.converged | converged, c.diverged | diverged, aux), record

"""``jgd.minimize``: the whole descent loop as one compiled program."""

from __future__ import annotations

import functools
import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jgd._transform import Static, as_hyperparameter, global_norm, unwrap
from jgd.wrappers import FlatState, apply_updates, as_buffers, join_buffers, split_buffers

__all__ = ["minimize", "Result", "LoopState"]


class LoopState(NamedTuple):
    """What a run needs to continue exactly: the optimizer state and where the
    mini-batch sampler is inside the current epoch."""

    opt_state: Any
    permutation: jax.Array  # the current epoch's order of examples (empty: full batch)
    position: jax.Array  # batches of this epoch already used


class Result(NamedTuple):
    """The outcome of :func:`minimize` (a pytree; it pickles and comes out of ``vmap``).

    ``losses[t]`` is the loss of step ``t``'s batch at the params before step ``t``'s
    update and ``grad_norms[t]`` its gradient's global norm; entries past the stop are NaN.
    ``num_steps`` counts the recorded entries, the step that met ``tol`` or turned
    non-finite included (no update is applied at that step). ``best_params`` are the
    params with the lowest recorded loss, ``best_loss`` that loss. ``state`` and ``key``
    continue the run: ``minimize(fun, r.params, opt, init_state=r.state, key=r.key, ...)``.
    ``aux`` is the auxiliary output of the last recorded step (``has_aux=True``).
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


def _leading_size(name, data):
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError(f"{name} must hold at least one array, got {data!r}")
    sizes = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(data)[0]:
        shape = jnp.shape(leaf)
        if not shape:
            raise ValueError(
                f"{name} leaves need a leading example axis; {jax.tree_util.keystr(path)} is a scalar"
            )
        sizes[jax.tree_util.keystr(path) or "data"] = shape[0]
    if len(set(sizes.values())) > 1:
        raise ValueError(f"{name} leaves must share their leading size, got {sizes}")
    return next(iter(sizes.values()))


def _check_int(name, value, lower):
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < lower:
        raise ValueError(f"{name} must be >= {lower}, got {value!r}")
    return int(value)


def _check_params(params):
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError(f"params must hold at least one array, got {params!r}")
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        try:
            dtype = jnp.result_type(leaf)
        except TypeError:
            raise TypeError(f"params{jax.tree_util.keystr(path)} must be an array, got {leaf!r}") from None
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"params{jax.tree_util.keystr(path)} must be floating to be differentiated, "
                f"got dtype {dtype}; cast it, e.g. params.astype(jnp.float32)"
            )


def _check_loss(fun, params, batch, has_aux):
    """Traces ``fun`` abstractly once to give user mistakes a clear error."""
    spec = lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))  # noqa: E731
    args = (params,) if batch is None else (params, batch)
    out = jax.eval_shape(fun, *jax.tree.map(spec, args))
    if has_aux:
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise ValueError(
                "has_aux=True but fun does not return a (loss, aux) pair; "
                f"it returned {out!r}"
            )
        out = out[0]
    elif isinstance(out, (tuple, list)):
        raise ValueError(
            f"fun returned a {type(out).__name__} of {len(out)}; pass has_aux=True if it "
            "returns (loss, aux)"
        )
    if not hasattr(out, "shape") or out.shape != () or not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(f"fun must return a scalar floating loss, got {out!r}")


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
    init_state=None,
    progress: bool = False,
) -> Result:
    """Minimizes ``fun`` with ``opt`` in one compiled ``lax.while_loop``.

    Args:
      fun: ``fun(params)`` or, with ``data``, ``fun(params, batch)`` returning a scalar
        loss (or ``(loss, aux)`` with ``has_aux=True``). A batch keeps the leading axis,
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
        are drawn on device from ``key``: a fresh permutation each epoch, cut into
        ``n // b`` batches, so within an epoch every example is used at most once; when
        ``n % b != 0`` the last ``n % b`` examples of each permutation are left out of
        that epoch (each is equally likely to be left out).
      microbatches: splits each batch into this many equal slices whose gradients are
        averaged in a ``lax.scan`` (the same gradient as the whole batch for a mean
        loss, with less memory). Must divide the batch size.
      key: a PRNG key for the sampler (required with ``batch_size``).
      tol: stop when the gradient's global norm is ``<= tol`` (``converged=True``).
      has_aux: ``fun`` returns ``(loss, aux)``.
      init_state: continue a run from ``result.state`` (or start from an optimizer
        state made by ``opt.init``).
      progress: show a tqdm progress bar fed from the device (at most ~20 updates).

    The loop also stops when the loss turns non-finite (``diverged=True``, no exception).

    Example::

      >>> r = jgd.minimize(lambda w: jnp.sum((w - 3.0) ** 2), jnp.zeros(2), jgd.sgd(0.1), steps=100)
      >>> r.params
      Array([3., 3.], dtype=float32)
    """
    if not callable(fun):
        raise TypeError(f"fun must be callable, got {fun!r}")
    if not (hasattr(opt, "init") and hasattr(opt, "update")):
        raise TypeError(f"opt must be an optax GradientTransformation, got {opt!r}")
    steps = _check_int("steps", steps, 1)
    microbatches = _check_int("microbatches", microbatches, 1)
    if not isinstance(has_aux, bool):
        raise TypeError(f"has_aux must be a bool, got {has_aux!r}")
    _check_params(params)
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
    if key is None:
        key = jax.random.key(0)
    buffers = as_buffers(opt, params)
    if buffers is not None:
        return _minimize_on_buffers(
            fun, params, *buffers, steps=steps, data=data, batch_size=batch_size,
            microbatches=microbatches, key=key, tol=tol, has_aux=has_aux,
            init_state=init_state, progress=progress,
        )
    if tol is None:
        tol = np.float32(-1.0)
    elif not isinstance(tol, jax.core.Tracer):
        tol = np.asarray(tol, np.float32)
    config = _Config(fun, steps, batch_size, microbatches, has_aux, progress)
    # jgd optimizers are pytrees of numbers and stay arguments; an optax closure is static.
    opt = as_hyperparameter(optax.with_extra_args_support(opt))
    if progress:
        _Progress.start(steps)
    try:
        return _loop(config, opt, params, init_state, key, data, tol)
    finally:
        if progress:
            _Progress.close()


class _OnBuffers:
    """``fun`` of the params' tree, called with the params as ``jgd.flat`` buffers.
    Hashable by value, so it is a stable part of the compilation cache key."""

    def __init__(self, fun, like, layout):
        self.fun, self.layout = fun, layout
        self.like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), like)

    def _key(self):
        return (self.fun, jax.tree.structure(self.like), tuple(jax.tree.leaves(self.like)), self.layout)

    def __eq__(self, other):
        return isinstance(other, _OnBuffers) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __call__(self, buffers, *batch):
        return self.fun(split_buffers(buffers, self.like, self.layout), *batch)


def _minimize_on_buffers(fun, params, inner, layout, *, init_state, **kwargs):
    """``minimize`` with ``jgd.flat(inner)``: the params stay ``jgd.flat`` buffers for the
    whole loop, so the update and ``apply_updates`` run once per buffer, not per leaf."""
    if isinstance(init_state, LoopState) and isinstance(init_state.opt_state, FlatState):
        init_state = init_state._replace(opt_state=init_state.opt_state.inner)
    elif isinstance(init_state, FlatState):
        init_state = init_state.inner
    r = minimize(_OnBuffers(fun, params, layout), join_buffers(params, layout), inner,
                 init_state=init_state, **kwargs)
    state = r.state._replace(opt_state=FlatState(inner=r.state.opt_state, layout=Static(layout)))
    return r._replace(params=split_buffers(r.params, params, layout), state=state,
                      best_params=split_buffers(r.best_params, params, layout))


class _Config(NamedTuple):
    fun: Callable
    steps: int
    batch_size: int | None
    microbatches: int
    has_aux: bool
    progress: bool


class _Progress:
    """The tqdm bar of the run in flight, fed by ``jax.debug.callback``."""

    bar = None

    @classmethod
    def start(cls, total):
        from tqdm.auto import tqdm

        cls.bar = tqdm(total=total, desc="minimize")

    @classmethod
    def update(cls, step, loss):
        bar = cls.bar
        if bar is not None:
            step = int(np.max(step))
            bar.update(max(0, step - bar.n))
            bar.set_postfix(loss=float(np.min(loss)))

    @classmethod
    def close(cls):
        if cls.bar is not None:
            cls.bar.close()
        cls.bar = None


def _value_and_grad(config, params, batch):
    """Loss, aux and gradient of a batch, averaged over micro-batches in a scan."""
    fun = config.fun
    if batch is None:
        f = (lambda p: fun(p)) if config.has_aux else (lambda p: (fun(p), None))
        (loss, aux), g = jax.value_and_grad(f, has_aux=True)(params)
        return loss, aux, g
    f = (lambda p, b: fun(p, b)) if config.has_aux else (lambda p, b: (fun(p, b), None))
    value_and_grad = jax.value_and_grad(f, has_aux=True)
    m = config.microbatches
    if m == 1:
        (loss, aux), g = value_and_grad(params, batch)
        return loss, aux, g
    slices = jax.tree.map(lambda x: x.reshape((m, x.shape[0] // m) + x.shape[1:]), batch)

    def body(total, micro):
        (loss, aux), g = value_and_grad(params, micro)
        total_loss, total_g = total
        return (total_loss + loss, jax.tree.map(jnp.add, total_g, g)), aux

    zero = (jnp.zeros((), jnp.result_type(jax.eval_shape(f, params, jax.tree.map(lambda x: x[0], slices))[0])),
            jax.tree.map(jnp.zeros_like, params))
    (loss, g), auxes = jax.lax.scan(body, zero, slices)
    scale = 1.0 / m
    return (
        loss * jnp.asarray(scale, loss.dtype),
        jax.tree.map(lambda x: x[-1], auxes),
        jax.tree.map(lambda x: x * jnp.asarray(scale, x.dtype), g),
    )


def _next_batch(config, data, key, permutation, position):
    if data is None:
        return None, key, permutation, position
    if config.batch_size is None:
        return data, key, permutation, position
    n = permutation.shape[0]
    per_epoch = n // config.batch_size

    def new_epoch(key):
        key, sub = jax.random.split(key)
        return key, jax.random.permutation(sub, n).astype(jnp.int32)

    key, permutation = jax.lax.cond(
        position == 0, new_epoch, lambda k: (k, permutation), key
    )
    index = jax.lax.dynamic_slice_in_dim(permutation, position * config.batch_size, config.batch_size)
    batch = jax.tree.map(lambda x: jnp.take(x, index, axis=0), data)
    return batch, key, permutation, (position + 1) % per_epoch


def _initial_state(config, opt, params, data, state):
    if state is None:
        state = opt.init(params)
    if isinstance(state, LoopState):
        return state
    epoch = 0 if config.batch_size is None else jax.tree.leaves(data)[0].shape[0]
    return LoopState(state, jnp.arange(epoch, dtype=jnp.int32), jnp.zeros([], jnp.int32))


@functools.partial(jax.jit, static_argnums=0)
def _loop(config, opt, params, state, key, data, tol):
    # Everything here runs once per compilation, so calling again costs no Python work.
    opt = unwrap(opt)
    steps = config.steps
    report_every = max(1, steps // 20)
    if data is not None:
        full = jax.tree.leaves(data)[0].shape[0] if config.batch_size is None else config.batch_size
        sample = jax.tree.map(lambda x: x[: full // config.microbatches], data)
    else:
        sample = None
    _check_loss(config.fun, params, sample, config.has_aux)
    state = _initial_state(config, opt, params, data, state)
    tol = jnp.asarray(tol, jnp.float32)
    # One abstract evaluation fixes the dtypes of the loss and the aux carried by the loop.
    batch0, *_ = _next_batch(config, data, key, state.permutation, state.position)
    loss_shape, aux_shape, _ = jax.eval_shape(lambda p, b: _value_and_grad(config, p, b), params, batch0)
    loss_dtype = loss_shape.dtype
    nan = jnp.asarray(jnp.nan, loss_dtype)

    class Carry(NamedTuple):
        t: jax.Array
        params: Any
        state: LoopState
        key: jax.Array
        losses: jax.Array
        grad_norms: jax.Array
        best_params: Any
        best_loss: jax.Array
        converged: jax.Array
        diverged: jax.Array
        aux: Any

    def cond(c):
        return (c.t < steps) & ~c.converged & ~c.diverged

    def body(c):
        batch, key, permutation, position = _next_batch(
            config, data, c.key, c.state.permutation, c.state.position
        )
        loss, aux, grads = _value_and_grad(config, c.params, batch)
        norm = global_norm(grads)
        diverged = ~jnp.isfinite(loss)
        converged = ~diverged & (norm <= tol.astype(norm.dtype))
        better = loss < c.best_loss
        best_params = jax.tree.map(lambda b, p: jnp.where(better, p, b), c.best_params, c.params)
        updates, opt_state = opt.update(grads, c.state.opt_state, c.params, value=loss)
        new_params = apply_updates(c.params, updates)
        stop = converged | diverged
        # No update on the step that stops: the reported params are the ones that met tol.
        params = jax.tree.map(lambda old, new: jnp.where(stop, old, new), c.params, new_params)
        opt_state = jax.tree.map(lambda old, new: jnp.where(stop, old, new), c.state.opt_state, opt_state)
        if config.progress:
            jax.lax.cond(
                ((c.t + 1) % report_every == 0) | (c.t + 1 == steps) | stop,
                lambda: jax.debug.callback(_Progress.update, c.t + 1, loss),
                lambda: None,
            )
        return Carry(
            t=c.t + 1,
            params=params,
            state=LoopState(opt_state, permutation, position),
            key=key,
            losses=c.losses.at[c.t].set(loss),
            grad_norms=c.grad_norms.at[c.t].set(norm.astype(loss_dtype)),
            best_params=best_params,
            best_loss=jnp.where(better, loss, c.best_loss),
            converged=converged,
            diverged=diverged,
            aux=aux,
        )

    init = Carry(
        t=jnp.zeros([], jnp.int32),
        params=params,
        state=state,
        key=key,
        losses=jnp.full((steps,), nan),
        grad_norms=jnp.full((steps,), nan),
        best_params=params,
        best_loss=jnp.asarray(jnp.inf, loss_dtype),
        converged=jnp.zeros([], bool),
        diverged=jnp.zeros([], bool),
        aux=jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shape),
    )
    c = jax.lax.while_loop(cond, body, init)
    return Result(
        params=c.params,
        state=c.state,
        key=c.key,
        losses=c.losses,
        grad_norms=c.grad_norms,
        num_steps=c.t,
        converged=c.converged,
        diverged=c.diverged,
        best_params=c.best_params,
        best_loss=c.best_loss,
        aux=c.aux if config.has_aux else None,
    )

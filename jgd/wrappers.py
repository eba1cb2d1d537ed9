"""Composition and gradient processing: ``chain``, clipping, weight decay, accumulation.

All of them keep the pytree-of-hyperparameters property: the inner optimizers and the
wrappers' own numbers are leaves, so a chain still compiles once for every value.
Plain optax transforms (closures) may be chained too; they become static parts of
the program.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jgd._transform import (
    Static,
    as_scalar,
    check_same_structure,
    check_scalar,
    global_norm,
    transformation,
    wider,
)

__all__ = [
    "apply_updates",
    "chain",
    "clip_by_global_norm",
    "clip",
    "add_decayed_weights",
    "accumulate",
    "AccumulateState",
    "skip_nonfinite",
    "SkipNonfiniteState",
    "flat",
]



def apply_updates(params, updates):
    """``params + updates`` leaf by leaf, as ``optax.apply_updates``: the sum is taken in
    the wider of the two dtypes and cast back to the params' dtype (bf16 params with
    float32 updates round once), and it also works under strict dtype promotion."""

    def leaf(p, u):
        if p is None:
            return None
        p, u = jnp.asarray(p), jnp.asarray(u)
        dtype = wider(p.dtype, u.dtype)
        return (p.astype(dtype) + u.astype(dtype)).astype(p.dtype)

    check_same_structure("updates", updates, "params", params)
    return jax.tree.map(leaf, params, updates, is_leaf=lambda x: x is None)


def _check_transform(name, opt):
    if not (hasattr(opt, "init") and hasattr(opt, "update")):
        raise TypeError(
            f"{name} must be an optimizer (an optax GradientTransformation), got {opt!r}"
        )
    return opt


def chain(*opts) -> optax.GradientTransformationExtraArgs:
    """Applies ``opts`` one after the other, like ``optax.chain``.

    Example::

      >>> opt = jgd.chain(jgd.clip_by_global_norm(1.0), jgd.adam(1e-3))
    """
    for i, opt in enumerate(opts):
        _check_transform(f"chain argument {i}", opt)
    return transformation(_chain_init, _chain_update, transforms=tuple(opts))


def _chain_init(hp, params):
    return tuple(opt.init(params) for opt in hp.transforms)


def _chain_update(hp, updates, state, params=None, **extra):
    new_state = []
    for opt, opt_state in zip(hp.transforms, state):
        opt = optax.with_extra_args_support(opt)
        updates, opt_state = opt.update(updates, opt_state, params, **extra)
        new_state.append(opt_state)
    return updates, tuple(new_state)


def _stateless_init(hp, params):
    del hp, params
    return optax.EmptyState()


def clip_by_global_norm(max_norm) -> optax.GradientTransformationExtraArgs:
    r"""Rescales the updates so their global norm is at most ``max_norm``:
    :math:`u \leftarrow u \cdot \min(1, c / \|u\|)`. Equals ``optax.clip_by_global_norm``.

    Reference: Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent
    neural networks", ICML 2013.
    """
    check_scalar("max_norm", max_norm, lower=0.0)
    return transformation(_stateless_init, _clip_norm_update, max_norm=max_norm)


def _clip_norm_update(hp, updates, state, params=None, **extra):
    del params, extra
    norm = global_norm(updates)
    max_norm = as_scalar(hp.max_norm)
    keep = norm < max_norm
    factor = jnp.where(keep, jnp.ones_like(norm), max_norm / norm)
    return jax.tree.map(lambda u: u * factor.astype(u.dtype), updates), state


def clip(max_abs) -> optax.GradientTransformationExtraArgs:
    """Clips every coordinate to ``[-max_abs, max_abs]``. Equals ``optax.clip``."""
    check_scalar("max_abs", max_abs, lower=0.0)
    return transformation(_stateless_init, _clip_update, max_abs=max_abs)


def _clip_update(hp, updates, state, params=None, **extra):
    del params, extra

    def leaf(u):
        bound = jnp.asarray(hp.max_abs, u.dtype)
        return jnp.clip(u, -bound, bound)

    return jax.tree.map(leaf, updates), state


def add_decayed_weights(rate) -> optax.GradientTransformationExtraArgs:
    r"""Adds ``rate · params`` to the updates (L2 regularisation's gradient):
    :math:`u \leftarrow u + \lambda x`. Equals ``optax.add_decayed_weights``."""
    check_scalar("rate", rate)
    return transformation(_stateless_init, _decay_update, rate=rate)


def _decay_update(hp, updates, state, params=None, **extra):
    del extra
    if params is None:
        raise ValueError("add_decayed_weights needs params: call update(grads, state, params)")
    return (
        jax.tree.map(lambda u, p: u + jnp.asarray(hp.rate, u.dtype) * p.astype(u.dtype), updates, params),
        state,
    )


def _zero_unless(flag, updates):
    """``updates`` where ``flag`` holds, zeros otherwise (a select XLA fuses, no cond)."""
    return jax.tree.map(lambda u: jnp.where(flag, u, jnp.zeros_like(u)), updates)


def _keep_unless(flag, new_state, old_state):
    """``new_state`` where ``flag`` holds, else ``old_state``; every leaf keeps the old
    state's dtype, so an inner rule that promotes (bf16 state, f32 grads) still fits."""
    return jax.tree.map(
        lambda new, old: jnp.where(flag, jnp.asarray(new).astype(jnp.result_type(old)), old),
        new_state,
        old_state,
    )


class AccumulateState(NamedTuple):
    micro_step: jax.Array
    gradient_sum: Any
    inner: Any


def accumulate(opt, every: int) -> optax.GradientTransformationExtraArgs:
    r"""Micro-batch gradient accumulation: sums ``every`` gradients and, on the last
    one, steps ``opt`` with their mean; the other calls return zero updates.

    Averaging ``every`` micro-batch gradients then stepping equals one step on the whole
    batch. There is no ``lax.cond`` over whole trees: the inner update is computed each
    call and selected with ``jnp.where``, which XLA fuses.

    Example::

      >>> opt = jgd.accumulate(jgd.adam(1e-3), every=4)
    """
    _check_transform("opt", opt)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an int >= 1, got {every!r}")
    return transformation(_accumulate_init, _accumulate_update, opt=opt, every=Static(every))


def _accumulate_init(hp, params):
    return AccumulateState(
        micro_step=jnp.zeros([], jnp.int32),
        gradient_sum=jax.tree.map(jnp.zeros_like, params),
        inner=hp.opt.init(params),
    )


def _accumulate_update(hp, updates, state, params=None, **extra):
    opt = optax.with_extra_args_support(hp.opt)
    every = hp.every
    check_same_structure("updates", updates, "the optimizer state's gradient sum", state.gradient_sum)
    gradient_sum = jax.tree.map(lambda s, g: s + g.astype(s.dtype), state.gradient_sum, updates)
    emit = state.micro_step == every - 1
    mean = jax.tree.map(lambda s, g: (s / every).astype(g.dtype), gradient_sum, updates)
    inner_updates, inner_state = opt.update(mean, state.inner, params, **extra)
    updates = _zero_unless(emit, inner_updates)
    inner_state = _keep_unless(emit, inner_state, state.inner)
    gradient_sum = jax.tree.map(
        lambda s: jnp.where(emit, jnp.zeros_like(s), s), gradient_sum
    )
    return updates, AccumulateState(
        micro_step=jnp.where(emit, 0, state.micro_step + 1).astype(jnp.int32),
        gradient_sum=gradient_sum,
        inner=inner_state,
    )


class SkipNonfiniteState(NamedTuple):
    inner: Any
    skipped: jax.Array  # how many updates were skipped so far (int32)


def skip_nonfinite(opt) -> optax.GradientTransformationExtraArgs:
    r"""Skips updates whose gradients (or ``value=``) are not finite.

    When any gradient entry or the loss passed as ``value=`` is NaN or infinite, the
    update is zero and the inner state is kept; ``state.skipped`` counts such steps.
    Otherwise it is ``opt``'s update. Like :func:`accumulate` it selects with
    ``jnp.where`` rather than ``lax.cond`` over whole trees, and every state leaf keeps
    its dtype, so bf16 params with float32 gradients work (the case that broke optax's
    ``apply_if_finite`` and ``MultiSteps``, optax #377 and #1038).

    Example::

      >>> opt = jgd.skip_nonfinite(jgd.adam(1e-3))
      >>> state = opt.init(params)
      >>> updates, state = opt.update(grads, state, params)  # zeros if grads hold a NaN
    """
    _check_transform("opt", opt)
    return transformation(_skip_init, _skip_update, opt=opt)


def _skip_init(hp, params):
    return SkipNonfiniteState(inner=hp.opt.init(params), skipped=jnp.zeros([], jnp.int32))


def _all_finite(tree):
    checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return functools.reduce(jnp.logical_and, checks, jnp.ones([], bool))


def _skip_update(hp, updates, state, params=None, **extra):
    opt = optax.with_extra_args_support(hp.opt)
    finite = _all_finite((updates, extra.get("value")))
    inner_updates, inner_state = opt.update(updates, state.inner, params, **extra)
    return _zero_unless(finite, inner_updates), SkipNonfiniteState(
        inner=_keep_unless(finite, inner_state, state.inner),
        skipped=state.skipped + (~finite).astype(jnp.int32),
    )


def flat(opt, pack_below: int | None = None) -> optax.GradientTransformationExtraArgs:
    r"""The rule ``opt`` over one contiguous buffer per dtype: same numbers, fewer kernels.

    ``init`` lays the params out as ``{buffer name: buffer}`` (one 1-D buffer per dtype
    for the packed leaves) and keeps ``opt``'s state in that layout for good, so the
    state is never raveled again. Each ``update`` joins the gradients (and params, when
    given) into those buffers, runs ``opt`` once per buffer, and cuts the updates back
    into the params' tree. On a tree of hundreds of small leaves the rule runs as one
    fused kernel per dtype instead of one per leaf. ``jgd.minimize`` (and so
    ``jgd.sweep``) keeps the params themselves as buffers for the whole loop.

    Joining costs a copy of the gradients and of the updates, which only pays where the
    per-leaf kernel overhead is larger: leaves with at least ``pack_below`` entries keep
    a buffer of their own (the leaf itself, in its own shape). The default, ``None``,
    packs every leaf on GPU and TPU, and leaves under 16,384 entries on CPU (measured in
    ``benchmarks/update_step.py`` on 2 cores: a 192-leaf tree of 1e5 params updates
    1.45-2.1x faster than optax flat, while packing 1e7 params costs more than it saves).
    ``pack_below=0`` packs every leaf everywhere.

    Elementwise rules give identical numbers; rules with a global reduction (clipping
    by global norm, the subgradient method's length and Polyak steps) sum in another
    order, so they agree to rounding.

    Example::

      >>> opt = jgd.flat(jgd.adam(1e-3))
      >>> state = opt.init({"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)})
      >>> state.inner.mu
      {'float32': Array([0., 0., 0., 0., 0., 0., 0., 0.], dtype=float32)}
    """
    _check_transform("opt", opt)
    if pack_below is not None and (
        isinstance(pack_below, bool) or not isinstance(pack_below, int) or pack_below < 0
    ):
        raise ValueError(f"pack_below must be an int >= 0 or None, got {pack_below!r}")
    return transformation(_flat_init, _flat_update, opt=opt, pack_below=Static(pack_below))


# Per-leaf kernel overhead on CPU (~10 µs) equals the cost of copying ~16k floats twice.
_CPU_PACK_BELOW = 2**14


class FlatState(NamedTuple):
    inner: Any  # ``opt``'s state over ``{buffer name: buffer}``
    layout: Static  # the buffer name of every params leaf, in order


def _groups(params, pack_below=0):
    """The buffer of every leaf of ``params``: its dtype's shared buffer, or its own
    when it has at least ``pack_below`` entries (``pack_below=0``: always shared)."""
    names = []
    for i, x in enumerate(jax.tree.leaves(params)):
        dtype = jnp.result_type(x).name
        own = pack_below and math.prod(jnp.shape(x)) >= pack_below
        names.append(f"{dtype}:{i}" if own else dtype)
    return names


def _own(name):
    return ":" in name


def _join(tree, groups):
    """One 1-D buffer per shared group, holding its leaves in order; a leaf with a group
    of its own is its own buffer, unraveled (so XLA sees exactly the per-leaf program)."""
    pieces = {}
    for name, leaf in zip(groups, jax.tree.leaves(tree)):
        pieces.setdefault(name, []).append(leaf if _own(name) else jnp.ravel(leaf))
    return {
        name: parts[0] if len(parts) == 1 else jnp.concatenate(parts)
        for name, parts in pieces.items()
    }


def _split(buffers, like, groups):
    """The inverse of :func:`_join`: leaves shaped like ``like`` cut from ``buffers``."""
    leaves, treedef = jax.tree.flatten(like)
    shapes = {}
    for name, leaf in zip(groups, leaves):
        if not _own(name):
            shapes.setdefault(name, []).append(tuple(jnp.shape(leaf)))
    pieces = {name: iter(_unpack(tuple(s), buffers[name])) for name, s in shapes.items()}
    out = [buffers[name] if _own(name) else next(pieces[name]) for name in groups]
    return jax.tree.unflatten(treedef, out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _unpack(shapes, buffer):
    """Consecutive slices of ``buffer`` reshaped to ``shapes``. Its gradient is one
    concatenation (XLA would otherwise add up one zero-padded buffer per slice)."""
    out, start = [], 0
    for shape in shapes:
        size = math.prod(shape)
        out.append(jax.lax.slice_in_dim(buffer, start, start + size).reshape(shape))
        start += size
    return out


def _unpack_fwd(shapes, buffer):
    return _unpack(shapes, buffer), None


def _unpack_bwd(shapes, _, cotangents):
    return (jnp.concatenate([jnp.ravel(c) for c in cotangents]),)


_unpack.defvjp(_unpack_fwd, _unpack_bwd)


def _layout(hp, params):
    pack_below = hp.pack_below
    if pack_below is None:
        pack_below = _CPU_PACK_BELOW if jax.default_backend() == "cpu" else 0
    return tuple(_groups(params, pack_below))


def _flat_init(hp, params):
    groups = _layout(hp, params)
    return FlatState(inner=hp.opt.init(_join(params, groups)), layout=Static(groups))


def as_buffers(opt, params):
    """For ``opt = flat(inner)``: ``(inner, layout)``, so a descent loop can keep the
    params as buffers throughout (``join``/``split`` below); ``None`` for any other
    optimizer."""
    update = getattr(opt, "update", None)
    args = getattr(update, "args", ())
    if not (len(args) >= 2 and isinstance(args[0], Static) and args[0].value is _flat_update):
        return None
    hp = args[1]
    return hp.opt, _layout(hp, params)


join_buffers = _join
split_buffers = _split


def _flat_update(hp, updates, state, params=None, **extra):
    opt = optax.with_extra_args_support(hp.opt)
    groups = state.layout.value
    if len(groups) != len(jax.tree.leaves(updates)):
        raise ValueError(
            f"flat: the state was made for {len(groups)} params leaves, the updates have "
            f"{len(jax.tree.leaves(updates))}: {jax.tree.structure(updates)}"
        )
    flat_params = None if params is None else _join(params, groups)
    flat_updates, inner = opt.update(_join(updates, groups), state.inner, flat_params, **extra)
    return _split(flat_updates, updates, groups), FlatState(inner=inner, layout=state.layout)

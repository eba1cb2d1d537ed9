"""``jgd.flat``: a rule over one contiguous buffer per dtype, and the buffer layout the
descent loop keeps params in (``layout``, ``join``, ``split``)."""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jgd._transform import Static, transformation
from jgd.lift import describe as _describe
from jgd.lift import is_elementwise
from jgd.wrappers import _check_transform

__all__ = ["flat", "FlatState", "layout", "join", "split"]


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
    ``pack_below=0`` packs every leaf everywhere. A leaf sharded over several devices
    (a ``NamedSharding`` that is not fully replicated, as seen by ``init``) always keeps
    its own buffer and its sharding, as optax's rules do: packing it would all-gather it
    on every step. ``init`` sees a leaf's sharding when called eagerly, or inside ``jit``
    on an Explicit mesh (the sharding is part of the type); inside ``jit`` on an Auto
    mesh a traced leaf carries none, so call ``init`` outside ``jit`` there.

    Rules whose update is not elementwise per leaf (lamb, lars, fromage, novograd,
    adafactor, sm3, lbfgs, muon, parameter groups and lifted rules not declared
    elementwise) are refused with a ``TypeError`` naming the rule. Elementwise rules give
    identical numbers; rules with a global reduction (clipping
    by global norm, the subgradient method's length and Polyak steps) sum in another
    order, so they agree to rounding.

    Args:
      opt: an elementwise jgd rule (or a chain of them).
      pack_below: leaves with at least this many entries keep their own buffer;
        ``None`` picks per platform, ``0`` packs all.

    Returns:
      The rule over buffers: its ``init``/``update`` take and give the params' tree.

    Examples:
      >>> opt = jgd.flat(jgd.adam(1e-3))
      >>> state = opt.init({"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)})
      >>> state.inner.mu
      {'float32': Array([0., 0., 0., 0., 0., 0., 0., 0.], dtype=float32)}
    """
    _check_transform("opt", opt)
    if not is_elementwise(opt):
        raise TypeError(
            f"jgd.flat needs a rule whose update of each leaf depends on that leaf alone; {_describe(opt)} is "
            "not elementwise (per-leaf norms, factored moments, matrix operations or a line search would be "
            "computed per buffer instead of per leaf, silently changing the rule): use it without jgd.flat"
        )
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


def _sharded(x) -> bool:
    """Whether ``x`` is split over devices (not fully replicated). Packing such a leaf
    with others would make XLA gather it onto every device at every step."""
    try:
        if isinstance(x, jax.core.Tracer):  # explicit sharding shows in the type
            spec = getattr(jax.typeof(x).sharding, "spec", ())
            return any(axis is not None for axis in spec)
        sharding = getattr(x, "sharding", None)
        return sharding is not None and not sharding.is_fully_replicated
    except Exception:  # noqa: BLE001 - no sharding information: treat as unsharded
        return False


def _groups(params, pack_below=0):
    """The buffer of every leaf of ``params``: its dtype's shared buffer, or its own
    when it has at least ``pack_below`` entries (``pack_below=0``: always shared) or is
    sharded over devices (so it keeps its sharding and no step gathers it)."""
    names = []
    for i, x in enumerate(jax.tree.leaves(params)):
        dtype = jnp.result_type(x).name
        own = (pack_below and math.prod(jnp.shape(x)) >= pack_below) or _sharded(x)
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
    """The inverse of `_join`: leaves shaped like ``like`` cut from ``buffers``."""
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


def layout(opt, params):
    """For ``opt = flat(inner)``: ``(inner, layout)``, where ``layout`` names the buffer
    of every params leaf, so a descent loop can keep the params as buffers throughout
    (`join`, `split`); ``None`` for any other optimizer."""
    update = getattr(opt, "update", None)
    args = getattr(update, "args", ())
    if not (len(args) >= 2 and isinstance(args[0], Static) and args[0].value is _flat_update):
        return None
    hp = args[1]
    return hp.opt, _layout(hp, params)


def join(tree, layout):
    """``tree`` (shaped like the params) as ``{buffer name: buffer}`` in ``layout``."""
    return _join(tree, layout)


def split(buffers, like, layout):
    """The inverse of `join`: a tree shaped like ``like`` cut from ``buffers``."""
    return _split(buffers, like, layout)


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

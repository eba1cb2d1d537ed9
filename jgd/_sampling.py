"""The mini-batch sampler: batch ``t`` of a run, computed from ``t`` alone in O(batch).

Epoch ``e = t // (n // b)`` visits the examples in the order of a keyed bijection
``π_e`` of ``[0, n)``; batch ``t`` holds the examples ``π_e(p·b), …, π_e(p·b + b − 1)``
with ``p = t mod (n // b)``. No permutation is ever stored or drawn: ``π_e(i)`` is
evaluated at the ``b`` positions the batch needs, so a step costs O(b) whatever ``n``
is, also under ``vmap`` (where a stored permutation redrawn "when the epoch ends"
becomes a redraw at every step), and the sampler's whole state is the step count.

``π_e`` is a keyed Feistel network on ``[0, 2^k)`` (``2^k`` the smallest power of two
``>= n``; round function murmur3's finalizer of a half xored with a key word), restricted
to ``[0, n)`` by cycle walking (apply the network again while the value is ``>= n``:
``2^k < 2n``, so the walk ends and on average takes under two rounds). A bijection of ``[0, n)`` means every example
at most once per epoch; every example exactly once when ``b`` divides ``n``; the key of
epoch ``e`` is ``fold_in(key, e)``, so each epoch has a fresh order. Feistel networks
with cycle walking are the standard format-preserving permutation (Black & Rogaway,
"Ciphers with Arbitrary Finite Domains", CT-RSA 2002).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_ROUNDS = 4


def _mix(x):
    """murmur3's 32-bit finalizer: every input bit flips each output bit with p ≈ 1/2."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def permute(positions, n: int, key):
    """``π(positions)`` for a keyed bijection ``π`` of ``[0, n)`` (``positions`` int32,
    each in ``[0, n)``). Same key → same bijection."""
    bits = max(1, (n - 1).bit_length())
    high, low = bits // 2, bits - bits // 2
    high_mask, low_mask = jnp.uint32((1 << high) - 1), jnp.uint32((1 << low) - 1)
    words = jax.random.bits(key, (_ROUNDS, 2), jnp.uint32)

    def scramble(x):
        # An unbalanced Feistel network: each half-round xors one part with a keyed
        # hash of the other, a bijection whatever the widths.
        left, right = x >> low, x & low_mask
        for r in range(_ROUNDS):
            right = right ^ (_mix(left ^ words[r, 0]) & low_mask)
            left = left ^ (_mix(right ^ words[r, 1]) & high_mask)
        return (left << low) | right

    def walk(x):
        return jnp.where(x >= n, scramble(x), x)

    x = scramble(positions.astype(jnp.uint32))
    x = jax.lax.while_loop(lambda x: jnp.any(x >= n), walk, x)
    return x.astype(jnp.int32)


def batch_indices(key, step, n: int, batch_size: int):
    """The examples of batch ``step`` (int32, shaped ``(batch_size,)``)."""
    per_epoch = n // batch_size
    epoch, position = jnp.divmod(step, per_epoch)
    offsets = position * batch_size + jnp.arange(batch_size, dtype=jnp.int32)
    return permute(offsets, n, jax.random.fold_in(key, epoch))


def batch_at(data, key, step, batch_size, shards=None, sharding=None):
    """Batch ``step`` of ``data`` (full batch when ``batch_size`` is None)."""
    if batch_size is None:
        return data
    n = jax.tree.leaves(data)[0].shape[0]
    return take(data, indices(key, step, n, batch_size, shards), shards, sharding)


def gather(data, index):
    """The examples ``index`` of every leaf of ``data``."""
    def leaf(x):
        typed = _typed_leading(x)
        if typed is not None:  # examples sharded on an Explicit mesh: say where the batch goes
            return x.at[index].get(out_sharding=jax.sharding.NamedSharding(typed[0].mesh, jax.sharding.PartitionSpec()))
        return jnp.take(x, index, axis=0)

    return jax.tree.map(leaf, data)


def indices(key, step, n: int, batch_size: int, shards: int | None = None):
    """The examples of batch ``step``: ``(batch_size,)`` indices into ``[0, n)``; with
    ``shards = m``, ``(m, batch_size // m)`` indices, row ``s`` into shard ``s``'s own
    ``n // m`` examples (the leading axis cut into ``m`` equal blocks, as a sharding
    over it does), drawn by the same sampler keyed ``fold_in(key, s)``."""
    if shards is None:
        return batch_indices(key, step, n, batch_size)
    return jax.vmap(lambda s: batch_indices(jax.random.fold_in(key, s), step, n // shards, batch_size // shards))(
        jnp.arange(shards, dtype=jnp.int32))


def take(data, index, shards: int | None = None, sharding=None):
    """The batch of ``index`` (from ``indices``). With ``shards``, each block of the leading
    axis gives its own rows — a gather local to each shard, so sharded data stays sharded
    and no example crosses devices — and the batch is the blocks' rows in shard order.
    ``sharding`` (a ``NamedSharding`` of the leading axis over the mesh) pins the blocks
    and the batch to it, so the compiler keeps the gather on each device."""
    if shards is None:
        return gather(data, index)

    # the indices stay replicated (each device computes them all: the sampler's cycle walk
    # would otherwise need a collective per round); the blocks and the rows are pinned
    pin = _pin(sharding)

    def leaf(x):
        blocks = pin(x.reshape((shards, x.shape[0] // shards) + x.shape[1:]))
        rows = pin(jax.vmap(lambda block, i: jnp.take(block, i, axis=0))(blocks, _sharded_like(index, blocks)))
        return rows.reshape((-1,) + x.shape[1:])

    return jax.tree.map(leaf, data)


def _pin(sharding):
    """A function constraining an array's leading axis to ``sharding``'s (identity without one)."""
    if sharding is None:
        return lambda x: x

    def pin(x):
        spec = jax.sharding.PartitionSpec(sharding.spec[0], *([None] * (x.ndim - 1)))
        return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(sharding.mesh, spec))

    return pin


def _typed_leading(x):
    """``(the sharding in x's type, its leading axis' mesh axes)`` when that axis is sharded
    in the type (an Explicit mesh), else None."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    spec = tuple(getattr(sharding, "spec", ()) or ())
    return (sharding, spec[0]) if spec and spec[0] is not None else None


def _sharded_like(index, blocks):
    """``index`` sharded over ``blocks``' leading axis where that sharding is part of the
    type (an Explicit mesh: vmap needs both mapped axes sharded alike)."""
    typed = _typed_leading(blocks)
    if typed is None:
        return index
    spec = jax.sharding.PartitionSpec(typed[1], *([None] * (index.ndim - 1)))
    return jax.sharding.reshard(index, jax.sharding.NamedSharding(typed[0].mesh, spec))

"""Parameter groups, as optax: ``partition`` (``multi_transform``), ``masked``, ``freeze``,
``set_to_zero``, ``selective_transform``.

Each is optax's own wrapper run through :func:`jgd.lift`: inner jgd optimizers stay pytree
leaves (their numbers are traced, one compilation for every value), while labels and masks
are static parts of the program compared by value — an equal label tree, or a
``functools.partial`` of the same function with equal arguments rebuilt per call, is the same
program, not a retrace.

Examples:
    >>> params = {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}
    >>> opt = jgd.partition({"decay": jgd.adamw(1e-3), "plain": jgd.adam(1e-3)},
    ...                     {"w": "decay", "b": "plain"})
    >>> state = opt.init(params)
    >>> len(jax.tree.leaves(opt))  # adamw's 6 numbers and adam's 5
    11
"""

from __future__ import annotations

import optax

from jgd.lift import lift

__all__ = ["partition", "multi_transform", "masked", "freeze", "set_to_zero", "selective_transform"]


def _wrapper(factory, name):
    rule = lift(factory, name=f"jgd.{name}")
    rule.__module__ = __name__
    rule.__name__ = rule.__qualname__ = name
    rule.__doc__ = (
        f"``optax.{name}`` with jgd optimizers as leaves and labels/masks static (compared by value).\n\n"
        f"Same signature and numbers as ``optax.{name}``; see its documentation."
    )
    return rule


partition = _wrapper(optax.partition, "partition")
multi_transform = partition
masked = _wrapper(optax.masked, "masked")
freeze = _wrapper(optax.freeze, "freeze")
set_to_zero = _wrapper(optax.set_to_zero, "set_to_zero")
selective_transform = _wrapper(optax.selective_transform, "selective_transform")

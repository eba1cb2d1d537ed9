"""Parameter groups, as optax: ``partition`` (``multi_transform``), ``masked``, ``freeze``,
``set_to_zero``, ``selective_transform``.

Each is optax's own wrapper run through [`jgd.lift`][jgd.lift]: inner jgd optimizers stay pytree
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

from jgd._docs import arguments_section
from jgd.lift import lift

__all__ = ["partition", "multi_transform", "masked", "freeze", "set_to_zero", "selective_transform"]


_PARAMS = 'params = {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}'
EXAMPLES = {
    "partition": 'opt = jgd.partition({"a": jgd.adam(1e-3), "b": jgd.sgd(0.1)}, {"w": "a", "b": "b"})',
    "masked": 'opt = jgd.masked(jgd.adam(1e-3), {"w": True, "b": False})',
    "freeze": 'opt = jgd.chain(jgd.freeze({"w": False, "b": True}), jgd.sgd(0.1))',
    "set_to_zero": "opt = jgd.set_to_zero()",
    "selective_transform": 'opt = jgd.selective_transform(jgd.adam(1e-3), freeze_mask={"w": False, "b": True})',
}
WHAT = {
    "partition": "Applies a different optimizer to each group of leaves, by label",
    "masked": "Applies `inner` to the leaves where `mask` is True and passes the others through unchanged",
    "freeze": "Zeroes the updates of the leaves where `mask` is True (chain it before a rule)",
    "set_to_zero": "Zero updates for every leaf (a frozen group inside `partition`)",
    "selective_transform": "Applies `optimizer` to the leaves not frozen by `freeze_mask`, zero updates elsewhere",
}


def _wrapper(factory, name):
    rule = lift(factory, name=f"jgd.{name}")
    rule.__module__ = __name__
    rule.__doc__ = (
        f"{WHAT[name]} (`optax.{name}`).\n\n"
        f"Same signature and numbers as `optax.{name}`; inner jgd optimizers are leaves (their numbers "
        "traced), labels and masks static and compared by value.\n\n"
        + arguments_section(factory, factory, f"optax.{name}") + "\n"
        + "Returns:\n    The wrapped rule, a jgd optimizer whose inner rules' numbers are leaves.\n\n"
        f"Examples:\n    >>> {_PARAMS}\n    >>> {EXAMPLES[name]}\n"
        "    >>> updates, state = opt.update(params, opt.init(params), params)\n"
    )
    return rule


partition = _wrapper(optax.partition, "partition")
multi_transform = partition
masked = _wrapper(optax.masked, "masked")
freeze = _wrapper(optax.freeze, "freeze")
set_to_zero = _wrapper(optax.set_to_zero, "set_to_zero")
selective_transform = _wrapper(optax.selective_transform, "selective_transform")

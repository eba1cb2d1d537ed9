"""``jgd.flax.TrainState``: flax's ``TrainState`` with the optimizer as data.

flax's ``train_state.TrainState`` keeps ``tx`` as a static field, so a jitted (or pmapped,
or shard_mapped) train step that takes the state retraces and recompiles for every new
learning rate: the optimizer's numbers are part of the program. Here ``tx`` is a pytree
node: a jgd optimizer's numbers are leaves of the state like the params, so one compiled
step serves every hyperparameter value, and a state can even be ``vmap``-ed over learning
rates. ``create``, ``apply_gradients`` and ``replace`` are flax's; a user's subclass that
adds fields (batch statistics, a dropout key) works as with flax. Needs ``flax`` (the
``jgd[models]`` extra); the core never imports it.

Examples:
    >>> from jgd.flax import TrainState
    >>> state = TrainState.create(apply_fn=None, params={"w": jnp.ones(2)}, tx=jgd.adam(1e-2))
    >>> step = jax.jit(lambda s, g: s.apply_gradients(grads=g))
    >>> state = step(state, {"w": jnp.ones(2)})
    >>> other = step(TrainState.create(apply_fn=None, params={"w": jnp.ones(2)}, tx=jgd.adam(3e-2)),
    ...              {"w": jnp.ones(2)})  # the same compiled step
    >>> step._cache_size()
    1
"""

from __future__ import annotations

from typing import Any

from flax import struct
from flax.training import train_state

from jgd._transform import Optimizer
from jgd.wrappers import chain

__all__ = ["TrainState"]


class TrainState(train_state.TrainState):
    """flax's ``TrainState`` whose ``tx`` is a pytree node (see the module's docstring).

    An optax closure given as ``tx`` is held through ``jgd.chain`` (one link: the same
    numbers), whose static part it becomes; only jgd rules' numbers are traced.

    Attributes:
      step: the number of ``apply_gradients`` calls so far.
      apply_fn: the model's apply function (static, as flax's).
      params: the params.
      tx: the optimizer, a pytree node: its numbers are traced by ``jit``.
      opt_state: ``tx``'s state.

    """

    tx: Any = struct.field(pytree_node=True)

    @classmethod
    def create(cls, *, apply_fn, params, tx, **kwargs):
        """Makes the state as flax's ``TrainState.create``: ``step=0``, ``opt_state =
        tx.init(params)``."""
        if not isinstance(tx, Optimizer):
            tx = chain(tx)
        return super().create(apply_fn=apply_fn, params=params, tx=tx, **kwargs)

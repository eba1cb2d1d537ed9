"""``jgd.nnx.Optimizer``: flax.nnx's ``Optimizer`` with the optimizer as data.

``nnx.Optimizer`` keeps ``tx`` as a static attribute unless its type is registered as nnx
data (jgd registers its optimizers when ``flax.nnx`` is imported before they are built;
otherwise a new learning rate retraces, and an array learning rate is refused). Here ``tx``
is declared ``nnx.data`` whatever the import order: a jgd
optimizer's numbers are part of the optimizer's state, traced by ``nnx.jit``, so one compiled
train step serves every hyperparameter value, also with a fresh model object per run.
``update(model, grads)`` is flax's (same numbers). Needs ``flax`` (the ``jgd[models]`` extra).

Examples:
    >>> from flax import nnx
    >>> import jgd.nnx
    >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> optimizer = jgd.nnx.Optimizer(model, jgd.adam(1e-3), wrt=nnx.Param)
    >>> grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 2))) ** 2))(model)
    >>> optimizer.update(model, grads)["kernel"].shape
    (2, 1)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jgd._transform import Optimizer as _Optimizer
from jgd.wrappers import chain

__all__ = ["Optimizer"]


class Optimizer(nnx.Optimizer):
    """``nnx.Optimizer(model, tx, wrt=...)`` whose ``tx`` is data (see the module's docstring).

    Python-number hyperparameters are held as arrays (nnx data must be arrays), which is how
    ``nnx.jit`` sees them anyway: a traced optimizer computes ``1 - b2`` in float32, as optax's
    ``inject_hyperparams`` does. An optax closure as ``tx`` is held through ``jgd.chain``
    (its numbers stay static).
    """

    tx: _Optimizer = nnx.data()

    def __init__(self, model, tx: optax.GradientTransformation, *, wrt, **kwargs):
        if not isinstance(tx, _Optimizer):
            tx = chain(tx)
        tx = jax.tree.map(lambda x: x if isinstance(x, jax.Array) else jnp.asarray(x), tx)
        super().__init__(model, tx, wrt=wrt, **kwargs)

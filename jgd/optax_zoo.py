"""Every optax optimizer alias as a jgd rule, with optax's signature and numbers.

Each name here is ``jgd.lift(optax.<name>)``: the same arguments, order and defaults as
optax 0.2.8, the numbers optax computes, and the numeric arguments as pytree leaves (one
compilation for every value, ``vmap`` and ``jax.grad`` over them). The aliases jgd
implements itself (``sgd``, ``adagrad``, ``rmsprop``, ``adam``, ``adamw``) live in their
rule families and take optax's full signatures too.

Examples:
    >>> opt = jgd.lion(1e-4, b1=0.95)
    >>> state = opt.init({"w": jnp.zeros(3)})
    >>> jax.tree.leaves(opt)  # b1, b2, learning_rate, weight_decay
    [0.95, 0.99, 0.0001, 0.001]
"""

from __future__ import annotations

import optax

from jgd.lift import lift

# Rules whose update of a leaf depends on that leaf alone (jgd.flat may pack them); the
# others use per-leaf norms, factored moments, a global norm or a line search.
ELEMENTWISE = frozenset({
    "adabelief", "adadelta", "adamax", "adamaxw", "adan", "amsgrad", "lion", "nadam", "nadamw",
    "optimistic_adam", "optimistic_adam_v2", "optimistic_gradient_descent", "radam", "rprop",
    "sign_sgd", "signum", "yogi",
})
# Not elementwise: fromage, lamb, lars, novograd (per-leaf norms), adafactor, sm3 (factored
# moments), lbfgs (a line search over the whole tree), polyak_sgd (the global gradient norm),
# noisy_sgd (its noise is drawn per leaf, so packing would change the numbers).
NAMES = (
    "adabelief", "adadelta", "adafactor", "adamax", "adamaxw", "adan", "amsgrad", "fromage", "lamb", "lars",
    "lbfgs", "lion", "nadam", "nadamw", "noisy_sgd", "novograd", "optimistic_adam", "optimistic_adam_v2",
    "optimistic_gradient_descent", "polyak_sgd", "radam", "rprop", "sign_sgd", "signum", "sm3", "yogi",
)

__all__ = list(NAMES)


def _alias(name: str):
    factory = getattr(optax, name)
    rule = lift(factory, elementwise=name in ELEMENTWISE, name=f"jgd.{name}")
    rule.__module__ = __name__
    rule.__doc__ = (
        f"``optax.{name}`` as a jgd rule: optax's signature, defaults and numbers, with every numeric "
        "argument a pytree leaf (one compilation for every value; ``vmap`` and ``jax.grad`` over it).\n\n"
        f"See optax's documentation of ``optax.{name}`` for the update rule and its arguments."
    )
    return rule


adabelief = _alias("adabelief")
adadelta = _alias("adadelta")
adafactor = _alias("adafactor")
adamax = _alias("adamax")
adamaxw = _alias("adamaxw")
adan = _alias("adan")
amsgrad = _alias("amsgrad")
fromage = _alias("fromage")
lamb = _alias("lamb")
lars = _alias("lars")
lbfgs = _alias("lbfgs")
lion = _alias("lion")
nadam = _alias("nadam")
nadamw = _alias("nadamw")
noisy_sgd = _alias("noisy_sgd")
novograd = _alias("novograd")
optimistic_adam = _alias("optimistic_adam")
optimistic_adam_v2 = _alias("optimistic_adam_v2")
optimistic_gradient_descent = _alias("optimistic_gradient_descent")
polyak_sgd = _alias("polyak_sgd")
radam = _alias("radam")
rprop = _alias("rprop")
sign_sgd = _alias("sign_sgd")
signum = _alias("signum")
sm3 = _alias("sm3")
yogi = _alias("yogi")

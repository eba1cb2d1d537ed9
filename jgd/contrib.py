"""optax.contrib's optimizers as jgd rules, with optax's signatures and numbers.

Each is ``jgd.lift(optax.contrib.<name>)``: numeric arguments are pytree leaves, the rest
static. Rules that need more than the gradient take optax's extra arguments in ``update``
(``value=`` for momo and reduce_on_plateau, ``obj_fn=`` for sophia); ``jgd.minimize``
passes ``value=``. ``schedule_free_eval_params`` is optax's own function.

Examples:
    >>> opt = jgd.contrib.prodigy(1.0)
    >>> state = opt.init({"w": jnp.zeros(3)})
"""

from __future__ import annotations

import optax.contrib

from jgd.lift import lift

schedule_free_eval_params = optax.contrib.schedule_free_eval_params

ELEMENTWISE = frozenset({
    "acprop", "ademamix", "simplified_ademamix", "adopt", "madgrad", "schedule_free_adamw", "schedule_free_sgd",
})
# Not elementwise: cocob, dadapt_adamw, dog, dowg, mechanize, momo, momo_adam, prodigy
# (global distance or step-size estimates), muon (matrix orthogonalisation), sophia (a
# Hessian estimate from a random probe of the whole tree), sam, reduce_on_plateau (wrappers).
NAMES = (
    "acprop", "ademamix", "simplified_ademamix", "adopt", "cocob", "dadapt_adamw", "dog", "dowg", "madgrad",
    "mechanize", "momo", "momo_adam", "muon", "prodigy", "schedule_free_adamw", "schedule_free_sgd", "sophia",
    "sam", "reduce_on_plateau",
)
# Numbers these factories branch on in Python: part of the compiled program, not leaves.
STATIC = {"mechanize": ("num_betas",), "reduce_on_plateau": ("factor", "rtol", "atol")}

__all__ = [*NAMES, "schedule_free_eval_params"]


def _alias(name: str):
    factory = getattr(optax.contrib, name)
    rule = lift(factory, static=STATIC.get(name, ()), elementwise=name in ELEMENTWISE, name=f"jgd.contrib.{name}")
    rule.__module__ = __name__
    rule.__doc__ = (
        f"``optax.contrib.{name}`` as a jgd rule: optax's signature, defaults and numbers, with every "
        "numeric argument a pytree leaf.\n\n"
        f"See optax's documentation of ``optax.contrib.{name}`` for the update rule and its arguments."
    )
    return rule


acprop = _alias("acprop")
ademamix = _alias("ademamix")
simplified_ademamix = _alias("simplified_ademamix")
adopt = _alias("adopt")
cocob = _alias("cocob")
dadapt_adamw = _alias("dadapt_adamw")
dog = _alias("dog")
dowg = _alias("dowg")
madgrad = _alias("madgrad")
mechanize = _alias("mechanize")
momo = _alias("momo")
momo_adam = _alias("momo_adam")
muon = _alias("muon")
prodigy = _alias("prodigy")
schedule_free_adamw = _alias("schedule_free_adamw")
schedule_free_sgd = _alias("schedule_free_sgd")
sophia = _alias("sophia")
sam = _alias("sam")
reduce_on_plateau = _alias("reduce_on_plateau")

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

from jgd.optax_zoo import lift_alias


def schedule_free_eval_params(state, params):
    """The point a schedule-free run is evaluated at, from its state and params
    (``optax.contrib.schedule_free_eval_params``; the state is optax's own).

    Args:
      state: the schedule-free rule's state.
      params: the current params.

    Returns:
      The params to evaluate (a pytree like ``params``).

    Examples:
        >>> opt = jgd.contrib.schedule_free_sgd(0.1)
        >>> params = {"w": jnp.ones(2)}
        >>> updates, state = opt.update({"w": jnp.ones(2)}, opt.init(params), params)
        >>> params = jgd.apply_updates(params, updates)
        >>> evaluated = jgd.contrib.schedule_free_eval_params(state, params)
    """
    return optax.contrib.schedule_free_eval_params(state, params)


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


SUMMARIES = {
    "acprop": "AdaBelief-style second moments of $g - m$ with the step computed from the current gradient (ACProp)",
    "ademamix": "Adam with a mixture of a fast and a slow EMA of the gradient ($\\alpha$ weights the slow one)",
    "simplified_ademamix": "AdEMAMix without the fast EMA's bias correction, as a momentum on Adam's direction",
    "adopt": "Adam whose second moment is updated after the step (ADOPT), with clipping of the normalised gradient",
    "cocob": "coin-betting step sizes, no learning rate to tune (COCOB-Backprop)",
    "dadapt_adamw": "AdamW whose step size is estimated from the distance travelled (D-Adaptation)",
    "dog": "step size = largest distance from the start / root of summed squared gradient norms (DoG)",
    "dowg": "distance-over-weighted-gradients step sizes (DoWG)",
    "madgrad": "momentumised dual averaging with cube-root adaptive steps (MADGRAD)",
    "mechanize": "learns the scale of a base optimizer's updates online (Mechanic)",
    "momo": "model-based momentum step: a Polyak-like step size from the loss and its lower bound (needs `value`)",
    "momo_adam": "momo on Adam's preconditioned direction (needs `value`)",
    "muon": "momentum orthogonalised by Newton-Schulz iterations for matrices, Adam for the other leaves",
    "prodigy": "Adam whose step size is estimated online from the distance to the start (Prodigy)",
    "schedule_free_adamw": "schedule-free AdamW: iterate averaging instead of a decay schedule",
    "schedule_free_sgd": "schedule-free SGD with momentum: iterate averaging instead of a decay schedule",
    "sophia": "clipped Newton-like steps with a Hutchinson estimate of the Hessian's diagonal (needs `obj_fn`)",
    "sam": "sharpness-aware minimisation: an adversarial step, then the outer step at the perturbed point",
    "reduce_on_plateau": "scales the updates down by `factor` when the loss stops improving (needs `value`)",
}
EXAMPLE_ARGUMENTS = {"mechanize": "jgd.sgd(0.1)", "sam": "jgd.sgd(0.1), jgd.sgd(0.05)", "reduce_on_plateau": ""}
_VALUE = ", value=jnp.array(1.0)"
EXAMPLE_EXTRA = {"momo": _VALUE, "momo_adam": _VALUE, "reduce_on_plateau": _VALUE,
                 "sophia": ', obj_fn=lambda p: jnp.sum(p["w"] ** 2)'}


def _alias(name: str):
    return lift_alias(optax.contrib, name, __name__, "jgd.contrib.", SUMMARIES, EXAMPLE_ARGUMENTS, EXAMPLE_EXTRA, ELEMENTWISE,
                      static=STATIC.get(name, ()))


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

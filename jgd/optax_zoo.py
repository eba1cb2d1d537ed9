"""Every optax optimizer alias as a jgd rule, with optax's signature and numbers.

Each name here is ``jgd.lift(optax.<name>)``: the same arguments, order and defaults as
optax 0.2.8, the numbers optax computes, and the numeric arguments as pytree leaves (one
compilation for every value, ``vmap`` and ``jax.grad`` over them). The aliases jgd
implements itself (``sgd``, ``adagrad``, ``rmsprop``, ``adam``, ``adamw``) live in their
rule families and take optax's full signatures too.

Examples:
    >>> opt = jgd.lion(1e-4, b1=0.95)
    >>> state = opt.init({"w": jnp.zeros(3)})
    >>> [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(opt)]
    ['.hyperparams.b1', '.hyperparams.b2', '.hyperparams.learning_rate', '.hyperparams.weight_decay']
    >>> opt.hyperparams.b1  # as given (leaves flatten to weakly typed JAX scalars)
    0.95
"""

from __future__ import annotations

import optax

from jgd._docs import arguments_section
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


# What each rule does, in a line (the docs' table of every rule shows these).
SUMMARIES = {
    "adabelief": "Adam with the second moment of $g - m$ (the gradient's deviation from its EMA)",
    "adadelta": "step $\\sqrt{\\Delta_{t-1}+\\epsilon}/\\sqrt{v_t+\\epsilon}\\, g$ with EMAs of squared steps and gradients",
    "adafactor": "factored second moments (row and column EMAs) with relative step sizes and update clipping",
    "adamax": "Adam with the infinity norm: $u = -\\eta\\, \\hat m / (\\max(\\beta_2 u_{t-1}, \\lvert g\\rvert) + \\epsilon)$",
    "adamaxw": "adamax with decoupled weight decay",
    "adan": "Nesterov-accelerated adaptive moments of $g$, $g_t - g_{t-1}$ and the combined gradient",
    "amsgrad": "Adam with $\\hat v_t = \\max(\\hat v_{t-1}, v_t)$ (non-increasing step sizes)",
    "fromage": "per-layer step $-\\eta\\, g\\,\\|x\\|/\\|g\\|$ then rescale by $1/\\sqrt{1+\\eta^2}$",
    "lamb": "Adam direction scaled per leaf by the trust ratio $\\|x\\|/\\|u\\|$",
    "lars": "momentum SGD scaled per leaf by the trust ratio $\\|x\\|/\\|g\\|$",
    "lbfgs": "limited-memory BFGS direction with a zoom line search (needs `value`, `grad`, `value_fn`)",
    "lion": "$u = -\\eta\\,\\mathrm{sign}(\\beta_1 m + (1-\\beta_1) g)$, $m \\leftarrow \\beta_2 m + (1-\\beta_2) g$",
    "nadam": "Adam with Nesterov's look-ahead first moment",
    "nadamw": "nadam with decoupled weight decay",
    "noisy_sgd": "SGD plus Gaussian noise of variance $\\eta/(1+t)^\\gamma$",
    "novograd": "per-layer second moments of $\\|g\\|^2$, normalised gradients, momentum",
    "optimistic_adam": "Adam with an optimistic correction $2u_t - u_{t-1}$ (deprecated by optax: use v2)",
    "optimistic_adam_v2": "optimistic Adam: $u = -\\eta(\\alpha\\, d_t + \\beta(d_t - d_{t-1}))$ on Adam's direction",
    "optimistic_gradient_descent": "$u = -\\eta(\\alpha\\, g_t + \\beta(g_t - g_{t-1}))$, for min-max games",
    "polyak_sgd": "Polyak step $\\min((f - f^*)/\\|g\\|^2, \\eta_{max})$ (needs `value`)",
    "radam": "Adam with the variance rectification term (SGD with momentum while it is undefined)",
    "rprop": "per-coordinate step sizes grown by $\\eta^+$ or shrunk by $\\eta^-$ on the gradient's sign",
    "sign_sgd": "$u = -\\eta\\,\\mathrm{sign}(g)$",
    "signum": "$u = -\\eta\\,\\mathrm{sign}(m)$ with a momentum trace $m$",
    "sm3": "memory-efficient adaptive steps from per-axis accumulators (factored)",
    "yogi": "Adam with an additive second-moment update $v \\leftarrow v - (1-\\beta_2)\\,\\mathrm{sign}(v - g^2)\\, g^2$",
}
EXAMPLE_ARGUMENTS = {"polyak_sgd": "", "noisy_sgd": "1e-3, key=jax.random.key(0)"}
_LOSS = 'value_fn=lambda p: jnp.sum(p["w"] ** 2)'
EXAMPLE_EXTRA = {"polyak_sgd": ", value=jnp.array(1.0)",
                 "lbfgs": f', value=jnp.array(0.0), grad={{"w": jnp.ones((3, 2))}}, {_LOSS}'}


def _alias(name: str):
    return lift_alias(optax, name, __name__, "jgd.", SUMMARIES, EXAMPLE_ARGUMENTS, EXAMPLE_EXTRA, ELEMENTWISE)


def lift_alias(module, name: str, home: str, prefix: str, summaries, example_arguments, example_extra, elementwise,
               static=()):
    """``module.<name>`` lifted as ``<prefix><name>`` of module ``home``, documented from its
    summary and optax's arguments."""
    factory = getattr(module, name)
    rule = lift(factory, static=static, elementwise=name in elementwise, name=f"{prefix}{name}")
    rule.__module__ = home
    rule.__doc__ = alias_doc(factory, f"{module.__name__}.{name}", f"{prefix}{name}", summaries[name],
                             example_arguments.get(name, "1e-3"), name in elementwise, example_extra.get(name, ""))
    return rule


def alias_doc(factory, optax_name: str, jgd_name: str, summary: str, example_arguments: str, elementwise: bool,
              update_extra: str = "") -> str:
    """The docstring of an optax alias: what it does, where its numbers come from, optax's
    arguments, an example."""
    flat = "" if elementwise else " It is not elementwise per leaf, so `jgd.flat` refuses it."
    lines = [f"opt = {jgd_name}({example_arguments})",
             'state = opt.init({"w": jnp.zeros((3, 2))})',
             f'updates, state = opt.update({{"w": jnp.ones((3, 2))}}, state, {{"w": jnp.zeros((3, 2))}}{update_extra})']
    if "deprecated" in summary:  # optax warns when the rule is built (in init and update)
        example = ["import warnings", "with warnings.catch_warnings():",
                   '    warnings.simplefilter("ignore", DeprecationWarning)'] + [f"    {x}" for x in lines]
        example = [f">>> {example[0]}", f">>> {example[1]}"] + [f"... {x}" for x in example[2:]]
    else:
        example = [f">>> {x}" for x in lines]
    arguments = arguments_section(factory, factory, optax_name)
    return (
        f"{summary[0].upper()}{summary[1:]}.\n\n"
        f"`{optax_name}` as a jgd rule: optax's signature, defaults and numbers (`init`/`update` run optax's own "
        "code), with every numeric argument a pytree leaf: one compilation for every value, `vmap` and "
        f"`jax.grad` over it.{flat}\n\n"
        + (f"{arguments}\n" if arguments else "")
        + "Returns:\n    The rule: an optax `GradientTransformationExtraArgs` whose numeric arguments are pytree"
        " leaves.\n\n"
        "Examples:\n" + "".join(f"    {x}\n" for x in example)
    )


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

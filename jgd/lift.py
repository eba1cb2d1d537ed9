"""``lift``: any optax-style factory as a jgd rule whose numeric arguments are leaves.

An optax optimizer is a pair of closures: its numbers are constants of the compiled
program, so a new learning rate recompiles and ``vmap`` over it is impossible. ``lift``
keeps the factory's *arguments* instead: the numbers (and pytrees of numbers, jgd
schedules and jgd optimizers passed as arguments) become the optimizer's pytree leaves,
everything else is static and compared by value, and ``init``/``update`` rebuild
``factory(**arguments)`` from the leaves and delegate to it. The numbers are therefore the
factory's own, and every property of the protocol holds: one compilation for every value,
``vmap`` over any numeric argument, ``jax.grad`` with respect to the optimizer, pickling.

Examples:
    >>> import optax
    >>> lion = jgd.lift(optax.lion)
    >>> opt = lion(learning_rate=1e-3, b1=0.95)
    >>> sorted(name for name, _ in opt.hyperparams.items() if name in ("b1", "b2", "learning_rate"))
    ['b1', 'b2', 'learning_rate']
    >>> [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(opt)]
    ['.hyperparams.b1', '.hyperparams.b2', '.hyperparams.learning_rate', '.hyperparams.weight_decay']
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np
import optax

from jgd._transform import Optimizer, Static, as_hyperparameter, transformation

__all__ = ["lift", "is_elementwise", "describe"]

_TRACING_ERRORS = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
    jax.errors.TracerArrayConversionError,
)


@dataclasses.dataclass(frozen=True)
class _Lifted:
    """What a lifted optimizer needs besides its arguments (static, compared by value)."""

    factory: Callable
    name: str
    elementwise: bool
    var_keyword: str | None  # the factory's ``**kwargs`` parameter, passed flattened


def lift(factory: Callable, *, static: Iterable[str] = (), elementwise: bool = False, name: str | None = None):
    """Turns an optax-style factory into a jgd factory with the same signature.

    Each argument of the returned factory is a pytree leaf when it is a number, an array or
    a pytree of them (a jgd schedule, a jgd optimizer); it is static (part of the compiled
    program, compared by value) when it is a string, a bool, ``None``, a dtype, a callable
    that is not such a pytree (an optax schedule or transform), a Python ``int`` (a size or
    a count for most factories) or named in ``static``.

    Args:
        factory: a callable returning an optax ``GradientTransformation`` (``optax.lion``,
            ``optax.contrib.muon``, your own).
        static: names of numeric arguments the factory branches on in Python (``if rate >
            0:``); they are part of the compiled program instead of leaves. A factory that
            needs one and does not get it raises a ``TypeError`` naming it under ``jit``.
        elementwise: declare that the rule's update of each leaf depends on that leaf alone
            (Adam-like rules), which lets [`jgd.flat`][jgd.flat.flat] pack leaves together. Rules with
            per-leaf norms, factored moments or matrix operations must leave it False.
        name: the name used in error messages, whose last part names the returned factory
            (default: the factory's own).

    Returns:
        A factory with ``factory``'s signature returning a jgd ``Optimizer``.

    Examples:
        >>> import optax
        >>> opt = jgd.lift(optax.adabelief)(1e-2)
        >>> step = jax.jit(lambda opt, g, s: opt.update(g, s))
        >>> state = opt.init(jnp.zeros(2))
        >>> updates, state = step(opt, jnp.ones(2), state)  # compiled once for every learning rate
    """
    if not callable(factory):
        raise TypeError(f"lift needs a factory (a callable returning an optax transform), got {factory!r}")
    signature = inspect.signature(factory)
    static = frozenset(static)
    unknown = static - set(signature.parameters)
    if unknown:
        raise ValueError(
            f"lift: static names {sorted(unknown)} are not arguments of {_name(factory)}"
            f" (it takes {list(signature.parameters)})"
        )
    var_keyword = next((p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD), None)
    spec = _Lifted(factory, name or _name(factory), bool(elementwise), var_keyword)

    def make(*args, **kwargs) -> Optimizer:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as error:
            raise TypeError(f"{spec.name}: {error}") from None
        given = set(bound.arguments)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        if var_keyword is not None:
            extra = arguments.pop(var_keyword)
            arguments.update(extra)
            given |= set(extra)
        hyperparams = {}
        for k, v in arguments.items():
            held = Static(v) if k in static or _static_by_default(v) else as_hyperparameter(v)
            if k in given or jax.tree.leaves(held):
                # numeric defaults are leaves too (sweepable, differentiable); static defaults are
                # left to the factory, so an unpicklable default (a lambda, a closure) is never held
                hyperparams[k] = held
        if not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(arguments)):
            # Build optax's transform once now, so its argument checks and warnings come at
            # construction, where optax gives them, not at the first init or update.
            with jax.numpy_dtype_promotion("standard"):
                factory(**{k: v for k, v in arguments.items() if k in hyperparams})
        return transformation(functools.partial(_lifted_init, spec), functools.partial(_lifted_update, spec),
                              **hyperparams)

    make.__name__ = make.__qualname__ = (name.rsplit(".", 1)[-1] if name
                                         else getattr(factory, "__name__", "lifted"))
    make.__doc__ = factory.__doc__
    make.__signature__ = signature  # type: ignore[attr-defined]
    make.__wrapped_factory__ = factory  # type: ignore[attr-defined]
    return make


def is_elementwise(opt) -> bool:
    """Whether ``opt``'s update of each leaf depends on that leaf alone (False for a lifted
    rule not declared elementwise, and for a chain or wrapper holding one)."""
    if not isinstance(opt, Optimizer):
        return True  # an optax closure: nothing to look into (jgd.flat has always taken these)
    init = opt.init.args[0].value
    if isinstance(init, functools.partial) and init.func is _lifted_init:
        if not init.args[0].elementwise:
            return False
    return all(is_elementwise(x) for x in _inner_optimizers(opt.hyperparams))


def describe(opt) -> str:
    """The lifted rules inside ``opt`` that are not elementwise, by name (for messages)."""
    init = opt.init.args[0].value if isinstance(opt, Optimizer) else None
    if isinstance(init, functools.partial) and init.func is _lifted_init and not init.args[0].elementwise:
        return init.args[0].name
    inner = [describe(x) for x in _inner_optimizers(opt.hyperparams)] if isinstance(opt, Optimizer) else []
    inner = [d for d in inner if d]
    return inner[0] if inner else ""


def _inner_optimizers(hyperparams):
    return [x for x in jax.tree.leaves(hyperparams, is_leaf=lambda x: isinstance(x, Optimizer))
            if isinstance(x, Optimizer)]


def _name(factory) -> str:
    module = getattr(factory, "__module__", "") or ""
    public = "optax.contrib" if module.startswith("optax.contrib") else "optax" if module.startswith("optax") else module
    return f"{public}.{getattr(factory, '__name__', repr(factory))}" if public else repr(factory)


def _static_by_default(value) -> bool:
    # Python ints are sizes and counts for most factories (memory_size, ns_steps, patience):
    # a traced one could not be used there.
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _build(spec: _Lifted, hp):
    # The factory warned (deprecations) when the rule was constructed; init and update
    # rebuild it on every trace and would repeat that warning each time.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return optax.with_extra_args_support(spec.factory(**dict(hp.items())))


def _lifted_init(spec: _Lifted, hp, params):
    return _explained(spec, hp, lambda h: _build(spec, h).init(params))


def _lifted_update(spec: _Lifted, hp, updates, state, params=None, **extra):
    def run(h):
        transform = _build(spec, h)
        _check_state(spec, transform, updates, state)
        return transform.update(updates, state, params, **_accepted(transform.update, extra))

    return _explained(spec, hp, run)


def _check_state(spec: _Lifted, transform, updates, state):
    """A ValueError naming both structures when ``state`` is not what ``init`` makes for
    params shaped like ``updates`` (optax would fail deep inside a tree map)."""
    expected = jax.tree.structure(jax.eval_shape(transform.init, updates))
    actual = jax.tree.structure(state)
    if expected != actual:  # type: ignore[operator]
        raise ValueError(
            f"{spec.name}: the optimizer state does not match these updates (was the state made by this "
            f"optimizer's init for params shaped like them?)\n  state: {actual}\n  expected: {expected}"
        )


def _accepted(update, extra):
    """The extra arguments ``update`` takes: all of them when it has ``**kwargs``, else the
    ones it names (some optax updates, e.g. sam's, take none, while jgd.minimize offers
    ``value=`` and ``grad=`` to every rule)."""
    try:
        parameters = inspect.signature(update).parameters.values()
    except (TypeError, ValueError):
        return extra
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return extra
    names = {p.name for p in parameters}
    return {k: v for k, v in extra.items() if k in names}


def _explained(spec: _Lifted, hp, run):
    """``run(hp)`` under the promotion rules optax is written for (it mixes Python floats
    with int32 counts, which a user's strict promotion would refuse), turning JAX's error for
    Python branching on a traced argument into one that names the argument."""
    try:
        with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
            return run(hp)
    except _TRACING_ERRORS:
        culprits = _branching_arguments(hp, run)
        if not culprits:
            raise
        names = ", ".join(repr(n) for n in culprits)
        raise TypeError(
            f"{spec.name} uses {names} as a Python value (a branch, an int or a shape), so it cannot be a "
            f"traced hyperparameter: lift it with jgd.lift({spec.name.split('.')[-1]}, static=({names},)) "
            "to make it part of the compiled program (a new value then recompiles)"
        ) from None


def _branching_arguments(hp, run) -> list[str]:
    """The arguments that break ``run`` when they alone are traced (the others set to
    concrete stand-ins of their shapes and dtypes)."""
    concrete = {k: jax.tree.map(_stand_in, v) for k, v in hp._values.items()}
    culprits = []
    for name in sorted(concrete):
        if not jax.tree.leaves(concrete[name]):
            continue

        def alone(value, name=name):
            run(type(hp)(**{**concrete, name: value}))
            return 0

        try:
            with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
                jax.eval_shape(alone, concrete[name])
        except _TRACING_ERRORS:
            culprits.append(name)
        except Exception:  # noqa: BLE001, S112 - another failure says nothing about branching
            continue
    return culprits


def _stand_in(x: Any):
    if isinstance(x, jax.core.Tracer):
        aval = jax.typeof(x)
        return np.full(aval.shape, 0.5, aval.dtype) if np.issubdtype(aval.dtype, np.inexact) else np.ones(aval.shape, aval.dtype)
    return x

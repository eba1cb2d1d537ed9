"""The optimizer protocol: an optimizer is a pytree whose leaves are its hyperparameters.

Every jgd optimizer is an ``optax.GradientTransformationExtraArgs`` whose ``init`` and
``update`` are ``jax.tree_util.Partial``s over a `Hyperparams` node. Numeric
hyperparameters are pytree leaves, so a jitted step that takes the optimizer as an
argument compiles once for every value, and ``jax.vmap`` over a learning rate works.
Everything else (rule names, flags, plain functions, optax closures) is static
aux data, compared by equality.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import sys
import types
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "Optimizer",
    "Hyperparams",
    "Static",
    "transformation",
    "as_hyperparameter",
    "check_scalar",
    "check_learning_rate",
    "learning_rate_at",
    "scalar_dtype",
    "moment_dtype",
    "compute_dtype",
    "moments_like",
    "map_leaves",
    "global_norm",
    "sqrt",
    "check_same_structure",
    "check_array_leaves",
    "CountState",
]


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True, eq=False)
class Static:
    """A hyperparameter that is part of the compiled program rather than a leaf.

    Two are equal when their values are equal by `static_key`: so an equal mask
    rebuilt as a ``functools.partial``, an equal label tree or an optax piece rebuilt from
    equal arguments is the same compiled program, not a retrace."""

    value: Any

    def __eq__(self, other):
        return isinstance(other, Static) and static_key(self.value) == static_key(other.value)

    def __hash__(self):
        return hash(static_key(self.value))


def static_key(value, _depth: int = 0):
    """A hashable key that is equal for values that build the same program.

    ``functools.partial``s compare by function and arguments, functions (optax's closures)
    by code and the keys of what they close over, containers and pytrees by their parts,
    numpy and concrete JAX arrays by dtype, shape and bytes. What cannot be looked into
    (a traced value, a deep cycle) compares by identity, never by a guess."""
    if _depth > 32:
        return ("id", id(value))
    key = functools.partial(static_key, _depth=_depth + 1)
    if isinstance(value, functools.partial):
        return ("partial", key(value.func), key(value.args), key(sorted(value.keywords.items())))
    if isinstance(value, types.FunctionType):
        cells = tuple(key(c.cell_contents) if _filled(c) else ("empty",) for c in value.__closure__ or ())
        return ("function", value.__code__, key(value.__defaults__), key(value.__kwdefaults__), cells)
    if isinstance(value, dict):
        return ("dict", tuple(sorted(((repr(k), key(v)) for k, v in value.items()), key=lambda kv: kv[0])))
    if isinstance(value, (list, tuple)):
        return (type(value), tuple(key(v) for v in value))
    if isinstance(value, jax.core.Tracer):
        return ("id", id(value))
    if isinstance(value, (np.ndarray, jax.Array)):
        array = np.asarray(value)
        return ("array", array.shape, str(array.dtype), array.tobytes())
    try:
        hash(value)
    except TypeError:
        leaves, treedef = jax.tree.flatten(value)
        if len(leaves) == 1 and leaves[0] is value:
            return ("id", id(value))
        return ("tree", treedef, tuple(key(x) for x in leaves))
    return value


def _filled(cell) -> bool:
    try:
        _ = cell.cell_contents
    except ValueError:
        return False
    return True


_NUMERIC = (jax.Array, np.ndarray, np.generic, numbers.Number)


def _is_numeric_leaf(x) -> bool:
    return isinstance(x, _NUMERIC) and not isinstance(x, (bool, np.bool_))


def as_hyperparameter(value):
    """Numbers, arrays and pytrees of numbers stay leaves; anything else becomes static."""
    if _is_numeric_leaf(value):
        return value
    if value is None or isinstance(value, (str, bool, np.bool_, np.dtype, type)):
        return Static(value)
    if isinstance(value, (tuple, list)) and not hasattr(value, "_fields"):
        return type(value)(as_hyperparameter(v) for v in value)
    if type(value) is dict:  # e.g. partition's {label: optimizer}: jgd rules stay leaves beside optax closures
        return {k: as_hyperparameter(v) for k, v in value.items()}
    leaves = jax.tree.leaves(value)
    if (len(leaves) == 1 and leaves[0] is value) or not all(_is_numeric_leaf(x) for x in leaves):
        return Static(value)
    return value


def unwrap(value):
    if isinstance(value, Static):
        return value.value
    if isinstance(value, (tuple, list)) and not hasattr(value, "_fields"):
        return type(value)(unwrap(v) for v in value)
    if type(value) is dict:
        return {k: unwrap(v) for k, v in value.items()}
    return value


@jax.tree_util.register_pytree_with_keys_class
class Hyperparams:
    """Named hyperparameters: numeric ones are children, static ones aux data."""

    __slots__ = ("_values", "_children")

    def __init__(self, **values):
        object.__setattr__(self, "_values", values)
        object.__setattr__(self, "_children", None)

    def _flat_children(self):
        """The children in key order with Python floats as this object's JAX scalars (see
        `as_leaf_arrays`), made on the first flatten, under this x64 setting, and again
        when a donating jit deleted them."""
        values = object.__getattribute__(self, "_values")
        if not _outside_traces():  # inside a trace floats stay literals, as jit makes them
            return [values[k] for k in sorted(values)]
        x64 = bool(jax.config.read("jax_enable_x64"))
        cached = object.__getattribute__(self, "_children")
        if cached is not None and cached[0] == x64 and not any(a.is_deleted() for a in cached[2]):
            return cached[1]
        made: list = []
        children = [as_leaf_arrays(values[k], made) for k in sorted(values)]
        object.__setattr__(self, "_children", (x64, children, made))
        return children

    def __getattr__(self, name):
        try:
            return unwrap(object.__getattribute__(self, "_values")[name])
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        raise AttributeError("Hyperparams are immutable")

    def __reduce__(self):
        # pickle and copy.deepcopy rebuild through __init__ (the default would set
        # attributes on an empty, immutable object)
        return _rebuild_hyperparams, (object.__getattribute__(self, "_values"),)

    def items(self):
        return {k: unwrap(v) for k, v in self._values.items()}.items()

    def __repr__(self):
        inner = ", ".join(f"{k}={v!r}" for k, v in self.items())
        return f"Hyperparams({inner})"

    def tree_flatten_with_keys(self):
        keys = tuple(sorted(self._values))
        return [(jax.tree_util.GetAttrKey(k), c) for k, c in zip(keys, self._flat_children())], keys

    def tree_flatten(self):
        return self._flat_children(), tuple(sorted(self._values))

    @classmethod
    def tree_unflatten(cls, keys, children):
        return cls(**{k: as_given_numbers(v) for k, v in zip(keys, children)})


def _rebuild_hyperparams(values):
    return Hyperparams(**values)


# A Python float a user gave (``jgd.adam(1e-3)``) is kept as given, so eager updates compute
# with it exactly as optax does; but it *flattens* to a weakly typed 0-d JAX array (what
# ``jit`` would make of it anyway: the same dtype, the same program), so ``eqx.filter_jit``
# and other filters that keep non-arrays static trace it instead of retracing per value.
# Each optimizer makes its arrays once, on its first flatten (a new array per flatten would
# cost tens of microseconds a dispatch), its own (a cache shared between optimizers would
# hand one buffer to two leaves, which a donating jit refuses), and again when a donating
# jit deleted them. Inside a trace nothing changes (floats stay literals there: converting
# them made every traced optimizer's numbers constants, ~12% slower to trace and compile).
# Unflattening the very array that flattening gave (a tree_map that left it alone, a
# filter's partition and combine) gives the number back.
_NUMBER_OF_ARRAY: dict[int, tuple[jax.Array, Any]] = {}
_REMEMBERED = 1 << 16


def _outside_traces(unknown: bool = True) -> bool:
    """No jit/vmap/grad trace is active (JAX's own test; ``unknown`` if this JAX lacks it)."""
    from jax._src import core

    clean = getattr(core, "trace_state_clean", None)
    return unknown if clean is None else clean()


def _leaf_array(value, made: list):
    # Not ints: an ``in_axes`` tree (``jax.tree.map(lambda _: 0, opt)``) must flatten to ints.
    if type(value) not in (float, complex):
        return value
    array = jnp.asarray(value)
    if isinstance(array, jax.core.Tracer):
        return value
    if len(_NUMBER_OF_ARRAY) >= _REMEMBERED:  # forget the oldest
        del _NUMBER_OF_ARRAY[next(iter(_NUMBER_OF_ARRAY))]
    _NUMBER_OF_ARRAY[id(array)] = (array, value)
    made.append(array)
    return array


def _given_number(leaf):
    entry = _NUMBER_OF_ARRAY.get(id(leaf))
    return entry[1] if entry is not None and entry[0] is leaf else leaf


def _map_containers(function, value):
    if isinstance(value, (tuple, list)) and not hasattr(value, "_fields"):
        return type(value)(_map_containers(function, v) for v in value)
    if type(value) is dict:
        return {k: _map_containers(function, v) for k, v in value.items()}
    return function(value)


def as_leaf_arrays(value, made: list):
    """A hyperparameter as it flattens: Python floats and complexes (in tuples, lists, dicts
    too) as new weakly typed JAX scalars, appended to ``made``."""
    return _map_containers(functools.partial(_leaf_array, made=made), value)


def as_given_numbers(value):
    """The inverse of `as_leaf_arrays` for the arrays it gave (others stay as they are)."""
    return _map_containers(_given_number, value)


class Optimizer(optax.GradientTransformationExtraArgs):
    """An ``optax.GradientTransformationExtraArgs`` whose pytree leaves are its
    hyperparameters, each exactly once.

    ``init`` and ``update`` are ``jax.tree_util.Partial``s over the same
    `Hyperparams`; flattened as a namedtuple, every hyperparameter would be a leaf
    twice (a batched optimizer would need ``in_axes`` for both copies, and ``jax.grad``
    with respect to the optimizer would split each derivative in two). This subclass
    flattens to the hyperparameters once and rebuilds both functions from them.
    """

    __slots__ = ()

    @property
    def hyperparams(self) -> Hyperparams:
        return self.init.args[1]

    def gradient_transformation(self) -> Optimizer:
        """The optimizer itself (code written for ``optax.MultiSteps`` calls this)."""
        return self


def _optimizer_flatten(opt: Optimizer):
    return [(jax.tree_util.GetAttrKey("hyperparams"), opt.hyperparams)], (
        opt.init.args[0],
        opt.update.args[0],
    )


_REGISTERED_WITH_NNX = False


def _register_with_nnx():
    """Makes flax.nnx treat a jgd optimizer as data (its leaves are arrays, see
    `as_leaf_arrays`): ``nnx.Optimizer(model, jgd.adam(1e-3), wrt=nnx.Param)`` then holds
    ``tx`` as data, traced by ``nnx.jit`` (one compilation for every value), where an
    optimizer with array leaves in a static attribute would be refused. Done the first time
    an optimizer is built after flax.nnx is imported; the core never imports flax."""
    global _REGISTERED_WITH_NNX
    nnx = sys.modules.get("flax.nnx")
    if nnx is not None and hasattr(nnx, "register_data_type"):
        nnx.register_data_type(Optimizer)
        _REGISTERED_WITH_NNX = True


def _optimizer_unflatten(functions, children):
    if not _REGISTERED_WITH_NNX:
        _register_with_nnx()
    (hp,) = children
    init_fn, update_fn = functions
    return Optimizer(
        jax.tree_util.Partial(_init, init_fn, hp),
        jax.tree_util.Partial(_update, update_fn, hp),
    )


jax.tree_util.register_pytree_with_keys(
    Optimizer,
    _optimizer_flatten,
    _optimizer_unflatten,
    lambda opt: ([opt.hyperparams], (opt.init.args[0], opt.update.args[0])),
)


def transformation(init_fn: Callable, update_fn: Callable, **hyperparams) -> Optimizer:
    """Builds an optimizer from ``init_fn(hp, params)`` and ``update_fn(hp, updates, state,
    params=None, **extra)``. Both functions must be module-level (their identity is part of
    the jit cache key). Pass each hyperparameter once, as the user gave it; numbers derived
    from it (``1 - b1``) are computed inside ``update_fn`` so they are not leaves of their own.
    """
    hp = Hyperparams(**{k: as_hyperparameter(v) for k, v in hyperparams.items()})
    return _optimizer_unflatten((Static(init_fn), Static(update_fn)), [hp])


def _init(init_fn, hp, params):
    check_array_leaves("params", params)
    return init_fn.value(hp, jax.tree.map(jnp.asarray, params))


def _update(update_fn, hp, updates, state, params=None, **extra):
    # Checked here, at the boundary, so a mistake names the argument instead of failing
    # deep inside a tree.map. Structures and dtypes are static: no traced value is read.
    check_array_leaves("updates", updates)
    if params is not None:
        check_array_leaves("params", params)
    check_same_structure("updates", updates, "params", params)
    # Python numbers (e.g. a list of floats) become arrays once, here, for every rule.
    updates = jax.tree.map(jnp.asarray, updates)
    if params is not None:
        params = jax.tree.map(jnp.asarray, params)
    try:
        return update_fn.value(hp, updates, state, params, **extra)
    except AttributeError as error:
        if getattr(error, "obj", None) is state:  # a state from another optimizer
            raise TypeError(
                f"state is a {type(state).__name__}, which has no {error.name!r}: pass the "
                "state made by this optimizer's init"
            ) from None
        raise


SPLIT_HINT = (
    "; keep only arrays in the params: split a model first, e.g. "
    "params, static = eqx.partition(model, eqx.is_inexact_array) (equinox) or "
    "graphdef, params, rest = nnx.split(model, nnx.Param, ...) (flax.nnx), and pass "
    "non-trainable arrays as model_state"
)


def check_array_leaves(name: str, tree):
    """Raises TypeError naming the leaf when a leaf of ``tree`` is not a number or an
    array (a string, an object, None inside a list...)."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, jax.core.Tracer) or _is_numeric_leaf(leaf):
            continue
        raise TypeError(
            f"{name}{jax.tree_util.keystr(path)} must be an array or a number, got {leaf!r}{SPLIT_HINT}"
        )


def check_same_structure(name: str, tree, other_name: str, other, hint: str = ""):
    """Raises ValueError naming both trees' structures when they differ (``other=None``
    is allowed: params are optional in ``update``)."""
    if other is None:
        return
    a, b = jax.tree.structure(tree), jax.tree.structure(other)
    if a != b:  # type: ignore[operator]
        raise ValueError(
            f"{name} and {other_name} must have the same tree structure, got\n"
            f"  {name}: {a}\n  {other_name}: {b}{hint}"
        )


# --------------------------------------------------------------------------- validation


def _concrete(value):
    """The value as a numpy array when it is known now, else None (traced, or a schedule)."""
    if isinstance(value, jax.core.Tracer) or callable(value):
        return None
    try:
        return np.asarray(value)
    except Exception:  # noqa: BLE001 - anything not array-like is rejected by the caller
        return None


def check_scalar(
    name: str,
    value,
    *,
    lower: float | None = None,
    upper: float | None = None,
    lower_open: bool = False,
    upper_open: bool = False,
):
    """Raises ValueError/TypeError naming ``name`` and ``value`` when a concrete value is
    out of range or not finite. Traced values and schedules are never checked."""
    if isinstance(value, jax.core.Tracer) or callable(value):
        return value
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{name} must be a number, got {value!r}")
    array = _concrete(value)
    if array is None or not (
        np.issubdtype(array.dtype, np.number) or array.dtype == jnp.bfloat16
    ):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if np.issubdtype(array.dtype, np.complexfloating):
        raise TypeError(f"{name} must be real, got {value!r}")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    bad = np.zeros(array.shape, bool)
    if lower is not None:
        bad |= array <= lower if lower_open else array < lower
    if upper is not None:
        bad |= array >= upper if upper_open else array > upper
    if np.any(bad):
        lo = "" if lower is None else ("(" if lower_open else "[") + f"{lower:g}"
        hi = "" if upper is None else f"{upper:g}" + (")" if upper_open else "]")
        where = f"in {lo}, {hi}" if lower is not None and upper is not None else (
            f">{'' if lower_open else '='} {lower:g}" if lower is not None
            else f"<{'' if upper_open else '='} {upper:g}")
        raise ValueError(f"{name} must be {where}, got {value!r}")
    return value


def check_learning_rate(learning_rate, name: str = "learning_rate"):
    """A learning rate is a finite number >= 0 or a schedule ``count -> scalar``."""
    if callable(learning_rate) and not _is_numeric_leaf(learning_rate):
        return learning_rate
    return check_scalar(name, learning_rate, lower=0.0)


def check_decay(name: str, value):
    return check_scalar(name, value, lower=0.0, upper=1.0, upper_open=True)


def check_state_dtype(state_dtype, name: str = "state_dtype"):
    if state_dtype is None:
        return None
    try:
        dtype = jnp.dtype(state_dtype)
    except TypeError:
        raise TypeError(f"{name} must be a floating dtype, got {state_dtype!r}") from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating dtype, got {state_dtype!r}")
    return dtype


# --------------------------------------------------------------------------- numerics


def scalar_dtype():
    """The dtype scalar coefficients are computed in before being cast to each leaf."""
    return jnp.dtype(jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32)


def as_scalar(value):
    return jnp.asarray(value, scalar_dtype())


def learning_rate_at(learning_rate, count):
    """The learning rate for the update after ``count`` previous updates (optax's
    convention: a schedule sees 0 on the first step)."""
    if callable(learning_rate) and not _is_numeric_leaf(learning_rate):
        return as_scalar(learning_rate(count))
    return as_scalar(learning_rate)


def wider(a, b):
    """The wider of two floating dtypes (explicit, so strict promotion never objects)."""
    a, b = jnp.dtype(a), jnp.dtype(b)
    if not jnp.issubdtype(a, jnp.inexact):
        return b
    return b if b.itemsize > a.itemsize else a


def moment_dtype(param_dtype, state_dtype=None):
    """State follows the params' dtype unless ``state_dtype`` sets it (up or down)."""
    return jnp.dtype(param_dtype if state_dtype is None else state_dtype)


def compute_dtype(*arrays):
    """The dtype a leaf's update is computed in: the widest of its gradient's and its
    state's (a bfloat16 moment of a float32 param is read up and stored back down, as
    optax's ``mu_dtype``)."""
    return functools.reduce(wider, [a.dtype for a in arrays])


def moments_like(params, state_dtype=None, fill=0.0):
    """A state leaf per param, ``fill`` everywhere, with the param's shape and sharding
    (``full_like``: a moment of a param split over devices is split alike, never built
    on one device)."""
    return jax.tree.map(
        lambda p: jnp.full_like(p, fill, moment_dtype(jnp.result_type(p), state_dtype)),
        params,
    )


def map_leaves(fn: Callable, num_outputs: int, tree, *rest):
    """``jax.tree.map`` for a function returning ``num_outputs`` leaves: one tree each."""
    for other in rest:
        check_same_structure(
            "updates", tree, "the optimizer state", other,
            "\n(was the state made by this optimizer's init for params shaped like these updates?)",
        )
    outer = jax.tree.structure(tree)
    if outer.num_leaves == 0:  # type: ignore[attr-defined]
        return tuple(tree for _ in range(num_outputs))
    out = jax.tree.map(fn, tree, *rest)
    return jax.tree.transpose(outer, jax.tree.structure((0,) * num_outputs), out)


def abs_sq(x):
    """|x|² entry by entry, real for complex x (``x * x`` would be complex and wrong)."""
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        return jnp.real(x * jnp.conj(x))
    return jnp.square(x)


def global_norm(tree):
    """The Euclidean norm of all leaves together (|x|² for complex entries), accumulated
    in at least float32; real."""
    leaves = jax.tree.leaves(tree)
    dtype = functools.reduce(wider, [jnp.result_type(x) for x in leaves], scalar_dtype())
    real = jnp.finfo(dtype).dtype if jnp.issubdtype(dtype, jnp.complexfloating) else dtype
    total = sum(
        (jnp.sum(abs_sq(jnp.asarray(x).astype(dtype))) for x in leaves),
        jnp.zeros((), real),
    )
    return jnp.sqrt(total)


@jax.custom_jvp
def sqrt(x):
    """``jnp.sqrt`` whose derivative at 0 is taken as 0 instead of infinity.

    A second moment is 0 only where every gradient so far was 0, and then its tangent is
    0 too (d(g²) = 2g·dg), so the true directional derivative is 0; ``jnp.sqrt``'s
    infinite slope would turn it into ``0 · inf = NaN`` in hypergradients."""
    return jnp.sqrt(x)


@sqrt.defjvp
def _sqrt_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    root = jnp.sqrt(x)
    safe = jnp.where(x > 0, root, 1)
    return root, jnp.where(x > 0, dx / (2 * safe), jnp.zeros_like(dx))


def refuse_complex(rule: str, params):
    """A TypeError naming complex, for rules whose second moments would be silently wrong
    for complex entries (``g*g`` instead of ``|g|²``)."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if jnp.issubdtype(jnp.result_type(leaf), jnp.complexfloating):
            raise TypeError(
                f"{rule} does not support complex params yet: params{jax.tree_util.keystr(path)} is "
                f"{jnp.result_type(leaf)}. Optimize the real and imaginary parts as separate real leaves "
                "(e.g. {'re': x.real, 'im': x.imag}), or use sgd/momentum, which are linear in the gradient"
            )


def increment(count):
    return optax.safe_increment(count)


class CountState(NamedTuple):
    """State of a rule that only needs the step count (for schedules)."""

    count: jax.Array  # type: ignore[assignment]


def zero_count():
    return jnp.zeros([], jnp.int32)


"""The arguments of ``minimize`` (and so of ``sweep`` and ``halving``) checked at the
boundary: a user's mistake is a clear error naming the argument and the value, never a
deep JAX traceback. Traced values are never checked."""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from jgd._transform import SPLIT_HINT as _SPLIT_HINT


def _leading_size(name, data):
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError(f"{name} must hold at least one array, got {data!r}")
    sizes = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(data)[0]:
        shape = jnp.shape(leaf)
        if not shape:
            raise ValueError(
                f"{name} leaves need a leading example axis; {jax.tree_util.keystr(path)} is a scalar"
            )
        sizes[jax.tree_util.keystr(path) or "data"] = shape[0]
    if len(set(sizes.values())) > 1:
        raise ValueError(f"{name} leaves must share their leading size, got {sizes}")
    return next(iter(sizes.values()))


def _check_int(name, value, lower):
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < lower:
        raise ValueError(f"{name} must be >= {lower}, got {value!r}")
    return int(value)


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")




def _is_init_function(value) -> bool:
    """Whether sweep's ``params`` (or ``model_state``) is an init function ``key -> tree``:
    a callable that is not a pytree holding arrays (an ``eqx.Module`` from
    ``eqx.partition`` is callable, and it is params)."""
    return callable(value) and not any(isinstance(leaf, (jax.Array, np.ndarray, np.generic))
                                       for leaf in jax.tree.leaves(value))


def _check_params(params):
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError(f"params must hold at least one array, got {params!r}")
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        where = f"params{jax.tree_util.keystr(path)}"
        try:
            dtype = jnp.result_type(leaf)
        except TypeError:
            raise TypeError(f"{where} must be an array, got {leaf!r}{_SPLIT_HINT}") from None
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"{where} must be floating to be differentiated, got dtype {dtype}: cast it "
                "(params.astype(jnp.float32)) if it is a parameter, or pass it in model_state "
                "if it is not trained"
            )


def _check_model_state(model_state):
    for path, leaf in jax.tree_util.tree_flatten_with_path(model_state)[0]:
        try:
            jnp.result_type(leaf)
        except TypeError:
            raise TypeError(
                f"model_state{jax.tree_util.keystr(path)} must be an array, got {leaf!r}"
            ) from None


def _spec(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)


def _check_loss(config, params, model_state, batch, key):
    """Traces ``fun`` abstractly once to give user mistakes a clear error."""
    args = (params,) + ((model_state,) if config.has_model_state else ())
    args += (() if batch is None else (batch,)) + ((key,) if config.with_key else ())
    out = jax.eval_shape(config.fun, *args)
    pair = config.has_aux or config.has_model_state
    if pair:
        what = ("(loss, (new_model_state, aux)) with has_aux=True and model_state="
                if config.has_aux and config.has_model_state
                else "(loss, new_model_state) with model_state=" if config.has_model_state
                else "a (loss, aux) pair with has_aux=True")
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise ValueError(f"fun must return {what}; it returned {out!r}")
        if config.has_aux and config.has_model_state and not (
                isinstance(out[1], (tuple, list)) and len(out[1]) == 2):
            raise ValueError(f"fun must return {what}; it returned {out!r}")
        loss = out[0]
    elif isinstance(out, (tuple, list)):
        raise ValueError(
            f"fun returned a {type(out).__name__} of {len(out)}; pass has_aux=True if it "
            "returns (loss, aux), or model_state= if it returns (loss, new_model_state)"
        )
    else:
        loss = out
    if not hasattr(loss, "shape") or loss.shape != () or not jnp.issubdtype(loss.dtype, jnp.floating):
        raise ValueError(f"fun must return a scalar floating loss, got {loss!r}")
    if config.has_model_state:
        new_state = out[1][0] if config.has_aux else out[1]
        if jax.tree.structure(new_state) != jax.tree.structure(model_state) or any(
                (a.shape, a.dtype) != (b.shape, b.dtype)
                for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(_spec(model_state)))):
            raise ValueError(
                "fun's new model_state must match the model_state it was given (same tree, "
                f"shapes and dtypes); got {new_state!r} for {_spec(model_state)!r}"
            )


def _linearized(*trees) -> bool:
    """Whether an input is being differentiated in reverse mode (or linearized), where
    the while loop would fail with JAX's own message. Looks through vmap/jvp tracers;
    JAX internals, so anything unexpected answers False (JAX's error then stands)."""
    try:
        for leaf in jax.tree.leaves(trees):
            while isinstance(leaf, jax.core.Tracer):
                if type(leaf).__name__ == "LinearizeTracer":
                    return True
                leaf = getattr(leaf, "primal", getattr(leaf, "val", None))
    except Exception:  # noqa: BLE001
        return False
    return False


def _as_key(key):
    if key is None:
        return jax.random.key(0)
    if not jnp.issubdtype(jnp.result_type(key), jax.dtypes.prng_key):
        return jax.random.wrap_key_data(key)  # a raw uint32 key from jax.random.PRNGKey
    return key

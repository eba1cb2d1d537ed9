"""The params a benchmark times: built-in trees, a user's init function, or a shapes file."""

from __future__ import annotations

import importlib
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from jgd.benchmark.timing import make_tree

__all__ = ["load_tree", "BUILT_IN"]

BUILT_IN = ("leaf", "many-leaf", "tiny")


def _from_function(spec: str):
    module_name, _, function_name = spec.partition(":")
    if module_name.endswith(".py"):  # a file path
        spec_ = importlib.util.spec_from_file_location(pathlib.Path(module_name).stem, module_name)
        if spec_ is None or spec_.loader is None:
            raise ValueError(f"tree {spec!r}: cannot load {module_name}")
        module = importlib.util.module_from_spec(spec_)
        spec_.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise ValueError(f"tree {spec!r}: cannot import {module_name!r} ({error})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"tree {spec!r}: {module_name} has no function {function_name!r}")
    params = function()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
            raise TypeError(
                f"tree {spec!r}: {function_name}() must return a pytree of arrays (the params), but "
                f"params{jax.tree_util.keystr(path)} is {leaf!r}; return e.g. eqx.filter(model, eqx.is_array) "
                "or nnx.state(model, nnx.Param)"
            )
    if not jax.tree.leaves(params):
        raise TypeError(f"tree {spec!r}: {function_name}() returned no arrays: {params!r}")
    return params


def _from_shapes(path: str):
    try:
        spec = json.loads(pathlib.Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"tree {path!r}: cannot read it as JSON ({error})") from None
    items = spec.items() if isinstance(spec, dict) else enumerate(spec) if isinstance(spec, list) else None
    if items is None:
        raise ValueError(f"tree {path!r}: expected an object or a list of shapes, got {type(spec).__name__}")
    params = {}
    for name, entry in items:
        shape, dtype = (entry.get("shape"), entry.get("dtype", "float32")) if isinstance(entry, dict) else (entry, "float32")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ValueError(f"tree {path!r}: entry {name!r} needs a shape as a list of ints >= 0, got {entry!r}")
        try:
            dtype = jnp.dtype(dtype)
        except TypeError:
            raise ValueError(f"tree {path!r}: entry {name!r} has an unknown dtype {dtype!r}") from None
        params[str(name)] = jnp.zeros(tuple(shape), dtype)
    if not params:
        raise ValueError(f"tree {path!r} lists no shapes")
    return params


def load_tree(spec: str, size: int = 1_000_000, dtype=None):
    """The params named by ``spec``: a built-in tree (``leaf``, ``many-leaf``, ``tiny``, of
    about ``size`` entries), ``MODULE:FUNCTION`` (``FUNCTION()`` returns the params; MODULE
    may be a ``.py`` path) or a ``.json`` file of shapes (``{"name": [d0, d1], "other":
    {"shape": [d], "dtype": "bfloat16"}}`` or a list of the same). ``dtype`` casts every
    floating leaf.

    Args:
      spec: a built-in tree's name, ``MODULE:FUNCTION`` or a ``.json`` path.
      size: a built-in tree's approximate number of entries.
      dtype: ``None`` or the dtype every floating leaf is cast to.

    Returns:
      The params, a pytree of arrays.

    Examples:
      >>> from jgd.benchmark import load_tree
      >>> {k: v.dtype.name for k, v in load_tree("tiny", dtype="bfloat16").items()}["w1"]
      'bfloat16'
    """
    if spec in BUILT_IN:
        params = make_tree(size, spec)
    elif spec.endswith(".json"):
        params = _from_shapes(spec)
    elif ":" in spec:
        params = _from_function(spec)
    else:
        raise ValueError(f"unknown tree {spec!r}: use one of {list(BUILT_IN)}, MODULE:FUNCTION or a shapes .json file")
    if dtype is not None:
        dtype = jnp.dtype(dtype)
        params = jax.tree.map(lambda x: jnp.asarray(x, dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x)) if not isinstance(x, jax.Array) else x, params)

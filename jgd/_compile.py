"""How jgd compiles its own programs (``minimize``'s drivers, a sweep's program).

On CPU they are compiled with LLVM's ``-O1`` instead of XLA's default ``-O2``
(``xla_backend_optimization_level=1``). Compilation is a cost users pay on every fresh
process, and on CPU most of it is LLVM optimising each fused kernel (measured on 2 cores:
a 32-run vmapped ``minimize`` of the digits MLP compiled in 2.49 s at -O2 and 1.10 s at
-O1, and ran in 165 ms and 145 ms; the conv nets of ``benchmarks/host_loop.py`` compiled
in up to 40% less time at the same step time). XLA:CPU's large kernels (dots,
convolutions) are library calls either way. Setting ``--xla_backend_optimization_level``
in ``XLA_FLAGS`` yourself turns this off; other backends are compiled as JAX does.
"""

from __future__ import annotations

import functools
import os

import jax

from jgd._transform import _outside_traces

__all__ = ["jit", "options", "executable"]

_CPU_OPTIONS = {"xla_backend_optimization_level": 1}


def options() -> dict | None:
    """The compiler options of jgd's programs on the default backend (None: JAX's)."""
    if jax.default_backend() != "cpu" or "xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", ""):
        return None
    return _CPU_OPTIONS


class jit:  # noqa: N801 - used as jax.jit is
    """``jax.jit(fun, **kwargs)`` compiled with ``options()`` when called outside a trace:
    the backend is known only when the function is called (importing jgd initialises
    none), so the jitted function is chosen then."""

    def __init__(self, fun, **kwargs):
        functools.update_wrapper(self, fun)
        self._fun, self._kwargs = fun, kwargs
        self._plain = jax.jit(fun, **kwargs)
        self._tuned = None

    def _jitted(self):
        # inside a trace (a sweep's program, a user's jit) the outer program's options rule:
        # JAX refuses compiler options on a nested jit
        chosen = options() if _outside_traces(unknown=False) else None
        if chosen is None:
            return self._plain
        if self._tuned is None:
            self._tuned = jax.jit(self._fun, compiler_options=chosen, **self._kwargs)
        return self._tuned

    def __call__(self, *args, **kwargs):
        return self._jitted()(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self._jitted().lower(*args, **kwargs)

    def _cache_size(self) -> int:
        return self._plain._cache_size() + (0 if self._tuned is None else self._tuned._cache_size())



def executable(program, mesh, args):
    """``program`` (a ``jax.jit`` with the mesh its static first argument) compiled with
    ``options()`` for the shapes and shardings of ``args``, once per process: the lanes
    of a CPU sweep, started together from several threads, share one compilation."""
    leaves, treedef = jax.tree.flatten(args)
    return _executable(program, mesh, treedef, tuple(
        jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding) for x in leaves))


@functools.lru_cache(maxsize=64)
def _executable(program, mesh, treedef, specs):
    return program.lower(mesh, *jax.tree.unflatten(treedef, specs)).compile(compiler_options=options())

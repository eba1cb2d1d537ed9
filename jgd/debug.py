"""``count_compiles``: how many XLA compilations (and traces) a block of code makes.

"One compilation for every learning rate" is a property of the code around the optimizer as
much as of the optimizer: a framework that keeps it static, a closure or a rebuilt mask can
each retrace. Wrap the code users actually run and count.

Examples:
    >>> step = jax.jit(lambda opt, g, s: opt.update(g, s))
    >>> params = jnp.zeros(3)
    >>> with jgd.debug.count_compiles() as compiles:
    ...     for lr in (1e-3, 1e-2, 1e-1):
    ...         opt = jgd.adam(lr)
    ...         _ = step(opt, params, opt.init(params))
    >>> compiles.of("<lambda>")  # the jitted step: once for the three learning rates
    1
    >>> compiles.count >= 1  # every compilation in the block (eager ops' small programs too)
    True
"""

from __future__ import annotations

import threading
from collections import Counter

import jax

__all__ = ["count_compiles", "CompileCount"]

_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_TRACE = "/jax/core/compile/jaxpr_trace_duration"
_lock = threading.Lock()
_active: list[CompileCount] = []
_listening = False


class CompileCount:
    """What [`jgd.debug.count_compiles`][jgd.debug.count_compiles] counted: ``count`` XLA compilations (``int(c)`` too),
    ``traces`` traces to a jaxpr, and ``names`` the compiled functions' names."""

    def __init__(self):
        self.count = 0
        self.traces = 0
        self.names: Counter[str] = Counter()

    def of(self, name: str) -> int:
        """The compilations of functions called ``name`` (``jax.jit(f)`` compiles as
        ``f.__name__``)."""
        return self.names[name]

    def __int__(self):
        return self.count

    def __repr__(self):
        return f"CompileCount(count={self.count}, traces={self.traces})"


def _plain(name: str) -> str:
    """``jit(f)`` (how JAX names a compiled function) → ``f``."""
    for prefix in ("jit(", "pmap(", "shard_map("):
        if name.startswith(prefix) and name.endswith(")"):
            return name[len(prefix):-1]
    return name


def _on_duration(event: str, duration_secs: float, **kwargs: str | int) -> None:
    if event not in (_BACKEND_COMPILE, _TRACE):
        return
    name = str(kwargs.get("fun_name", ""))
    with _lock:
        for counter in _active:
            if event == _BACKEND_COMPILE:
                counter.count += 1
                counter.names[_plain(name)] += 1
            else:
                counter.traces += 1


class count_compiles:  # noqa: N801 - used as a function: `with jgd.debug.count_compiles() as c`
    """A context manager counting the XLA compilations made inside its block (on this
    process, all threads); nested blocks each count their own. A program found in JAX's
    compilation cache (in memory or the persistent one on disk) is not a compilation."""

    def __enter__(self) -> CompileCount:
        global _listening
        with _lock:
            if not _listening:
                jax.monitoring.register_event_duration_secs_listener(_on_duration)
                _listening = True
            self._counter = CompileCount()
            _active.append(self._counter)
        return self._counter

    def __exit__(self, *exc):
        with _lock:
            _active.remove(self._counter)
        return False

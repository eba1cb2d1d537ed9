"""``jgd.Eval``: held-out metrics computed inside the compiled descent loop."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Eval"]


class Eval:
    """Held-out evaluation for [`jgd.minimize`][jgd.minimize.minimize] and [`jgd.sweep`][jgd.sweep.sweep] (``evaluate=``).

    ``fun(params[, model_state][, data])`` returns a scalar (named ``"eval"``) or a dict
    of named scalars, evaluated inside the compiled loop at the params after ``every``,
    ``2·every``, … steps (global step counts, so a resumed run evaluates where an
    uninterrupted one would).

    Args:
      fun: the metric function; ``model_state`` is passed when the run has one, ``data``
        when it is given.
      data: held-out data (a pytree of arrays), passed whole to ``fun``.
      every: steps between evaluations; ``None`` evaluates once, after ``steps``.
      monitor: a metric name; then ``Result.best_params``/``best_loss``/``best_step``
        follow that metric instead of the training loss.
      mode: ``"min"`` or ``"max"``: which way ``monitor`` improves.
      patience: stop after this many evaluations in a row without improvement of the
        monitored metric (``Result.stopped_early``).

    Examples:
      >>> held_out = jnp.array([1.9, 2.0, 2.1])
      >>> val = jgd.Eval(lambda w, d: jnp.mean((d - w) ** 2), data=held_out, every=10, monitor="eval")
      >>> r = jgd.minimize(lambda w: jnp.sum((w - 2.0) ** 2), jnp.zeros(()), jgd.sgd(0.05),
      ...                  steps=30, evaluate=val)
      >>> r.eval_steps
      Array([10, 20, 30], dtype=int32)
      >>> [round(v, 3) for v in r.evals["eval"].tolist()]  # falls as w approaches 2
      [0.493, 0.066, 0.014]
      >>> int(r.best_step)
      30
    """

    def __init__(self, fun: Callable, data=None, every: int | None = None, monitor: str | None = None,
                 mode: str = "min", patience: int | None = None):
        if not callable(fun):
            raise TypeError(f"Eval fun must be callable, got {fun!r}")
        if every is not None and (isinstance(every, bool) or not isinstance(every, (numbers.Integral, np.integer))):
            raise TypeError(f"Eval every must be an int or None, got {every!r}")
        if every is not None and every < 1:
            raise ValueError(f"Eval every must be >= 1, got {every!r}")
        if monitor is not None and not isinstance(monitor, str):
            raise TypeError(f"Eval monitor must be a metric name (str) or None, got {monitor!r}")
        if mode not in ("min", "max"):
            raise ValueError(f"Eval mode must be 'min' or 'max', got {mode!r}")
        if patience is not None:
            if isinstance(patience, bool) or not isinstance(patience, (numbers.Integral, np.integer)):
                raise TypeError(f"Eval patience must be an int or None, got {patience!r}")
            if patience < 1:
                raise ValueError(f"Eval patience must be >= 1, got {patience!r}")
            if monitor is None:
                raise ValueError("Eval patience needs monitor= (the metric whose improvement it waits for)")
        self.fun, self.data, self.monitor, self.mode = fun, data, monitor, mode
        self.every = None if every is None else int(every)
        self.patience = None if patience is None else int(patience)

    def __repr__(self):
        return (f"Eval({getattr(self.fun, '__name__', self.fun)}, every={self.every}, "
                f"monitor={self.monitor!r}, mode={self.mode!r}, patience={self.patience})")

    def static(self, steps: int) -> EvalConfig:
        """The hashable part (everything but ``data``), with ``every`` checked against
        ``steps``."""
        every = steps if self.every is None else self.every
        if every > steps:
            raise ValueError(
                f"Eval every={every} must be <= steps={steps} (no evaluation would fall in the run)"
            )
        return EvalConfig(self.fun, every, self.monitor, self.mode, self.patience, self.data is not None)


class EvalConfig(NamedTuple):
    """The static half of [`jgd.Eval`][jgd.Eval], part of the compiled loop's cache key."""

    fun: Callable
    every: int
    monitor: str | None
    mode: str
    patience: int | None
    has_data: bool

    def bind(self, data) -> Eval:
        """The [`jgd.Eval`][jgd.Eval] of this configuration with ``data`` (a traced value inside a
        sweep's program)."""
        return Eval(self.fun, data, self.every, self.monitor, self.mode, self.patience)

    def metrics(self, params, model_state, data, has_model_state: bool) -> dict:
        """The metrics as a dict of floating scalars (a bare scalar is named ``"eval"``)."""
        args = (params,) + ((model_state,) if has_model_state else ()) + ((data,) if self.has_data else ())
        out = self.fun(*args)
        return out if isinstance(out, dict) else {"eval": out}

    def check(self, params, model_state, data, has_model_state: bool) -> dict:
        """Traces ``fun`` abstractly: a clear error for anything but floating scalars, and
        for a ``monitor`` that names no metric. Returns name → ShapeDtypeStruct."""
        out = jax.eval_shape(lambda p, s, d: self.fun(*(
            (p,) + ((s,) if has_model_state else ()) + ((d,) if self.has_data else ()))),
            params, model_state, data)
        named = out if isinstance(out, dict) else {"eval": out}
        if not named:
            raise ValueError("Eval fun returned an empty dict; return a scalar or a dict of named scalars")
        for name, value in named.items():
            if not isinstance(name, str):
                raise ValueError(f"Eval fun's dict keys must be metric names (str), got {name!r}")
            if not (isinstance(value, jax.ShapeDtypeStruct) and value.shape == ()
                    and jnp.issubdtype(value.dtype, jnp.floating)):
                raise ValueError(
                    f"Eval fun must return a floating scalar or a dict of floating scalars; "
                    f"metric {name!r} is {value!r} (reduce it to a scalar, e.g. with jnp.mean)"
                )
        if self.monitor is not None and self.monitor not in named:
            raise ValueError(
                f"Eval monitor={self.monitor!r} names no metric; Eval fun returns {sorted(named)}"
            )
        return named

    def improved(self, value, best):
        """``value`` better than ``best`` in this mode (NaN never is)."""
        return value < best if self.mode == "min" else value > best

    def worst(self, dtype):
        return jnp.asarray(jnp.inf if self.mode == "min" else -jnp.inf, dtype)


class Best(NamedTuple):
    """The best iterate so far (by the monitored metric, else by the training loss) and
    how many evaluations in a row have not improved on it; part of the loop's state so
    a resumed run tracks it on."""

    params: Any
    model_state: Any
    value: jax.Array
    step: jax.Array
    waiting: jax.Array

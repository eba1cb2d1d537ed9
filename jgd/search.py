"""Search beyond grids: distributions as sweep axes (random search) and successive halving.

Random search (Bergstra & Bengio, JMLR 2012) samples every axis, so N runs try N values
of each hyperparameter instead of N^(1/d). Successive halving (Jamieson & Talwalkar,
AISTATS 2016; the rung schedule of Hyperband, Li et al., JMLR 2018) spends few steps on
every configuration and more on the promising ones. In jgd each rung is ONE compiled,
vmapped program over its configurations, and the survivors continue from where they
stopped (optimizer state, sampler position, keys) instead of restarting.
"""

from __future__ import annotations

import math
import numbers

import jax
import numpy as np

__all__ = ["loguniform", "uniform", "choice", "Distribution"]


class Distribution:
    """A sweep axis to sample from (with ``sweep(..., samples=N)``)."""

    def sample(self, key, n: int) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


def _number(name, value):
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


class uniform(Distribution):
    """Uniform on ``[low, high)``.

    Args:
      low: the lower end.
      high: the upper end (``> low``).

    Examples:
      >>> jgd.uniform(0.0, 0.99).sample(jax.random.key(0), 3).shape
      (3,)
    """

    def __init__(self, low, high):
        self.low, self.high = _number("low", low), _number("high", high)
        if self.low >= self.high:
            raise ValueError(f"uniform needs low < high, got low={low!r}, high={high!r}")

    def sample(self, key, n):
        return np.asarray(jax.random.uniform(key, (n,), minval=self.low, maxval=self.high,
                                             dtype=np.float32 if not jax.config.read("jax_enable_x64") else np.float64))

    def __repr__(self):
        return f"uniform({self.low:g}, {self.high:g})"


class loguniform(Distribution):
    """Uniform in ``log`` on ``[low, high)``, ``0 < low < high`` (learning rates, decays).

    Args:
      low: the lower end (``> 0``).
      high: the upper end (``> low``).

    Examples:
      >>> lrs = jgd.loguniform(1e-4, 1.0).sample(jax.random.key(0), 1000)
      >>> bool((lrs >= 1e-4).all() and (lrs < 1.0).all())
      True
    """

    def __init__(self, low, high):
        self.low, self.high = _number("low", low), _number("high", high)
        if self.low <= 0:
            raise ValueError(f"loguniform needs low > 0, got low={low!r}")
        if self.low >= self.high:
            raise ValueError(f"loguniform needs low < high, got low={low!r}, high={high!r}")

    def sample(self, key, n):
        dtype = np.float64 if jax.config.read("jax_enable_x64") else np.float32
        logs = jax.random.uniform(key, (n,), minval=math.log(self.low), maxval=math.log(self.high), dtype=dtype)
        return np.clip(np.exp(np.asarray(logs)), dtype(self.low), np.nextafter(dtype(self.high), dtype(0)))

    def __repr__(self):
        return f"loguniform({self.low:g}, {self.high:g})"


class choice(Distribution):
    """Uniform over ``values``.

    Args:
      values: the values to draw from (a non-empty sequence of numbers).

    Examples:
      >>> sorted(set(jgd.choice([0.0, 0.5]).sample(jax.random.key(0), 50).tolist()))
      [0.0, 0.5]
    """

    def __init__(self, values):
        try:
            axis = np.atleast_1d(np.asarray(values))
        except Exception:  # noqa: BLE001
            raise ValueError(f"choice needs a non-empty list of numbers, got {values!r}") from None
        if axis.ndim != 1 or axis.size == 0 or not (np.issubdtype(axis.dtype, np.number) or axis.dtype == np.bool_):
            raise ValueError(f"choice needs a non-empty list of numbers, got {values!r}")
        self.values = axis

    def sample(self, key, n):
        index = np.asarray(jax.random.randint(key, (n,), 0, self.values.size))
        dtype = np.float64 if jax.config.read("jax_enable_x64") else np.float32
        return self.values.astype(dtype)[index]

    def __repr__(self):
        return f"choice({self.values.tolist()})"


def sample_grid(grid: dict, samples: int, key) -> dict:
    """Every axis sampled ``samples`` times (a list as a uniform choice), each axis from a
    key of its own derived from ``key``: name → ``(samples,)`` values."""
    keys = jax.random.split(key, len(grid))
    return {name: (axis if isinstance(axis, Distribution) else choice(axis)).sample(k, samples)
            for (name, axis), k in zip(grid.items(), keys)}

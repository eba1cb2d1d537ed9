"""The points a sweep runs: a grid's product, random draws from its distributions, or
explicit paired points; names checked against the factory and values checked by it."""

from __future__ import annotations

import inspect
import itertools

import jax
import numpy as np

from jgd._arguments import _check_int
from jgd._transform import scalar_dtype
from jgd.search import Distribution, choice, sample_grid

__all__ = ["explicit_points", "grid_points"]


# Samples of a random search come from fold_in(key, this), apart from the seed keys.
_SAMPLE_STREAM = 0x5A3D1E


def _accepted_names(factory):
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    return {
        name for name, p in signature.parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def _check_grid(factory, grid, samples=None, what="grid"):
    """The axes as 1-D numpy arrays (distributions kept as they are), names checked."""
    if not isinstance(grid, dict) or not grid:
        raise ValueError(f"{what} must be a non-empty dict of name -> values, got {grid!r}")
    accepted = _accepted_names(factory)
    axes = {}
    for name, values in grid.items():
        if accepted is not None and name not in accepted:
            raise ValueError(
                f"{what} key {name!r} is not an argument of {getattr(factory, '__name__', factory)}; "
                f"it takes {sorted(accepted)}"
            )
        if isinstance(values, Distribution):
            if what == "points":
                raise ValueError(f"points[{name!r}] is a distribution ({values!r}): points are explicit values; "
                                 "pass grid= with samples=N to draw them")
            if samples is None:
                raise ValueError(
                    f"grid[{name!r}] is a distribution ({values!r}): pass samples=N to draw N points"
                )
            axes[name] = values
            continue
        if isinstance(values, (str, bytes)):
            raise ValueError(f"{what}[{name!r}] must be numbers, got {values!r}")
        try:
            axis = np.asarray(values)
        except Exception:  # noqa: BLE001
            raise ValueError(f"{what}[{name!r}] must be numbers, got {values!r}") from None
        axis = np.atleast_1d(axis)
        if axis.ndim != 1 or axis.size == 0:
            raise ValueError(f"{what}[{name!r}] must be a non-empty 1-D list of numbers, got {values!r}")
        if not (np.issubdtype(axis.dtype, np.number) or axis.dtype == np.bool_) or np.issubdtype(axis.dtype, np.complexfloating):
            raise ValueError(f"{what}[{name!r}] must be real numbers, got {values!r}")
        axes[name] = axis
    return axes


def _check_values(factory, axes, drawn=()):
    """Concrete values are validated by the factory itself, one axis at a time; an axis
    drawn from a continuous distribution (names in ``drawn``) by its least and greatest
    draw (a factory's checks are ranges), not by every draw: 81 draws of 3 axes took as
    long to check as halving's compiled rungs took to run."""
    first = {n: a[0].item() for n, a in axes.items()}
    for name, axis in axes.items():
        values = (axis.min(), axis.max()) if name in drawn else np.unique(axis)
        for value in values:
            factory(**{**first, name: value.item()})


def explicit_points(factory, points):
    """``points=``: ``(points (K, H), (K,), axes, hparams)``, the i-th values of every name
    paired (not a product)."""
    axes = _check_grid(factory, points, what="points")
    lengths = {name: axis.size for name, axis in axes.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"points' lists must have one length (they are paired, not a product), got {lengths}")
    _check_values(factory, axes)
    dtype = scalar_dtype()
    stacked = np.stack([np.asarray(v, dtype) for v in axes.values()], axis=1)
    return stacked, (stacked.shape[0],), axes, dict(axes)


def grid_points(factory, grid, samples, key):
    """The points a sweep runs: ``(points (G, H), grid_shape, axes, hparams)``. A grid's
    points are the Cartesian product of its axes; with ``samples=N`` every axis is
    sampled N times from a key derived from ``key`` apart from the seed keys."""
    if samples is not None:
        samples = _check_int("samples", samples, 1)
    axes = _check_grid(factory, grid, samples)
    dtype = scalar_dtype()
    if samples is None:
        _check_values(factory, axes)
        points = np.stack([np.asarray(v, dtype) for v in itertools.product(*axes.values())])  # (G, H)
        grid_shape = tuple(a.size for a in axes.values())
        hparams = dict(zip(axes, np.meshgrid(*axes.values(), indexing="ij")))
        return points, grid_shape, axes, hparams
    columns = sample_grid(axes, samples, jax.random.fold_in(key, _SAMPLE_STREAM))
    _check_values(factory, columns, drawn={n for n, a in axes.items() if isinstance(a, Distribution)
                                           and not isinstance(a, choice)})
    points = np.stack([np.asarray(v, dtype) for v in columns.values()], axis=1)
    return points, (samples,), columns, dict(columns)

"""``jgd.sweep``: a whole hyperparameter grid × seeds as one compiled, vmapped program."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jgd.minimize import _check_int, minimize

__all__ = ["sweep", "SweepResult"]

# Per-run working set (params, gradient, two moments) that keeps a CPU chunk in cache;
# measured on 2 cores: 64 runs of a 10k-param MLP ran 0.55-0.69x sequential speed as one
# vmap and 1.2-1.35x in chunks of 8.
_CPU_CHUNK_BYTES = 2 * 2**20


@dataclasses.dataclass
class SweepResult:
    """The outcome of :func:`sweep` (plain numpy arrays; it pickles).

    Attributes:
      grid: the grid as given, each axis a 1-D numpy array.
      hparams: each hyperparameter's value at every grid point, shaped ``grid_shape``.
      losses: ``(*grid_shape, seeds, steps)``, NaN past each run's stop.
      final_loss: ``(*grid_shape, seeds)``: each run's last recorded loss.
      best_loss: ``(*grid_shape, seeds)``: each run's best recorded loss.
      num_steps, converged, diverged: per run, as in :class:`jgd.Result`.
    """

    grid: dict
    hparams: dict
    losses: np.ndarray
    final_loss: np.ndarray
    best_loss: np.ndarray
    num_steps: np.ndarray
    converged: np.ndarray
    diverged: np.ndarray

    @property
    def grid_shape(self):
        return self.final_loss.shape[:-1]

    def mean_final_loss(self):
        """Mean over seeds of the final loss; inf where any seed is not finite."""
        finite = np.isfinite(self.final_loss).all(-1)
        return np.where(finite, np.where(finite[..., None], self.final_loss, 0).mean(-1), np.inf)

    def best(self) -> dict:
        """The grid point with the lowest mean final loss over seeds, among grid points
        whose runs are all finite: its hyperparameters, ``final_loss`` and grid ``index``."""
        mean = self.mean_final_loss()
        if not np.isfinite(mean).any():
            raise ValueError("no grid point has finite final losses for all seeds")
        index = np.unravel_index(np.argmin(mean), mean.shape)
        out = {k: v[index].item() for k, v in self.hparams.items()}
        out.update(final_loss=float(mean[index]), index=tuple(int(i) for i in index))
        return out

    def table(self, top: int | None = None) -> str:
        """A text table sorted by mean final loss (the best row marked ``*``)."""
        mean = self.mean_final_loss()
        spread = np.where(np.isfinite(mean), np.nan_to_num(self.final_loss, nan=0).std(-1), np.nan)
        order = np.argsort(mean, axis=None, kind="stable")
        if top is not None:
            order = order[:top]
        names = list(self.hparams)
        header = " ".join(f"{n:>14}" for n in names) + f" {'final loss':>12} {'seed std':>10}"
        lines = ["  " + header, "  " + "-" * len(header)]
        best = np.argmin(mean) if np.isfinite(mean).any() else -1
        for flat in order:
            index = np.unravel_index(flat, mean.shape)
            values = " ".join(f"{self.hparams[n][index]:>14.6g}" for n in names)
            loss = "diverged" if not np.isfinite(mean[index]) else f"{mean[index]:.6g}"
            mark = "*" if flat == best else " "
            lines.append(f"{mark} {values} {loss:>12} {spread[index]:>10.3g}")
        return "\n".join(lines)

    def plot(self, path) -> None:
        """Writes a PNG: loss curves coloured by learning rate (left) and final loss
        against the first grid axis for each value of the others, seed spread shaded."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = list(self.hparams)
        first = names[0]
        fig, (curves, finals) = plt.subplots(1, 2, figsize=(12, 4.5))
        lr_values = self.hparams[first]
        finite = lr_values[np.isfinite(lr_values)]
        norm = matplotlib.colors.LogNorm(vmin=max(finite.min(), 1e-12), vmax=max(finite.max(), 1e-12)) if (
            finite.min() > 0) else matplotlib.colors.Normalize(finite.min(), finite.max())
        cmap = plt.get_cmap("viridis")
        for index in np.ndindex(*self.grid_shape):
            curve = np.nanmean(np.where(np.isfinite(self.losses[index]), self.losses[index], np.nan), axis=0)
            curves.plot(curve, color=cmap(norm(lr_values[index])), lw=0.7, alpha=0.8)
        curves.set(yscale="log", xlabel="step", ylabel="loss (mean over seeds)", title=f"curves by {first}")
        fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=curves, label=first)
        axis = self.grid[first]
        rest = [n for n in names if n != first]
        loss = np.moveaxis(self.final_loss, 0, -2)  # (*other axes, first, seeds)
        for other in np.ndindex(*loss.shape[:-2]):
            runs = np.where(np.isfinite(loss[other]), loss[other], np.nan)
            mean, low, high = np.nanmean(runs, -1), np.nanmin(runs, -1), np.nanmax(runs, -1)
            label = ", ".join(f"{n}={self.grid[n][i]:g}" for n, i in zip(rest, other)) or "final loss"
            finals.plot(axis, mean, marker=".", label=label)
            finals.fill_between(axis, low, high, alpha=0.2)
        finals.set(xscale="log" if np.all(axis > 0) else "linear", yscale="log", xlabel=first,
                   ylabel="final loss", title="final loss (seed min-max shaded)")
        finals.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


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


def _check_grid(factory, grid):
    if not isinstance(grid, dict) or not grid:
        raise ValueError(f"grid must be a non-empty dict of name -> values, got {grid!r}")
    accepted = _accepted_names(factory)
    axes = {}
    for name, values in grid.items():
        if accepted is not None and name not in accepted:
            raise ValueError(
                f"grid key {name!r} is not an argument of {getattr(factory, '__name__', factory)}; "
                f"it takes {sorted(accepted)}"
            )
        if isinstance(values, (str, bytes)):
            raise ValueError(f"grid[{name!r}] must be numbers, got {values!r}")
        try:
            axis = np.asarray(values)
        except Exception:  # noqa: BLE001
            raise ValueError(f"grid[{name!r}] must be numbers, got {values!r}") from None
        axis = np.atleast_1d(axis)
        if axis.ndim != 1 or axis.size == 0:
            raise ValueError(f"grid[{name!r}] must be a non-empty 1-D list of numbers, got {values!r}")
        if not (np.issubdtype(axis.dtype, np.number) or axis.dtype == np.bool_) or np.issubdtype(axis.dtype, np.complexfloating):
            raise ValueError(f"grid[{name!r}] must be real numbers, got {values!r}")
        axes[name] = axis
    # Concrete values are validated by the factory itself, one axis at a time.
    first = {n: a[0].item() for n, a in axes.items()}
    for name, axis in axes.items():
        for value in axis:
            factory(**{**first, name: value.item()})
    return axes


def _chunk_size(params_spec, runs_per_device):
    if jax.default_backend() != "cpu":
        return runs_per_device
    leaves = jax.tree.leaves(params_spec)
    per_run = 4 * sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in leaves)
    chunk = max(1, _CPU_CHUNK_BYTES // max(per_run, 1))
    chunk = 1 << (int(chunk).bit_length() - 1)  # a power of two
    return int(min(chunk, runs_per_device))


def sweep(
    fun: Callable,
    params,
    factory: Callable,
    grid: dict,
    *,
    seeds: int = 1,
    key=None,
    chunk_size: int | None = None,
    **minimize_kwargs,
) -> SweepResult:
    """Runs :func:`jgd.minimize` for every point of ``grid`` × ``seeds`` as ONE program.

    Args:
      fun: the loss, as for :func:`jgd.minimize`.
      params: a pytree, or a function ``key -> params`` (a fresh init per seed).
      factory: an optimizer factory, e.g. ``jgd.momentum``; called with each grid point.
      grid: ``{name: values}``; the Cartesian product of the axes is swept.
      seeds: runs per grid point; seed ``s`` uses ``jax.random.split(key, seeds)[s]``
        for both ``params(k)`` and the mini-batch sampler.
      key: PRNG key (default ``jax.random.key(0)``).
      chunk_size: runs vmapped together on one device; chunks run one after another
        inside the same program. Default: all runs on GPU/TPU; on CPU as many as keep a
        chunk's params and optimizer state within ~2 MiB of cache.
      **minimize_kwargs: ``steps``, ``data``, ``batch_size``, ``microbatches``, ``tol``,
        ``has_aux`` as for :func:`jgd.minimize`.

    Run ``(i, s)`` equals ``minimize(fun, p, factory(**hparams_i), key=k_s, ...)`` with
    the grid values as float32 (float64 under x64) scalars. With several devices
    (``jax.devices()``, hosts joined by ``jax.distributed.initialize`` included) the run
    axis is sharded over a 1-D mesh; every process gets the whole result. A diverging
    run gives NaN/inf in its own row only.

    Example::

      >>> s = jgd.sweep(loss, params, jgd.momentum,
      ...               grid={"learning_rate": jnp.logspace(-3, 0, 16), "beta": [0.0, 0.9]},
      ...               seeds=2, steps=200)
      >>> print(s.table(top=5)); s.best()
    """
    if not callable(factory):
        raise TypeError(f"factory must be an optimizer factory such as jgd.adam, got {factory!r}")
    seeds = _check_int("seeds", seeds, 1)
    if chunk_size is not None:
        chunk_size = _check_int("chunk_size", chunk_size, 1)
    if "steps" not in minimize_kwargs:
        raise TypeError("sweep needs steps=")
    for name in ("key", "init_state", "progress"):
        if name in minimize_kwargs:
            raise TypeError(f"sweep does not take {name}= (pass key= to sweep itself)")
    axes = _check_grid(factory, grid)
    if key is None:
        key = jax.random.key(0)
    elif not jnp.issubdtype(jnp.result_type(key), jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)  # a raw uint32 key from jax.random.PRNGKey
    grid_shape = tuple(a.size for a in axes.values())
    dtype = jnp.dtype(jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32)
    points = np.stack(
        [np.asarray(v, dtype) for v in itertools.product(*axes.values())]
    )  # (G, H)
    num_points = points.shape[0]
    seed_keys = jax.random.split(key, seeds)
    key_data = np.asarray(jax.random.key_data(seed_keys))
    run_points = np.repeat(points, seeds, axis=0)  # runs ordered (grid point, seed)
    run_keys = np.tile(key_data, (num_points,) + (1,) * (key_data.ndim - 1))
    runs = run_points.shape[0]

    devices = jax.devices()
    num_devices = len(devices)
    per_device = -(-runs // num_devices)
    params_spec = jax.eval_shape(params, seed_keys[0]) if callable(params) else params
    chunk = chunk_size or _chunk_size(params_spec, per_device)
    chunk = min(chunk, per_device)
    per_device = -(-per_device // chunk) * chunk
    total = per_device * num_devices
    # Padding repeats run 0; its copies are dropped below.
    pad = total - runs
    run_points = np.concatenate([run_points, np.repeat(run_points[:1], pad, 0)])
    run_keys = np.concatenate([run_keys, np.repeat(run_keys[:1], pad, 0)])

    names = tuple(axes)
    data = minimize_kwargs.pop("data", None)
    program = _program(fun, params if callable(params) else None, factory, names,
                       chunk, num_devices, tuple(sorted(minimize_kwargs.items())),
                       jax.random.key_impl(seed_keys))
    fixed_params = None if callable(params) else params
    mesh = Mesh(np.asarray(devices), ("runs",))
    shard = NamedSharding(mesh, PartitionSpec("runs"))
    replicated = NamedSharding(mesh, PartitionSpec())
    run_points = _put(run_points, shard)
    run_keys = _put(run_keys, shard)
    fixed_params = jax.tree.map(lambda x: _put(np.asarray(x), replicated), fixed_params)
    data = jax.tree.map(lambda x: _put(np.asarray(x), replicated), data)
    out = program(mesh, run_points, run_keys, fixed_params, data)
    out = jax.tree.map(_gather, out)
    out = jax.tree.map(lambda x: x[:runs].reshape(grid_shape + (seeds,) + x.shape[1:]), out)
    losses, num_steps, converged, diverged, best_loss = out
    last = np.clip(num_steps - 1, 0, None)
    final_loss = np.take_along_axis(losses, last[..., None], axis=-1)[..., 0]
    mesh_values = np.meshgrid(*axes.values(), indexing="ij")
    return SweepResult(
        grid=axes,
        hparams={n: v for n, v in zip(names, mesh_values)},
        losses=losses,
        final_loss=final_loss,
        best_loss=best_loss,
        num_steps=num_steps,
        converged=converged,
        diverged=diverged,
    )


def _put(x, sharding):
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    # Every process holds the same host values; each keeps its own shards.
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _gather(x):
    if jax.process_count() == 1 or x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


@functools.lru_cache(maxsize=64)
def _program(fun, init_fn, factory, names, chunk, num_devices, kwargs, key_impl):
    kwargs = dict(kwargs)

    def one(point, key_data, fixed_params, data):
        key = jax.random.wrap_key_data(key_data, impl=key_impl)
        params = init_fn(key) if init_fn is not None else fixed_params
        opt = factory(**{n: point[i] for i, n in enumerate(names)})
        r = minimize(fun, params, opt, key=key, data=data, **kwargs)
        return r.losses, r.num_steps, r.converged, r.diverged, r.best_loss

    def local(points, keys, fixed_params, data):
        batched = jax.vmap(one, in_axes=(0, 0, None, None))
        shaped = lambda x: x.reshape((-1, chunk) + x.shape[1:])  # noqa: E731
        out = jax.lax.map(lambda pk: batched(pk[0], pk[1], fixed_params, data), (shaped(points), shaped(keys)))
        return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), out)

    @functools.partial(jax.jit, static_argnums=0)
    def program(mesh, points, keys, fixed_params, data):
        runs = PartitionSpec("runs")
        return jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(runs, runs, PartitionSpec(), PartitionSpec()),
            out_specs=runs,
            check_vma=False,
        )(points, keys, fixed_params, data)

    return program

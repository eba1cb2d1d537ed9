"""``jgd.SweepResult``: every run of a sweep, its metrics and its trained models, and the
ways to read them (``best``, ``table``, ``plot``, ``to_dataframe``)."""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import jax
import numpy as np

__all__ = ["SweepResult"]


def _last_recorded(values):
    """The last non-NaN entry along the last axis (NaN where there is none)."""
    recorded = ~np.isnan(values)
    if values.shape[-1] == 0:
        return np.full(values.shape[:-1], np.nan, values.dtype)
    last = values.shape[-1] - 1 - np.argmax(recorded[..., ::-1], axis=-1)
    out = np.take_along_axis(values, last[..., None], axis=-1)[..., 0]
    return np.where(recorded.any(-1), out, np.nan)


def _smooth(curve, points=200):
    """A moving average over ~1/50 of the run, subsampled to about ``points`` points, so a
    reader sees the trend of a noisy mini-batch curve."""
    steps = curve.shape[-1]
    window = max(1, steps // 50)
    kernel = np.ones(window) / window
    finite = np.where(np.isfinite(curve), curve, np.nan)
    smooth = np.convolve(np.nan_to_num(finite, nan=0.0), kernel, mode="valid")
    counts = np.convolve(np.isfinite(finite).astype(float), kernel, mode="valid")
    smooth = np.where(counts > 0.999, smooth, np.nan)
    x = np.arange(window, steps + 1)
    stride = max(1, smooth.size // points)
    return x[::stride], smooth[::stride]


def _cell(value, spec: str) -> str:
    """A hyperparameter's value in a table or label: numbers by ``spec`` (``">14.6g"``),
    names as they are, ``-`` where the point's factory has no such hyperparameter (NaN)."""
    if isinstance(value, (str, np.str_)):
        text = str(value)
    elif np.isnan(value):
        text = "-"
    else:
        return f"{value:{spec}}"
    width = spec[1:].split(".")[0] if spec.startswith(">") else ""
    return f"{text:>{width}}" if width else text


# the per-run fields, shaped (*grid_shape, seeds, ...)
_PER_RUN = ("losses", "final_loss", "best_loss", "num_steps", "converged", "diverged", "stopped_early", "best_step")
_PER_RUN_TREES = ("aux", "params", "best_params", "model_state", "best_model_state")


@dataclasses.dataclass
class SweepResult:
    """The outcome of [`jgd.sweep`][jgd.sweep.sweep] (plain numpy arrays; it pickles).

    Every per-run field is shaped ``(*grid_shape, seeds, ...)``.

    Attributes:
      grid: the grid as given, each axis a 1-D numpy array.
      hparams: each hyperparameter's value at every grid point, shaped ``grid_shape``.
      losses: ``(..., steps)`` training losses (each step's mini-batch), NaN past the stop.
      final_loss: each run's last recorded training loss.
      best_loss: each run's ``Result.best_loss`` (the monitored metric's best value when
        ``evaluate`` has a ``monitor``, else the lowest training loss).
      best_step: each run's ``Result.best_step``, where ``best_loss`` was reached.
      num_steps: per run, as in [`jgd.Result`][jgd.Result].
      converged: per run, as in [`jgd.Result`][jgd.Result].
      diverged: per run, as in [`jgd.Result`][jgd.Result].
      stopped_early: per run, as in [`jgd.Result`][jgd.Result].
      evals: metric name → ``(..., n_evals)`` held-out values at ``eval_steps``.
      eval_steps: the steps of those evaluations.
      aux: each run's ``Result.aux`` (with ``has_aux``).
      params: each run's final params (``keep_params=True``).
      best_params: each run's best params (``keep_params=True``).
      model_state: each run's final model state, when a model state is given.
      best_model_state: the model state that goes with ``best_params``.
      monitor: the evaluation's monitored metric.
      mode: ``"min"`` or ``"max"``, the monitor's mode.
      sampled: the points were sampled (``samples=N``): ``grid`` holds each axis's
        samples and the grid shape is ``(N,)``.
      rung: with [`jgd.halving`][jgd.halving.halving], the last rung each configuration reached.
      steps_spent: with [`jgd.halving`][jgd.halving.halving], the run-steps of all configurations
        together (for one seed).

    Examples:
      >>> s = jgd.sweep(lambda w: jnp.sum((w - 1.0) ** 2), jnp.zeros(2), jgd.sgd,
      ...               {"learning_rate": [0.01, 0.1, 10.0]}, seeds=2, steps=20)
      >>> s.losses.shape, s.params.shape  # (learning rates, seeds, ...)
      ((3, 2, 20), (3, 2, 2))
      >>> s.diverged[:, 0].tolist()  # a step of 10 diverges, in its own row only
      [False, False, True]
      >>> s.best()["learning_rate"]
      0.1
    """

    grid: dict
    hparams: dict
    losses: np.ndarray
    final_loss: np.ndarray
    best_loss: np.ndarray
    num_steps: np.ndarray
    converged: np.ndarray
    diverged: np.ndarray
    stopped_early: np.ndarray | None = None
    best_step: np.ndarray | None = None
    evals: dict = dataclasses.field(default_factory=dict)
    eval_steps: np.ndarray | None = None
    aux: Any = None
    params: Any = None
    best_params: Any = None
    model_state: Any = None
    best_model_state: Any = None
    monitor: str | None = None
    mode: str = "min"
    sampled: bool = False
    rung: np.ndarray | None = None
    steps_spent: int | None = None

    @classmethod
    def from_runs(cls, out: dict, **fields) -> SweepResult:
        """From the per-run outputs of a sweep's program (numpy, leading run axes)."""
        losses, num_steps = out["losses"], out["num_steps"]
        last = np.clip(num_steps - 1, 0, None)
        final_loss = np.take_along_axis(losses, last[..., None], axis=-1)[..., 0]
        eval_steps = out.get("eval_steps")
        if eval_steps is not None and eval_steps.ndim > 1:
            eval_steps = eval_steps.reshape((-1,) + eval_steps.shape[-1:])[0]
        return cls(
            losses=losses, final_loss=final_loss, best_loss=out["best_loss"], num_steps=num_steps,
            converged=out["converged"], diverged=out["diverged"], stopped_early=out["stopped_early"],
            best_step=out["best_step"], evals=out.get("evals") or {}, eval_steps=eval_steps,
            aux=out.get("aux"), params=out.get("params"), best_params=out.get("best_params"),
            model_state=out.get("model_state"), best_model_state=out.get("best_model_state"),
            **fields,
        )

    @classmethod
    def joined(cls, results: dict[str, SweepResult], name: str = "optimizer") -> SweepResult:
        """One result from sweeps of several factories (``{factory name: its sweep}``):
        every sweep's points flattened, one after another (grid shape ``(K,)``); ``hparams``
        has every factory's hyperparameters (NaN where a factory has none of that name) and
        ``name``, the factory's name at each point; ``best()`` ranks all of them."""
        parts = list(results.values())

        def points(x, r):  # (*r.grid_shape, ...) -> (points, ...)
            return x.reshape((-1,) + x.shape[len(r.grid_shape):])

        flat = [{f: None if getattr(r, f) is None else points(getattr(r, f), r) for f in _PER_RUN} for r in parts]
        sizes = [math.prod(r.grid_shape) for r in parts]
        names = list(dict.fromkeys(n for r in parts for n in r.hparams))
        hparams = {n: np.concatenate([np.asarray(r.hparams[n], np.float64).ravel() if n in r.hparams
                                      else np.full(k, np.nan) for r, k in zip(parts, sizes)]) for n in names}
        hparams[name] = np.concatenate([np.full(k, factory) for factory, k in zip(results, sizes)])
        fields: dict[str, Any] = {f: None if flat[0][f] is None else np.concatenate([part[f] for part in flat])
                                  for f in _PER_RUN}

        def trees(field):
            values = [getattr(r, field) for r in parts]
            if values[0] is None:
                return None
            return jax.tree.map(lambda *xs: np.concatenate([points(x, r) for x, r in zip(xs, parts)]), *values)

        evals = {metric: np.concatenate([points(r.evals[metric], r) for r in parts]) for metric in parts[0].evals}
        first = parts[0]
        return cls(grid=dict(hparams), hparams=hparams, evals=evals, eval_steps=first.eval_steps,
                   monitor=first.monitor, mode=first.mode, sampled=True,
                   **fields, **{field: trees(field) for field in _PER_RUN_TREES})

    @property
    def grid_shape(self):
        return self.final_loss.shape[:-1]

    def scores(self, by: str | None = None, mode: str | None = None):
        """Each run's score for [`best()`][jgd.SweepResult.best]: ``(scores, by, mode)``."""
        if by is None:
            by = self.monitor if self.monitor is not None else "final_loss"
            default_mode = self.mode if self.monitor is not None else "min"
            values = self.best_loss if self.monitor is not None else self.final_loss
        elif by == "final_loss":
            values, default_mode = self.final_loss, "min"
        elif by == "best_loss":
            values, default_mode = self.best_loss, self.mode if self.monitor is not None else "min"
        elif by in self.evals:
            values = _last_recorded(self.evals[by])
            default_mode = self.mode if by == self.monitor else "min"
        else:
            raise ValueError(
                f"by={by!r} names no score; choose 'final_loss', 'best_loss' or an eval metric "
                f"{sorted(self.evals)}"
            )
        mode = default_mode if mode is None else mode
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        return values, by, mode

    def _point_scores(self, by=None, mode=None):
        """Mean score over seeds per grid point, ±inf (the worst) where any run is not
        finite or diverged; and the per-run scores."""
        values, by, mode = self.scores(by, mode)
        usable = np.isfinite(values) & ~self.diverged
        mean = np.where(usable, values, 0).mean(-1)
        worst = np.inf if mode == "min" else -np.inf
        return np.where(usable.all(-1), mean, worst), values, by, mode

    def best(self, by: str | None = None, mode: str | None = None) -> dict:
        """The grid point with the best mean score over seeds, among points whose runs are
        all finite (none diverged).

        ``by``: ``None`` — the monitored metric's best value when ``evaluate`` has a
        ``monitor``, else the final training loss; an eval metric's name — each run's last
        recorded evaluation; ``"final_loss"`` or ``"best_loss"``. ``mode`` defaults to the
        monitor's mode for the monitored metric and ``"min"`` otherwise.

        Returns the hyperparameters, ``score`` (also under the name of ``by``), the grid
        ``index``, the ``seed`` with the best score there and ``params``: that seed's kept
        params (``best_params`` with a monitor, else the final params), ready to use
        without retraining (``None`` with ``keep_params=False``).
        """
        mean, values, by, mode = self._point_scores(by, mode)
        if not np.isfinite(mean).any():
            raise ValueError(f"no grid point has finite {by} scores for all seeds")
        pick = np.argmin if mode == "min" else np.argmax
        index = np.unravel_index(pick(mean), mean.shape)
        runs = values[index]
        seed = int(pick(np.where(np.isfinite(runs), runs, np.inf if mode == "min" else -np.inf)))
        kept = self.best_params if self.monitor is not None else self.params
        out = {k: v[index].item() for k, v in self.hparams.items()}
        out.update({"score": float(mean[index]), by: float(mean[index]),
                    "index": tuple(int(i) for i in index), "seed": seed,
                    "params": None if kept is None else jax.tree.map(lambda x: x[index + (seed,)], kept)})
        return out

    def _columns(self):
        """Name → per-point values shown by [`table()`][jgd.SweepResult.table] (means over seeds)."""
        columns = {"final loss": np.nanmean(np.where(np.isfinite(self.final_loss), self.final_loss, np.nan), -1)
                   if self.final_loss.size else self.final_loss}
        for name, values in self.evals.items():
            columns[name] = np.nanmean(_last_recorded(values), -1)
        if self.monitor is not None:
            columns[f"best {self.monitor}"] = self.best_loss.mean(-1)
            columns["best step"] = self.best_step.mean(-1)
        if self.rung is not None:
            columns["rung"] = self.rung
        return columns

    def table(self, top: int | None = None) -> str:
        """A text table, one row per grid point, sorted by [`best()`][jgd.SweepResult.best]'s default score
        (the best row marked ``*``): the hyperparameters; ``final loss``, the mean over
        seeds of each run's last training (mini-batch) loss; each eval metric's last
        recorded value; with a monitor ``best <metric>`` and ``best step``, the mean best
        value and where it was reached; with [`jgd.halving`][jgd.halving.halving] the ``rung`` each point
        reached; ``seed std`` of the score; ``diverged`` where a run did."""

        mean, values, by, mode = self._point_scores()
        with warnings.catch_warnings():  # all-NaN columns (every seed diverged) stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            columns = self._columns()
            spread = np.nanstd(np.where(np.isfinite(values), values, np.nan), -1)
        key = mean if mode == "min" else -mean
        order = np.argsort(key, axis=None, kind="stable")
        if top is not None:
            order = order[:top]
        names = list(self.hparams)
        header = " ".join(f"{n:>14}" for n in names) + "".join(f" {c:>12}" for c in columns) + f" {'seed std':>10}"
        lines = ["  " + header, "  " + "-" * len(header)]
        best = order[0] if np.isfinite(mean).any() else -1
        for flat in order:
            index = np.unravel_index(flat, mean.shape)
            values_ = " ".join(_cell(self.hparams[n][index], ">14.6g") for n in names)
            cells = "".join(f" {columns[c][index]:>12.6g}" for c in columns)
            mark = "*" if flat == best else " "
            note = "  diverged" if self.diverged[index].any() else ""
            lines.append(f"{mark} {values_}{cells} {spread[index]:>10.3g}{note}")
        return "\n".join(lines)

    def plot(self, path) -> None:
        """Writes a PNG: smoothed training-loss curves coloured by the first
        hyperparameter; the held-out curves of the best points (with ``evaluate``); and the
        score against the first grid axis for each value of the others, seed spread
        shaded. The best point is drawn in black."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        mean, values, by, mode = self._point_scores()
        has_best = np.isfinite(mean).any()
        best = np.unravel_index((np.argmin if mode == "min" else np.argmax)(mean), mean.shape) if has_best else None
        names = list(self.hparams)
        first = names[0]
        panels = 3 if self.evals else 2
        fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5))
        curves = axes[0]
        first_values = self.hparams[first]
        finite = first_values[np.isfinite(first_values)]
        log = finite.min() > 0
        norm = (matplotlib.colors.LogNorm(finite.min(), max(finite.max(), finite.min() * (1 + 1e-9))) if log
                else matplotlib.colors.Normalize(finite.min(), finite.max()))
        cmap = plt.get_cmap("viridis")

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            # on a grid, the other axes' values get a line style each, so (e.g.) beta's runs tell apart
            others = [n for n in names if n != first] if not (self.sampled or self.rung is not None) else []
            styles = ["-", "--", ":", "-."]
            for index in np.ndindex(*self.grid_shape):
                x, y = _smooth(np.nanmean(np.where(np.isfinite(self.losses[index]), self.losses[index], np.nan), 0))
                is_best = index == best
                style = styles[int(np.ravel_multi_index(index[1:], self.grid_shape[1:])) % 4] if others else "-"
                curves.plot(x, y, color="black" if is_best else cmap(norm(first_values[index])), ls=style,
                            lw=1.8 if is_best else 0.6, alpha=1.0 if is_best else 0.6, zorder=3 if is_best else 2)
            for other in np.ndindex(*self.grid_shape[1:]) if others and len(others) <= 2 else ():
                label = ", ".join(f"{n}={self.grid[n][i]:g}" for n, i in zip(others, other))
                curves.plot([], [], color="grey", ls=styles[int(np.ravel_multi_index(other, self.grid_shape[1:])) % 4],
                            label=label)
            if others:
                curves.legend(fontsize=7, title="line style")
        curves.set(yscale="log", xlabel="step", ylabel="training loss (mean over seeds, smoothed)",
                   title=f"training curves by {first}")
        fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=curves, label=first)
        if self.evals:
            metric = self.monitor if self.monitor is not None else next(iter(self.evals))
            held_out = axes[1]
            with warnings.catch_warnings():  # entries past a halving run's last rung are NaN for every seed
                warnings.simplefilter("ignore", RuntimeWarning)
                evals = np.nanmean(self.evals[metric], axis=-2)  # mean over seeds
            flat_order = np.argsort(mean if mode == "min" else -mean, axis=None, kind="stable")[:8]
            for rank, flat in enumerate(flat_order):
                index = np.unravel_index(flat, mean.shape)
                label = ", ".join(f"{n}={_cell(self.hparams[n][index], '.3g')}" for n in names)
                held_out.plot(self.eval_steps, evals[index], marker=".", label=label,
                              color="black" if rank == 0 and has_best else None, lw=1.8 if rank == 0 else 0.9)
            held_out.set(xlabel="step", ylabel=f"{metric} (mean over seeds)", title=f"held-out {metric}, best 8 points")
            held_out.legend(fontsize=7)
        scores = axes[-1]
        axis = self.grid[first]
        rest = [n for n in names if n != first]
        runs = np.moveaxis(np.where(np.isfinite(values), values, np.nan), 0, -2)  # (*others, first, seeds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if self.sampled or self.rung is not None:  # scattered points, not axes
                colour = None if self.rung is None else self.rung
                drawn = scores.scatter(axis, np.nanmean(runs, -1), c=colour, s=12, label=by)
                if self.rung is not None:
                    fig.colorbar(drawn, ax=scores, label="rung reached", ticks=range(int(np.max(self.rung)) + 1))
            else:
                for other in np.ndindex(*runs.shape[:-2]):
                    r = runs[other]
                    label = ", ".join(f"{n}={self.grid[n][i]:g}" for n, i in zip(rest, other)) or by
                    scores.plot(axis, np.nanmean(r, -1), marker=".", label=label)
                    scores.fill_between(axis, np.nanmin(r, -1), np.nanmax(r, -1), alpha=0.2)
        if has_best:
            scores.plot([self.hparams[first][best]], [mean[best]], "k*", ms=12, label="best")
        positive = np.nanmin(runs) > 0 if np.isfinite(runs).any() else False
        scores.set(xscale="log" if np.all(axis > 0) else "linear", yscale="log" if positive and by.endswith("loss") else "linear",
                   xlabel=first, ylabel=f"{by} (mean over seeds)" if by.endswith("loss") or self.monitor is None
                   else f"held-out {by} (mean over seeds)", title=f"{by} per configuration" if self.sampled or self.rung is not None
                   else f"{by} per point (seed min-max shaded)")
        scores.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    def to_dataframe(self):
        """One row per run: the hyperparameters, ``seed``, the run's scalars and each eval
        metric's last recorded value (needs pandas: ``pip install jgd[pandas]``)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_dataframe needs pandas: pip install 'jgd[pandas]'") from None
        seeds = self.final_loss.shape[-1]
        columns = {name: np.repeat(values[..., None], seeds, -1).ravel() for name, values in self.hparams.items()}
        columns["seed"] = np.broadcast_to(np.arange(seeds), self.final_loss.shape).ravel()
        for name in ("final_loss", "best_loss", "best_step", "num_steps", "converged", "diverged", "stopped_early"):
            values = getattr(self, name)
            if values is not None:
                columns[name] = np.asarray(values).ravel()
        for name, values in self.evals.items():
            columns[name] = _last_recorded(values).ravel()
        if self.rung is not None:
            columns["rung"] = np.repeat(self.rung[..., None], seeds, -1).ravel()
        return pd.DataFrame(columns)

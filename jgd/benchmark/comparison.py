"""``compare``: several optimizers' update steps timed side by side, as a user would.

Every JAX contender is compiled first (its compile time recorded), then all contenders,
torch.optim ones and an in-run memory roofline (a donated axpy) included, are timed in
interleaved rounds: in each round every contender makes one untimed call (its caches are
warm again after the others ran) and then ``repeats`` timed calls. Interleaving spreads
the machine's noise over all contenders alike; the spread of each contender's calls
(interquartile range) is reported so that a ratio inside the noise is not read as a win.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jgd.benchmark.rules import RULES, TORCH_IMPLEMENTATIONS
from jgd.benchmark.timing import bytes_per_step, interleaved_times, roofline_runner, state_bytes, update_runner

__all__ = ["compare", "Comparison", "available_torch_contender", "import_torch"]

@dataclasses.dataclass
class _Contender:
    step: Callable[[], None]  # one update, finished when it returns
    bytes_moved: int
    state_bytes: int
    compile_seconds: float | None


def _jax_contender(opt, params) -> _Contender:
    step, args = update_runner(opt, params)
    start = time.perf_counter()
    compiled = step.lower(*args).compile()
    compile_seconds = time.perf_counter() - start
    carried = {"args": args}

    def run():
        carried["args"] = jax.block_until_ready(compiled(*carried["args"]))

    return _Contender(run, bytes_per_step(opt, params), state_bytes(opt, params), compile_seconds)


def _torch_dtype(torch, dtype):
    name = jnp.dtype(dtype).name
    if not hasattr(torch, name):
        raise ValueError(f"torch contenders need float params; a leaf is {name}")
    return getattr(torch, name)


def import_torch(what: str):
    """torch, set up for timing, or an ImportError saying which extra installs it."""
    # torch's OpenMP workers otherwise spin after each step and slow the next contender
    # (read when torch is first imported).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch
    except ImportError:
        raise ImportError(f"{what} needs PyTorch, which is not installed: pip install 'jgd[bench]' (or torch)") from None
    torch.set_num_threads(os.cpu_count() or 1)
    return torch


def _torch_contender(name: str, params) -> _Contender:
    parts = name.split(".")
    rule, implementation = parts[1] if len(parts) > 1 else "", parts[2] if len(parts) > 2 else None
    if len(parts) > 3 or rule not in RULES or (implementation is not None and implementation not in TORCH_IMPLEMENTATIONS):
        raise ValueError(
            f"unknown torch contender {name!r}: use 'torch.RULE' or 'torch.RULE.IMPLEMENTATION' with RULE one of "
            f"{sorted(RULES)} and IMPLEMENTATION one of {sorted(TORCH_IMPLEMENTATIONS)}"
        )
    torch = import_torch(name)
    tensors = [torch.zeros(tuple(x.shape), dtype=_torch_dtype(torch, x.dtype), requires_grad=True)
               for x in jax.tree.leaves(params)]
    for t in tensors:
        t.grad = torch.full_like(t, 1e-3)
    kwargs = {} if implementation is None else TORCH_IMPLEMENTATIONS[implementation]
    try:
        opt = RULES[rule].torch(torch, tensors, **kwargs)
        opt.step()
    except (RuntimeError, TypeError, ValueError) as error:
        raise ValueError(f"{name} is not available in this torch build for these params: {error}") from None
    state = sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if torch.is_tensor(v))
    params_bytes = sum(t.numel() * t.element_size() for t in tensors)
    return _Contender(opt.step, 3 * params_bytes + 2 * state, state, None)


def available_torch_contender(rule: str, params, implementations=("fused", None)) -> str | None:
    """The first of torch's ``implementations`` of ``rule`` (None: torch's default) that
    this torch build runs for ``params``, as a contender name; None without one (or
    without torch)."""
    for implementation in implementations:
        name = f"torch.{rule}" + ("" if implementation is None else f".{implementation}")
        try:
            _torch_contender(name, params)
        except (ValueError, ImportError):
            continue
        return name
    return None


def _quartiles(times):
    q1, median, q3 = np.percentile(np.asarray(times), [25, 50, 75])
    return float(q1), float(median), float(q3)


@dataclasses.dataclass
class Comparison:
    """What [`jgd.benchmark.compare`][jgd.benchmark.compare] measured: one row per contender (a dict), the machine, and
    the tree's size. ``table()`` renders the rows, ``to_json(path)`` and ``plot(path)``
    keep them.

    Row fields: ``name``; ``us_per_step`` (median of every timed call); ``spread_pct``
    (interquartile range as % of the median); ``ratio`` (median time over the baseline's:
    above 1 is slower); ``within_noise`` (the contender's and the baseline's interquartile
    ranges overlap: the ratio is not a measured difference); ``bytes_per_step`` (params,
    grads and state read, params and state written); ``gb_per_s``; ``pct_roofline`` (of
    the donated axpy timed in the same rounds); ``compile_seconds`` (None for torch);
    ``state_bytes``; ``times_us`` (every timed call).

    Attributes:
      rows: one dict per contender, with the fields above.
      baseline: the name of the contender the ratios divide by.
      num_params: the tree's number of entries.
      num_leaves: the tree's number of leaves.
      roofline_gb_per_s: the streaming bandwidth of a donated axpy, measured in the same rounds.
      machine: the machine: platform, device, cores, versions.
    """

    rows: list[dict]
    baseline: str
    num_params: int
    num_leaves: int
    roofline_gb_per_s: float
    machine: dict

    def row(self, name: str) -> dict:
        for row in self.rows:
            if row["name"] == name:
                return row
        raise KeyError(f"no contender named {name!r}; contenders: {[r['name'] for r in self.rows]}")

    def table(self) -> str:
        width = max(12, *(len(r["name"]) for r in self.rows))
        lines = [
            f"{self.num_params:,} params in {self.num_leaves} leaves; times relative to {self.baseline!r}; "
            f"roofline {self.roofline_gb_per_s:.1f} GB/s (donated axpy, same rounds)",
            f"{'contender':<{width}} {'us/step':>10} {'spread':>7} {'ratio':>8} {'MB/step':>8} {'GB/s':>7} "
            f"{'% roof':>7} {'compile s':>9} {'state MB':>9}",
        ]
        for r in self.rows:
            ratio = f"{r['ratio']:.2f}{'~' if r['within_noise'] and r['name'] != self.baseline else ' '}"
            compile_s = "-" if r["compile_seconds"] is None else f"{r['compile_seconds']:.2f}"
            lines.append(
                f"{r['name']:<{width}} {r['us_per_step']:>10.1f} {r['spread_pct']:>6.0f}% {ratio:>8} "
                f"{r['bytes_per_step'] / 1e6:>8.2f} {r['gb_per_s']:>7.1f} {r['pct_roofline']:>6.0f}% "
                f"{compile_s:>9} {r['state_bytes'] / 1e6:>9.2f}"
            )
        lines.append("ratio: median time / baseline's (> 1 is slower); ~ : within the measured noise "
                     "(interquartile ranges overlap)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, path) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)

    def plot(self, path=None, ax=None):
        """Bars of µs/step with the interquartile range as error bars; saved to ``path``."""
        import matplotlib

        if path is not None and ax is None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure = None
        if ax is None:
            figure, ax = plt.subplots(figsize=(1.2 * len(self.rows) + 2, 3.5))
        names = [r["name"] for r in self.rows]
        medians = [r["us_per_step"] for r in self.rows]
        low = [r["us_per_step"] - r["q1_us"] for r in self.rows]
        high = [r["q3_us"] - r["us_per_step"] for r in self.rows]
        ax.bar(names, medians, yerr=[low, high], capsize=4, color="tab:blue")
        ax.set_ylabel("µs per update (median, IQR)")
        ax.set_title(f"{self.num_params:,} params, {self.num_leaves} leaves")
        ax.tick_params(axis="x", rotation=30)
        if figure is not None:
            figure.tight_layout()
            if path is not None:
                figure.savefig(path, dpi=100)
                plt.close(figure)
        return ax


def _machine():
    return {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
            "cpu_count": os.cpu_count(), "jax": jax.__version__}


def compare(
    contenders: Mapping[str, Any],
    params,
    *,
    repeats: int = 10,
    rounds: int = 3,
    baseline: str | None = None,
) -> Comparison:
    """Times the jitted update step of each contender on ``params``, side by side.

    Args:
      contenders: name → an optax ``GradientTransformation`` (a jgd rule, ``jgd.flat``,
        an optax rule or chain), or a string naming a torch.optim contender:
        ``"torch.RULE"`` (torch's default implementation) or ``"torch.RULE.IMPL"`` with
        RULE one of sgd, momentum, nesterov, adagrad, rmsprop, adam, adamw and IMPL one
        of forloop, foreach, fused (torch tensors shaped and typed like ``params``).
      params: the pytree whose update is timed (its values do not matter; it is copied,
        never donated).
      repeats: timed calls per contender per round.
      rounds: interleaved rounds.
      baseline: the contender ratios are taken against (default: the first).

    Every carried buffer (params, state, grads) is donated; compile time is excluded
    from the step times and reported apart.

    Examples:
      >>> import optax
      >>> from jgd.benchmark import compare, make_tree
      >>> result = compare({"jgd": jgd.momentum(1e-3), "optax": optax.sgd(1e-3, momentum=0.9)},
      ...                  make_tree(10_000, "tiny"), repeats=3, rounds=2)
      >>> [row["name"] for row in result.rows], result.row("jgd")["ratio"]
      (['jgd', 'optax'], 1.0)
      >>> print(result.table())  # doctest: +SKIP
    """
    if not isinstance(contenders, Mapping) or not contenders:
        raise TypeError(f"contenders must be a non-empty dict of name -> optimizer, got {contenders!r}")
    for name, value in (("repeats", repeats), ("rounds", rounds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    baseline = next(iter(contenders)) if baseline is None else baseline
    if baseline not in contenders:
        raise ValueError(f"baseline {baseline!r} is not a contender; contenders: {list(contenders)}")
    leaves = jax.tree.leaves(params)
    if not leaves or not all(hasattr(x, "shape") and hasattr(x, "dtype") for x in leaves):
        raise TypeError(f"params must be a non-empty pytree of arrays, got {params!r}")
    built = {}
    for name, contender in contenders.items():
        if isinstance(contender, str):
            if not contender.startswith("torch."):
                raise ValueError(f"contender {name!r} is the string {contender!r}: strings name torch.optim "
                                 "contenders ('torch.adam', 'torch.adam.fused', ...); pass optax/jgd optimizers as objects")
            built[name] = _torch_contender(contender, params)
        elif hasattr(contender, "init") and hasattr(contender, "update"):
            built[name] = _jax_contender(contender, params)
        else:
            raise TypeError(f"contender {name!r} must be an optax GradientTransformation or a 'torch.*' name, "
                            f"got {contender!r}")
    num_params = sum(int(np.prod(x.shape)) for x in leaves)
    roof_size = max(num_params, 1000)
    axpy, axpy_args = roofline_runner(roof_size)
    roof = {"args": axpy_args}

    def roofline():
        roof["args"] = jax.block_until_ready(axpy(*roof["args"]))

    steps = {name: c.step for name, c in built.items()} | {"\0roofline": roofline}
    times = interleaved_times(steps, rounds, per_round=repeats)
    roofline_gb_per_s = 3 * 4 * roof_size / statistics.median(times.pop("\0roofline")) / 1e9
    quartiles = {name: _quartiles(t) for name, t in times.items()}
    b_q1, b_median, b_q3 = quartiles[baseline]
    rows = []
    for name, c in built.items():
        q1, median, q3 = quartiles[name]
        gb_per_s = c.bytes_moved / median / 1e9
        rows.append({
            "name": name, "us_per_step": median * 1e6, "q1_us": q1 * 1e6, "q3_us": q3 * 1e6,
            "spread_pct": 100 * (q3 - q1) / median, "ratio": median / b_median,
            "within_noise": bool(q1 <= b_q3 and b_q1 <= q3),
            "bytes_per_step": c.bytes_moved, "gb_per_s": gb_per_s, "pct_roofline": 100 * gb_per_s / roofline_gb_per_s,
            "compile_seconds": c.compile_seconds, "state_bytes": c.state_bytes,
            "times_us": [t * 1e6 for t in times[name]],
        })
    return Comparison(rows, baseline, num_params, len(leaves), roofline_gb_per_s, _machine())

"""Timing one optimizer's jitted update step: the runners (compiled, donated steps)
that `jgd.benchmark.compare` interleaves, and `jgd.benchmark.time_update` for one rule."""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["interleaved_times", "time_update", "update_runner", "bytes_per_step", "state_bytes", "roofline_runner", "roofline_gb_per_s",
           "make_tree", "median_seconds"]


def make_tree(size: int, kind: str = "leaf", dtype=jnp.float32):
    """A params pytree of about ``size`` elements: ``leaf`` (one vector), ``many-leaf``
    (~200 leaves shaped like a transformer's) or ``tiny`` (a handful of small leaves)."""
    if kind == "leaf":
        return {"w": jnp.zeros((int(size),), dtype)}
    if kind == "tiny":
        return {"w1": jnp.zeros((8, 16), dtype), "b1": jnp.zeros(16, dtype),
                "w2": jnp.zeros((16, 4), dtype), "b2": jnp.zeros(4, dtype)}
    if kind == "many-leaf":
        layers = 24
        width = max(8, int(np.sqrt(size / (layers * 12))))
        tree = {}
        for i in range(layers):
            tree[f"layer{i}"] = {
                "attn_qkv": jnp.zeros((width, 3 * width), dtype), "attn_out": jnp.zeros((width, width), dtype),
                "mlp_in": jnp.zeros((width, 4 * width), dtype), "mlp_out": jnp.zeros((4 * width, width), dtype),
                "ln1": jnp.zeros((width,), dtype), "ln2": jnp.zeros((width,), dtype),
                "b_in": jnp.zeros((4 * width,), dtype), "b_out": jnp.zeros((width,), dtype),
            }
        return tree
    raise ValueError(f"kind must be 'leaf', 'many-leaf' or 'tiny', got {kind!r}")


def median_seconds(fn, *args, repeats: int = 20, warmup: int = 3):
    """Median wall time of ``args = fn(*args)`` (the outputs feed the next call, so
    donated buffers stay valid)."""
    for _ in range(warmup):
        args = jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        args = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times), args


def interleaved_times(calls: dict, rounds: int, per_round: int = 1, rewarm: bool = True) -> dict:
    """Seconds of every timed call of each zero-argument callable in ``calls``: one warm-up
    call each, then ``rounds`` rounds in which each callable in turn makes one untimed call
    (with ``rewarm``: its caches are warm again after the others ran) and ``per_round``
    timed ones. Interleaving spreads the machine's noise over all of them alike."""
    for call in calls.values():  # warm-up (and compilation, for a jitted call)
        call()
    times: dict = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            if rewarm:
                call()
            for _ in range(per_round):
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    return times


def update_runner(opt, params, *, steps_per_call: int = 1):
    """A compiled, donated update step and its first arguments: ``args = step(*args)``
    runs ``steps_per_call`` updates. Compile it once, then time it as often as needed
    (benchmarks interleave several runners this way)."""
    grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
    params = jax.tree.map(jnp.array, params)  # our own copy: the caller's is never donated
    # a buffer of its own for every state leaf: a rule whose state holds the params
    # themselves (prodigy's initial point) would otherwise be donated twice
    state = jax.tree.map(jnp.copy, opt.init(params))

    def _step(params, state, grads):
        def body(_, carry):
            p, s = carry
            updates, s = opt.update(grads, s, p)
            return optax.apply_updates(p, updates), s
        return jax.lax.fori_loop(0, steps_per_call, body, (params, state)) + (grads,)

    # The grads go back out unchanged; donating them too lets XLA alias instead of copy.
    step = jax.jit(_step, donate_argnums=(0, 1, 2))
    return step, (params, state, grads)


def _nbytes(tree) -> int:
    return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def state_bytes(opt, params) -> int:
    """The bytes of ``opt``'s state for ``params`` (every leaf of ``opt.init(params)``)."""
    return _nbytes(jax.eval_shape(opt.init, params))


def bytes_per_step(opt, params) -> int:
    """The bytes one update must move: params, grads and state read; params and state
    written (the memory-traffic floor of a first-order rule)."""
    return 3 * _nbytes(params) + 2 * state_bytes(opt, params)


def time_update(
    opt, params, *, repeats: int = 20, warmup: int = 3, steps_per_call: int = 1, roofline: bool = True
) -> dict[str, Any]:
    """Times ``opt``'s jitted update (compile excluded, params/state/grads donated, median
    of ``repeats``). Returns µs/step, the bytes one step must move (params, grads and
    state read; params and state written), the achieved GB/s and, with ``roofline``,
    the streaming bandwidth of a donated axpy over as many floats measured right after
    (``roofline_gb_per_s``) and the step's share of it (``pct_roofline``).

    Args:
      opt: the rule to time.
      params: the params it updates (gradients are drawn like them).
      repeats: timed calls; the median is reported.
      warmup: untimed calls after compiling.
      steps_per_call: updates per timed call (a scan), to amortise dispatch.
      roofline: also measure the machine's streaming bandwidth.

    Returns:
      A dict: ``us_per_step``, ``bytes_per_step``, ``gb_per_s`` and, with ``roofline``,
      ``roofline_gb_per_s`` and ``pct_roofline``.

    """
    step, args = update_runner(opt, params, steps_per_call=steps_per_call)
    seconds, _ = median_seconds(step, *args, repeats=repeats, warmup=warmup)
    moved = bytes_per_step(opt, params)
    per_step = seconds / steps_per_call
    num_params = sum(jnp.size(x) for x in jax.tree.leaves(params))
    result = {
        "us_per_step": per_step * 1e6,
        "bytes_per_step": moved,
        "gb_per_s": moved / per_step / 1e9,
        "num_params": num_params,
        "num_leaves": len(jax.tree.leaves(params)),
        "device": str(jax.devices()[0].device_kind),
    }
    if roofline:
        result["roofline_gb_per_s"] = roofline_gb_per_s(max(num_params, 1000), repeats=repeats)
        result["pct_roofline"] = 100 * result["gb_per_s"] / result["roofline_gb_per_s"]
    return result


def roofline_runner(size: int):
    """An in-place, donated axpy over ``size`` float32s (reads 2, writes 1): the
    streaming bandwidth any update step is bounded by. ``args = axpy(*args)``."""
    x = jnp.zeros(size, jnp.float32)
    y = jnp.ones(size, jnp.float32)
    # y goes back out unchanged; donating it too lets XLA alias it instead of copying.
    return jax.jit(lambda x, y: (x + 1e-3 * y, y), donate_argnums=(0, 1)), (x, y)


def roofline_gb_per_s(size: int = 10_000_000, repeats: int = 20) -> float:
    """Measured streaming bandwidth of `roofline_runner`, in GB/s."""
    axpy, args = roofline_runner(size)
    seconds, _ = median_seconds(axpy, *args, repeats=repeats)
    return 3 * 4 * size / seconds / 1e9

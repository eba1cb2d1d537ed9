"""One run inside a sweep's programs: how its fresh params are drawn and what it outputs
(the same for the device loop's program and the host loop's phases)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["initial_draw", "run_outputs", "starting_point"]


def initial_draw(init_fn, state_fn, key_impl):
    """``key data -> {"params", "model_state"}`` drawn by the init functions (None for
    one not given), or None without any. Meant for ``lax.map`` over the runs, not
    ``vmap``: the init functions' random draws compile to the unbatched kernels (XLA:CPU
    compiles threefry over a run axis to kernels twice the size: measured, the digits
    sweep's program compiled in 2.36 s with its inits vmapped and 1.83 s mapped, against
    1.26 s for one ``minimize``), and an init runs once per run, so running the inits one
    after another costs nothing that shows."""
    if init_fn is None and state_fn is None:
        return None

    def draw(key_data):
        key = jax.random.wrap_key_data(key_data, impl=key_impl)
        return {"params": None if init_fn is None else init_fn(key),
                "model_state": None if state_fn is None else state_fn(key)}

    return draw


def run_outputs(r, keep_params, emit_carry, has_model_state, carried=None) -> dict:
    """A run's ``Result`` as a sweep keeps it: its records and flags; its params unless a
    segment's (those are its carry's, ``carried`` with ``emit_carry``). A run continued
    from ``carried`` whose ``stopped`` is set keeps that state (it stopped in an earlier
    segment: it stays stopped, as in one ``minimize`` call), and ``stopped`` goes on."""
    out = dict(losses=r.losses, num_steps=r.num_steps, converged=r.converged, diverged=r.diverged,
               stopped_early=r.stopped_early, best_loss=r.best_loss, best_step=r.best_step, evals=r.evals,
               eval_steps=r.eval_steps, aux=r.aux)
    if keep_params and not emit_carry:
        out.update(params=r.params, best_params=r.best_params)
        if has_model_state:
            out.update(model_state=r.model_state, best_model_state=r.best_model_state)
    if emit_carry:
        out["carried"] = dict(params=r.params, state=r.state, model_state=r.model_state)
        if carried is not None and "stopped" in carried:
            stopped = carried["stopped"]
            kept = {name: carried[name] for name in ("params", "state", "model_state")}
            out["carried"] = jax.tree.map(lambda old, new: jnp.where(stopped, old, new), kept, out["carried"])
            out["carried"]["stopped"] = stopped | r.converged | r.diverged | r.stopped_early
    return out


def starting_point(continuing, carried, drawn, fixed_params, fixed_state):
    """A run's params, model state and loop state to start from: its carry's (a run
    continued), or the init functions' draws (``drawn``'s entries, None for one not
    given) and otherwise the fixed ones, with a fresh loop state (None)."""
    if continuing:
        return carried["params"], carried["model_state"], carried["state"]
    drawn = drawn or {}
    params = fixed_params if drawn.get("params") is None else drawn["params"]
    model_state = fixed_state if drawn.get("model_state") is None else drawn["model_state"]
    return params, model_state, None

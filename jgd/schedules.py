"""Learning-rate schedules whose numbers are pytree leaves.

optax's schedules are closures: their numbers are constants of the compiled program, so a
new schedule recompiles and a traced peak value cannot go in at all. These are optax's
formulas, with optax's argument names and defaults, as pytrees whose leaves are the
numbers (initial, peak and end values, warmup/transition/decay steps, decay rates): a
jitted step that takes the optimizer compiles once for every schedule value, and
``vmap``/``jgd.sweep`` go over a peak value or a warmup length. Step counts may be floats
(a swept grid value). Concrete values are validated (a ``ValueError`` naming the
argument); traced ones are not. A schedule maps ``count`` (the number of updates so far,
0 on the first step, as in optax) to a scalar.

Examples:
  >>> lr = jgd.schedules.warmup_cosine_decay(0.0, peak_value=1e-2, warmup_steps=10, decay_steps=100)
  >>> opt = jgd.adam(lr)
  >>> round(float(lr(10)), 6), round(float(lr(100)), 6)  # the peak after warmup, then 0
  (0.01, 0.0)
  >>> jax.tree.leaves(lr)  # the numbers are the schedule's leaves (step counts as floats)
  [0.0, 0.01, 10.0, 100.0, 0.0, 1.0]
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jgd._docs import arguments_section
from jgd._transform import check_scalar, scalar_dtype

__all__ = ["constant", "linear", "cosine_decay", "warmup_cosine_decay", "exponential_decay",
           "piecewise_constant", "join", "polynomial", "piecewise_interpolate",
           # optax's names and signatures
           "constant_schedule", "linear_schedule", "polynomial_schedule", "cosine_decay_schedule",
           "warmup_cosine_decay_schedule", "warmup_constant_schedule", "warmup_exponential_decay_schedule",
           "piecewise_constant_schedule", "piecewise_interpolate_schedule", "join_schedules", "sgdr_schedule",
           "cosine_onecycle_schedule", "linear_onecycle_schedule"]


class Schedule:
    """A schedule ``count -> value`` whose numeric fields (``_leaves``) are pytree leaves."""

    _leaves: tuple = ()
    _static: tuple = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        jax.tree_util.register_pytree_with_keys(
            cls,
            lambda s: ([(jax.tree_util.GetAttrKey(n), getattr(s, n)) for n in cls._leaves],
                       tuple(getattr(s, n) for n in cls._static)),
            lambda static, leaves: cls._rebuild(leaves, static),
        )

    @classmethod
    def _rebuild(cls, leaves, static):
        self = object.__new__(cls)
        for name, value in zip(cls._leaves, leaves):
            object.__setattr__(self, name, value)
        for name, value in zip(cls._static, static):
            object.__setattr__(self, name, value)
        return self

    def _dtype(self):
        floats = [x for x in jax.tree.leaves(self) if jnp.issubdtype(jnp.result_type(x), jnp.floating)]
        return jnp.result_type(*floats) if floats else scalar_dtype()

    def _count(self, count):
        return jnp.asarray(count).astype(self._dtype())

    def _value(self, x):
        return jnp.asarray(x).astype(self._dtype())

    def __repr__(self):
        values = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._leaves + self._static)
        return f"{type(self).__name__}({values})"

    def __eq__(self, other):
        return type(self) is type(other) and all(
            _same(getattr(self, n), getattr(other, n)) for n in self._leaves + self._static)

    def __hash__(self):
        return hash(type(self))


def _same(a, b):
    try:
        return bool(np.all(np.asarray(a) == np.asarray(b)))
    except Exception:  # noqa: BLE001 - traced values: not equal by value
        return a is b


def _count_field(name, value, lower=None, lower_open=False):
    """A step count: Python ints become floats, so that ``10`` and ``10.0`` (a swept grid
    value) are the same leaf type and the same compiled program."""
    value = check_scalar(name, value, lower=lower, lower_open=lower_open)
    return float(value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value


def _remaining(schedule, count):
    """Whether a linear or polynomial ramp is on (``transition_steps > 0``) and the fraction
    of it still to go at ``count``, ``1 − clip(t − B, 0, T)/T`` (``B`` floored at 0), as optax."""
    steps = schedule._value(schedule.transition_steps)
    begin = jnp.maximum(schedule._value(schedule.transition_begin), 0)
    safe = jnp.where(steps > 0, steps, 1)
    t = jnp.clip(schedule._count(count) - begin, 0, safe)
    return steps > 0, 1 - t / safe


def _steps(name, value):
    return _count_field(name, value, lower=0.0)


class constant(Schedule):
    """``value`` at every count (optax's ``constant_schedule``)."""

    _leaves = ("value",)

    def __init__(self, value):
        self.value = check_scalar("value", value)

    def __call__(self, count):
        return self._value(self.value) + 0 * self._count(count)


class linear(Schedule):
    r"""From ``init_value`` to ``end_value`` over ``transition_steps`` steps starting at
    ``transition_begin`` (optax's ``linear_schedule``): ``I + clip(t − B, 0, T)/T · (E − I)``;
    ``init_value`` throughout when ``transition_steps <= 0``."""

    _leaves = ("init_value", "end_value", "transition_steps", "transition_begin")

    def __init__(self, init_value, end_value, transition_steps, transition_begin=0):
        self.init_value, self.end_value = check_scalar("init_value", init_value), check_scalar("end_value", end_value)
        self.transition_steps = _count_field("transition_steps", transition_steps)
        self.transition_begin = _steps("transition_begin", transition_begin)

    def __call__(self, count):
        ramping, remaining = _remaining(self, count)
        init, end = self._value(self.init_value), self._value(self.end_value)
        return jnp.where(ramping, (init - end) * remaining + end, init)


class cosine_decay(Schedule):
    r"""``init_value · ((1 − α)·(½(1 + cos(π·min(t, D)/D)))^exponent + α)`` (optax's
    ``cosine_decay_schedule``), ``D = decay_steps > 0``."""

    _leaves = ("init_value", "decay_steps", "alpha", "exponent")

    def __init__(self, init_value, decay_steps, alpha=0.0, exponent=1.0):
        self.init_value = check_scalar("init_value", init_value)
        self.decay_steps = _count_field("decay_steps", decay_steps, lower=0.0, lower_open=True)
        self.alpha, self.exponent = check_scalar("alpha", alpha), check_scalar("exponent", exponent)

    def __call__(self, count):
        steps = self._value(self.decay_steps)
        t = jnp.minimum(self._count(count), steps)
        cosine = 0.5 * (1 + jnp.cos(jnp.pi * t / steps))
        alpha = self._value(self.alpha)
        return self._value(self.init_value) * ((1 - alpha) * cosine ** self._value(self.exponent) + alpha)


class warmup_cosine_decay(Schedule):
    r"""Linear warmup from ``init_value`` to ``peak_value`` over ``warmup_steps``, then
    cosine decay to ``end_value`` at ``decay_steps`` (optax's
    ``warmup_cosine_decay_schedule``; ``decay_steps`` counts the warmup too)."""

    _leaves = ("init_value", "peak_value", "warmup_steps", "decay_steps", "end_value", "exponent")

    def __init__(self, init_value, peak_value, warmup_steps, decay_steps, end_value=0.0, exponent=1.0):
        self.init_value, self.peak_value = check_scalar("init_value", init_value), check_scalar("peak_value", peak_value)
        self.warmup_steps = _steps("warmup_steps", warmup_steps)
        self.decay_steps = _count_field("decay_steps", decay_steps)
        if _concrete(self.decay_steps, self.warmup_steps) and not self.decay_steps - self.warmup_steps > 0:
            raise ValueError(f"warmup_cosine_decay needs decay_steps > warmup_steps, got decay_steps="
                             f"{decay_steps!r}, warmup_steps={warmup_steps!r}")
        self.end_value, self.exponent = check_scalar("end_value", end_value), check_scalar("exponent", exponent)

    def __call__(self, count):
        peak, end = self._value(self.peak_value), self._value(self.end_value)
        alpha = jnp.where(peak == 0, 0, end / jnp.where(peak == 0, 1, peak))
        warmup = self._value(self.warmup_steps)
        return join([linear(self.init_value, self.peak_value, self.warmup_steps),
                     cosine_decay(self.peak_value, self._value(self.decay_steps) - warmup, alpha, self.exponent)],
                    [self.warmup_steps])(count)


class exponential_decay(Schedule):
    r"""``init_value · decay_rate^((t − B)/T)`` after ``transition_begin`` ``B`` (floored
    with ``staircase``), clipped at ``end_value`` when given (optax's ``exponential_decay``);
    ``init_value`` throughout when ``transition_steps <= 0`` or ``decay_rate == 0``."""

    _leaves = ("init_value", "transition_steps", "decay_rate", "transition_begin", "end_value")
    _static = ("staircase",)

    def __init__(self, init_value, transition_steps, decay_rate, transition_begin=0, staircase=False,
                 end_value=None):
        self.init_value = check_scalar("init_value", init_value)
        self.transition_steps = _count_field("transition_steps", transition_steps)
        self.decay_rate = check_scalar("decay_rate", decay_rate)
        self.transition_begin = _steps("transition_begin", transition_begin)
        if not isinstance(staircase, bool):
            raise TypeError(f"staircase must be a bool, got {staircase!r}")
        self.staircase = staircase
        self.end_value = None if end_value is None else check_scalar("end_value", end_value)

    def __call__(self, count):
        init, rate, steps = self._value(self.init_value), self._value(self.decay_rate), self._value(self.transition_steps)
        elapsed = self._count(count) - jnp.maximum(self._value(self.transition_begin), 0)
        p = elapsed / jnp.where(steps > 0, steps, 1)
        if self.staircase:
            p = jnp.floor(p)
        value = jnp.where(elapsed <= 0, init, init * rate ** p)
        if self.end_value is not None:
            end = self._value(self.end_value)
            value = jnp.where(rate < 1, jnp.maximum(value, end), jnp.minimum(value, end))
        return jnp.where((steps > 0) & (rate != 0), value, init)


class piecewise_constant(Schedule):
    """``init_value`` times every scale whose boundary the count has reached (optax's
    ``piecewise_constant_schedule``). The boundaries stay static; the scales are leaves."""

    _leaves = ("init_value", "scales")
    _static = ("boundaries",)

    def __init__(self, init_value, boundaries_and_scales: dict | None = None):
        self.init_value = check_scalar("init_value", init_value)
        items = sorted((boundaries_and_scales or {}).items())
        self.boundaries = tuple(int(b) for b, _ in items)
        self.scales = tuple(check_scalar(f"boundaries_and_scales[{b}]", s, lower=0.0) for b, s in items)

    def __call__(self, count):
        count, value = self._count(count), self._value(self.init_value)
        for boundary, scale in zip(self.boundaries, self.scales):
            value = jnp.where(count < boundary, value, value * self._value(scale))
        return value


class join(Schedule):
    """``schedules[i]`` from ``boundaries[i-1]`` on, each seeing the count since its own
    start (optax's ``join_schedules``). The boundaries are leaves too."""

    _leaves = ("schedules", "boundaries")

    def __init__(self, schedules: Sequence, boundaries: Sequence):
        schedules, boundaries = tuple(schedules), tuple(boundaries)
        if len(schedules) != len(boundaries) + 1:
            raise ValueError(f"join needs one boundary fewer than schedules, got {len(schedules)} schedules "
                             f"and {len(boundaries)} boundaries")
        for i, s in enumerate(schedules):
            if not callable(s):
                raise TypeError(f"join: schedules[{i}] must be callable, got {s!r}")
        self.schedules = schedules
        self.boundaries = tuple(_steps(f"boundaries[{i}]", b) for i, b in enumerate(boundaries))

    def __call__(self, count):
        count = jnp.asarray(count)
        out = self.schedules[0](count)
        for boundary, schedule in zip(self.boundaries, self.schedules[1:]):
            start = jnp.asarray(boundary).astype(out.dtype)
            here = count.astype(out.dtype)
            out = jnp.where(here < start, out, schedule(here - start))
        return out


def _concrete(*values):
    return not any(isinstance(v, jax.core.Tracer) for v in values)


class polynomial(Schedule):
    r"""``(I − E)·(1 − clip(t − B, 0, T)/T)^power + E`` (optax's ``polynomial_schedule``);
    ``init_value`` throughout when ``transition_steps <= 0``, ``B`` floored at 0."""

    _leaves = ("init_value", "end_value", "power", "transition_steps", "transition_begin")

    def __init__(self, init_value, end_value, power, transition_steps, transition_begin=0):
        self.init_value, self.end_value = check_scalar("init_value", init_value), check_scalar("end_value", end_value)
        self.power = check_scalar("power", power)
        self.transition_steps = _count_field("transition_steps", transition_steps)
        self.transition_begin = _count_field("transition_begin", transition_begin)

    def __call__(self, count):
        ramping, remaining = _remaining(self, count)
        init, end = self._value(self.init_value), self._value(self.end_value)
        return jnp.where(ramping, (init - end) * remaining ** self._value(self.power) + end, init)


class piecewise_interpolate(Schedule):
    """Interpolates (``"linear"`` or ``"cosine"``) between ``init_value`` times the running
    product of the scales, from one boundary to the next (optax's
    ``piecewise_interpolate_schedule``). Boundaries and scales are leaves here, so a
    one-cycle schedule's length or peak can be swept."""

    _leaves = ("init_value", "boundaries", "scales")
    _static = ("interpolate_type",)

    def __init__(self, interpolate_type: str, init_value, boundaries_and_scales: dict | None = None):
        if interpolate_type not in ("linear", "cosine"):
            raise ValueError(f"interpolate_type must be 'linear' or 'cosine', got {interpolate_type!r}")
        self.interpolate_type = interpolate_type
        self.init_value = check_scalar("init_value", init_value)
        items = sorted((boundaries_and_scales or {}).items())
        self.boundaries = tuple(_count_field(f"boundaries_and_scales key {b!r}", b) for b, _ in items)
        self.scales = tuple(check_scalar(f"boundaries_and_scales[{b}]", v, lower=0.0) for b, v in items)

    def __call__(self, count):
        count = self._count(count)
        bounds = [self._value(0.0)] + [self._value(b) for b in self.boundaries]
        values = [self._value(self.init_value)]
        for scale in self.scales:
            values.append(values[-1] * self._value(scale))
        out = jnp.where(bounds[-1] <= count, values[-1], jnp.zeros_like(values[-1]))
        for i in range(len(self.boundaries)):
            lo, hi = bounds[i], bounds[i + 1]
            pct = (count - lo) / jnp.maximum(hi - lo, 1)
            a, b = values[i], values[i + 1]
            if self.interpolate_type == "linear":
                here = a + pct * (b - a)
            else:
                here = b + 0.5 * (a - b) * (1 + jnp.cos(jnp.pi * pct))
            out = out + jnp.where((lo <= count) & (count < hi), here, jnp.zeros_like(here))
        return out


# --------------------------------------------------------------------------- optax's names


constant_schedule = constant
linear_schedule = linear
polynomial_schedule = polynomial
cosine_decay_schedule = cosine_decay
warmup_cosine_decay_schedule = warmup_cosine_decay
piecewise_constant_schedule = piecewise_constant
piecewise_interpolate_schedule = piecewise_interpolate


def join_schedules(schedules: Sequence, boundaries: Sequence) -> join:
    """optax's ``join_schedules``: [`jgd.schedules.join`][jgd.schedules.join]."""
    return join(schedules, boundaries)


def warmup_constant_schedule(init_value, peak_value, warmup_steps) -> linear:
    """Linear warmup from ``init_value`` to ``peak_value`` over ``warmup_steps``, then
    ``peak_value`` (optax's ``warmup_constant_schedule``)."""
    return linear(init_value, peak_value, warmup_steps)


def warmup_exponential_decay_schedule(init_value, peak_value, warmup_steps, transition_steps, decay_rate,
                                      transition_begin=0, staircase=False, end_value=None) -> join:
    """Linear warmup to ``peak_value``, then [`jgd.schedules.exponential_decay`][jgd.schedules.exponential_decay] from it (optax's
    ``warmup_exponential_decay_schedule``)."""
    return join([linear(init_value, peak_value, warmup_steps),
                 exponential_decay(peak_value, transition_steps, decay_rate, transition_begin, staircase, end_value)],
                [warmup_steps])


def sgdr_schedule(cosine_kwargs) -> join:
    """Warm restarts (Loshchilov & Hutter, 2017): one [`jgd.schedules.warmup_cosine_decay`][jgd.schedules.warmup_cosine_decay] per dict
    of its arguments, one after the other (optax's ``sgdr_schedule``)."""
    cosine_kwargs = list(cosine_kwargs)
    if not cosine_kwargs:
        raise ValueError("sgdr_schedule needs at least one dict of warmup_cosine_decay arguments")
    schedules = [warmup_cosine_decay(**kwargs) for kwargs in cosine_kwargs]
    boundaries, step = [], 0.0
    for s in schedules[:-1]:
        step = step + s.decay_steps
        boundaries.append(step)
    return join(schedules, boundaries)


def _onecycle(kind, transition_steps, peak_value, div_factor, cuts):
    steps = _count_field("transition_steps", transition_steps, lower=0.0, lower_open=True)
    points = {}
    for fraction, scale in cuts:
        # optax truncates the boundaries with int(); jnp.floor does the same to a leaf
        points[len(points)] = (_floor(fraction * steps) if fraction != 1 else steps, scale)
    schedule = piecewise_interpolate(kind, peak_value / div_factor)
    schedule.boundaries = tuple(b for b, _ in points.values())
    schedule.scales = tuple(s for _, s in points.values())
    return schedule


def _floor(x):
    return jnp.floor(x) if isinstance(x, jax.core.Tracer) else float(np.floor(x))


def cosine_onecycle_schedule(transition_steps, peak_value, pct_start=0.3, div_factor=25.0,
                             final_div_factor=1e4) -> piecewise_interpolate:
    """One cycle (Smith & Topin, 2017) with cosine pieces: from ``peak/div_factor`` up to
    ``peak`` at ``pct_start`` of the steps, then down to ``peak/(div_factor·final_div_factor)``
    (optax's ``cosine_onecycle_schedule``)."""
    return _onecycle("cosine", transition_steps, peak_value, div_factor,
                     [(pct_start, div_factor), (1, 1.0 / (div_factor * final_div_factor))])


def linear_onecycle_schedule(transition_steps, peak_value, pct_start=0.3, pct_final=0.85, div_factor=25.0,
                             final_div_factor=1e4) -> piecewise_interpolate:
    """One cycle with linear pieces: up to ``peak`` at ``pct_start``, back to the start at
    ``pct_final``, then down to ``peak/(div_factor·final_div_factor)`` (optax's
    ``linear_onecycle_schedule``)."""
    return _onecycle("linear", transition_steps, peak_value, div_factor,
                     [(pct_start, div_factor), (pct_final, 1.0 / div_factor), (1, 1.0 / final_div_factor)])


def _document_arguments():
    """Each schedule's ``Args:`` in optax's words (same names and meanings as optax's)."""
    for name in __all__:
        schedule = globals()[name]
        optax_name = "join_schedules" if name == "join" else name if name in _OPTAX_SAME else f"{name}_schedule"
        doc = schedule.__doc__ or ""
        if "Args:" in doc or not hasattr(optax, optax_name) or getattr(schedule, "__name__", name) != name:
            continue  # documented by hand, or an alias of a class documented under its own name
        body, examples = (doc.split("\n    Examples:", 1) + [""])[:2]
        arguments = textwrap.indent(arguments_section(schedule, getattr(optax, optax_name), f"optax.{optax_name}"), "    ")
        schedule.__doc__ = body.rstrip() + "\n\n" + arguments + ("\n    Examples:" + examples if examples else "")


_OPTAX_SAME = {"exponential_decay", "join_schedules", "sgdr_schedule", "cosine_onecycle_schedule",
               "linear_onecycle_schedule", "warmup_constant_schedule", "warmup_exponential_decay_schedule"}
_document_arguments()

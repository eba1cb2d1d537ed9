"""jgd.schedules against optax's schedules at every count (eager and traced), jgd.adam with
a schedule against optax.adam with optax's, one compilation across schedule values, vmap
and sweeps over a schedule's numbers, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import sweep_case
from problems import TraceCounter, oracle

import jgd

S = jgd.schedules
COUNTS = np.arange(0, 130)

PAIRS = {
    "constant": (S.constant(0.3), optax.constant_schedule(0.3)),
    "linear": (S.linear(1.0, 0.01, 100), optax.linear_schedule(1.0, 0.01, 100)),
    "linear-begin": (S.linear(0.5, 2.0, 40, transition_begin=20), optax.linear_schedule(0.5, 2.0, 40, 20)),
    "linear-none": (S.linear(0.5, 2.0, 0), optax.linear_schedule(0.5, 2.0, 0)),
    "cosine": (S.cosine_decay(0.1, 80, alpha=0.1), optax.cosine_decay_schedule(0.1, 80, alpha=0.1)),
    "cosine-exp": (S.cosine_decay(0.1, 80, exponent=2.0), optax.cosine_decay_schedule(0.1, 80, exponent=2.0)),
    "warmup-cosine": (S.warmup_cosine_decay(0.0, 1e-2, 10, 100, end_value=1e-4),
                      optax.warmup_cosine_decay_schedule(0.0, 1e-2, 10, 100, end_value=1e-4)),
    "warmup-cosine-nowarmup": (S.warmup_cosine_decay(0.0, 1e-2, 0, 100),
                               optax.warmup_cosine_decay_schedule(0.0, 1e-2, 0, 100)),
    "exponential": (S.exponential_decay(1.0, 10, 0.5), optax.exponential_decay(1.0, 10, 0.5)),
    "exponential-stair-end": (S.exponential_decay(1.0, 10, 0.5, transition_begin=5, staircase=True, end_value=0.1),
                              optax.exponential_decay(1.0, 10, 0.5, 5, True, 0.1)),
    "exponential-up": (S.exponential_decay(0.1, 10, 1.5, end_value=1.0), optax.exponential_decay(0.1, 10, 1.5, end_value=1.0)),
    "piecewise": (S.piecewise_constant(1.0, {30: 0.1, 60: 0.5}), optax.piecewise_constant_schedule(1.0, {30: 0.1, 60: 0.5})),
    "join": (S.join([S.constant(0.1), S.linear(0.1, 0.0, 50)], [20]),
             optax.join_schedules([optax.constant_schedule(0.1), optax.linear_schedule(0.1, 0.0, 50)], [20])),
    # optax's names and signatures (turn 4)
    "polynomial": (S.polynomial_schedule(1.0, 0.1, 2.0, 90, 10), optax.polynomial_schedule(1.0, 0.1, 2.0, 90, 10)),
    "polynomial-none": (S.polynomial_schedule(1.0, 0.1, 2.0, 0), optax.polynomial_schedule(1.0, 0.1, 2.0, 0)),
    "warmup-constant": (S.warmup_constant_schedule(0.0, 0.5, 30), optax.warmup_constant_schedule(0.0, 0.5, 30)),
    "warmup-exponential": (S.warmup_exponential_decay_schedule(0.0, 1.0, 20, 10, 0.5, 5, True, 0.05),
                           optax.warmup_exponential_decay_schedule(0.0, 1.0, 20, 10, 0.5, 5, True, 0.05)),
    "interpolate-linear": (S.piecewise_interpolate_schedule("linear", 1.0, {20: 0.5, 70: 3.0}),
                           optax.piecewise_interpolate_schedule("linear", 1.0, {20: 0.5, 70: 3.0})),
    "interpolate-cosine": (S.piecewise_interpolate_schedule("cosine", 1.0, {20: 0.5, 70: 3.0}),
                           optax.piecewise_interpolate_schedule("cosine", 1.0, {20: 0.5, 70: 3.0})),
    "sgdr": (S.sgdr_schedule([dict(init_value=0.0, peak_value=1.0, warmup_steps=5, decay_steps=40),
                              dict(init_value=0.0, peak_value=0.5, warmup_steps=5, decay_steps=60)]),
             optax.sgdr_schedule([dict(init_value=0.0, peak_value=1.0, warmup_steps=5, decay_steps=40),
                                  dict(init_value=0.0, peak_value=0.5, warmup_steps=5, decay_steps=60)])),
    "cosine-onecycle": (S.cosine_onecycle_schedule(101, 0.1), optax.cosine_onecycle_schedule(101, 0.1)),
    "linear-onecycle": (S.linear_onecycle_schedule(101, 0.1, 0.25), optax.linear_onecycle_schedule(101, 0.1, 0.25)),
    "optax-names": (S.join_schedules([S.constant_schedule(0.1), S.linear_schedule(0.1, 0.0, 50)], [20]),
                    optax.join_schedules([optax.constant_schedule(0.1), optax.linear_schedule(0.1, 0.0, 50)], [20])),
}


def test_every_optax_schedule_name_is_here():
    """DESIGN §2: optax's schedule names, with optax's signatures."""
    import inspect
    for name in ["constant_schedule", "linear_schedule", "polynomial_schedule", "cosine_decay_schedule",
                 "warmup_cosine_decay_schedule", "warmup_constant_schedule", "warmup_exponential_decay_schedule",
                 "exponential_decay", "piecewise_constant_schedule", "piecewise_interpolate_schedule",
                 "join_schedules", "sgdr_schedule", "cosine_onecycle_schedule", "linear_onecycle_schedule"]:
        ours, theirs = getattr(S, name), getattr(optax, name)
        assert list(inspect.signature(ours).parameters) == list(inspect.signature(theirs).parameters), name


def test_onecycle_sweeps_over_its_length_and_peak_with_one_compilation():
    """The one-cycle boundaries are leaves: one compiled program for several lengths and peaks."""
    evaluate = jax.jit(lambda s: jax.vmap(s)(jnp.arange(120)))
    for steps, peak in [(100, 0.1), (80, 0.3), (110, 0.05)]:
        with oracle():
            expected = np.array([float(optax.cosine_onecycle_schedule(steps, peak)(c)) for c in range(120)])
        np.testing.assert_allclose(evaluate(S.cosine_onecycle_schedule(float(steps), peak)), expected, rtol=1e-5,
                                   atol=1e-7 * peak)
    assert evaluate._cache_size() == 1


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_equals_optax_at_every_count_eager_and_traced(name):
    ours, theirs = PAIRS[name]
    with oracle():
        expected = np.array([float(theirs(jnp.int32(c))) for c in COUNTS])
    eager = np.array([float(ours(jnp.int32(c))) for c in COUNTS])
    traced = np.asarray(jax.jit(jax.vmap(lambda s, c: s(c), in_axes=(None, 0)))(ours, jnp.asarray(COUNTS, jnp.int32)))
    # float32 rounding relative to the schedule's scale (a cosine piece ending near 0 loses
    # digits to cancellation in optax's formula and in ours alike)
    atol = 1e-9 + 1e-7 * np.max(np.abs(expected))
    np.testing.assert_allclose(eager, expected, rtol=2e-6, atol=atol)
    np.testing.assert_allclose(traced, expected, rtol=2e-6, atol=atol)


def test_adam_with_a_schedule_equals_optax_adam_with_optax_schedule():
    params = {"w": jnp.linspace(-1.0, 1.0, 6), "b": jnp.ones(3)}

    def loss(p):
        return jnp.sum((p["w"] - 0.3) ** 2) + jnp.sum(jnp.sin(p["b"]))

    def run(opt):
        p, s = params, opt.init(params)
        for _ in range(100):
            u, s = opt.update(jax.grad(loss)(p), s, p)
            p = optax.apply_updates(p, u)
        return p

    ours, theirs = PAIRS["warmup-cosine"]
    with oracle():
        expected = run(optax.adam(theirs))
    actual = run(jgd.adam(ours))
    for k in params:
        np.testing.assert_allclose(actual[k], expected[k], rtol=1e-5, atol=1e-7)


def test_a_jitted_step_compiles_once_for_every_schedule_value():
    def loss(w):
        return jnp.sum((w - 1.0) ** 2)

    counter = TraceCounter(lambda opt, w, s: opt.update(jax.grad(loss)(w), s, w))
    step = jax.jit(counter)
    w = jnp.zeros(3)
    for peak, warmup in [(1e-2, 10), (3e-2, 20), (0.1, 5.0)]:
        opt = jgd.adam(S.warmup_cosine_decay(0.0, peak, warmup, 100))
        step(opt, w, opt.init(w))
    assert counter.count == 1


def test_vmap_over_peak_and_warmup_equals_separate_schedules():
    peaks = jnp.asarray([1e-3, 1e-2, 1e-1], jnp.float32)
    warmups = jnp.asarray([5.0, 10.0, 20.0], jnp.float32)
    batched = jax.vmap(lambda p, w: S.warmup_cosine_decay(0.0, p, w, 100)(jnp.int32(12)))(peaks, warmups)
    for i in range(3):
        single = S.warmup_cosine_decay(0.0, float(peaks[i]), float(warmups[i]), 100)(jnp.int32(12))
        np.testing.assert_allclose(batched[i], single, rtol=1e-6)
    # A step count given as a float (a swept grid value) is the same schedule.
    np.testing.assert_allclose(S.linear(1.0, 0.0, 40.0)(jnp.int32(7)), S.linear(1.0, 0.0, 40)(jnp.int32(7)))


def adam_warmup_cosine(peak_value, warmup_steps):
    return jgd.adam(S.warmup_cosine_decay(0.0, peak_value, warmup_steps, 60))


def test_sweep_over_the_peak_and_warmup_compiles_once_and_equals_minimize():
    counter = TraceCounter(sweep_case.loss)
    common = dict(steps=30, data=(sweep_case.X, sweep_case.Y), batch_size=8, key=jax.random.key(0))
    first = jgd.sweep(counter, jnp.zeros(5), adam_warmup_cosine, {"peak_value": [1e-2, 1e-1], "warmup_steps": [5, 10]},
                      **common)
    traced = counter.count
    jgd.sweep(counter, jnp.zeros(5), adam_warmup_cosine, {"peak_value": [3e-2, 3e-1], "warmup_steps": [2, 20]}, **common)
    assert traced > 0 and counter.count == traced
    r = jgd.minimize(sweep_case.loss, jnp.zeros(5), adam_warmup_cosine(jnp.float32(1e-1), jnp.float32(10)),
                     **{**common, "key": jax.random.split(jax.random.key(0), 1)[0]})
    np.testing.assert_allclose(first.losses[1, 1, 0], r.losses, rtol=2e-6)


@pytest.mark.parametrize("make, error, match", [
    (lambda: S.cosine_decay(0.1, 0), ValueError, "decay_steps"),
    (lambda: S.warmup_cosine_decay(0.0, 0.1, 100, 50), ValueError, "decay_steps > warmup_steps"),
    (lambda: S.piecewise_constant(1.0, {10: -0.5}), ValueError, r"boundaries_and_scales\[10\]"),
    (lambda: S.join([S.constant(1.0)], [10]), ValueError, "one boundary fewer"),
    (lambda: S.linear("a", 0.0, 10), TypeError, "init_value"),
    (lambda: S.exponential_decay(1.0, 10, 0.5, staircase=1), TypeError, "staircase"),
    (lambda: S.linear(1.0, 0.0, 10, transition_begin=-1), ValueError, "transition_begin"),
])
def test_bad_input(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_optax_wrappers_cannot_be_jit_arguments_but_jgd_chains_compile_once():
    """The README's table: an optax chain around a jgd rule is not a pytree of arrays."""
    w = jnp.zeros(3)
    counter = TraceCounter(lambda opt, w, s: opt.update(jnp.ones(3), s, w))
    step = jax.jit(counter)
    with oracle():
        wrapped = optax.chain(optax.clip(1.0), jgd.adam(1e-3))
        with pytest.raises(TypeError):
            step(wrapped, w, wrapped.init(w))
    counter.count = 0
    for lr in (1e-3, 2e-3):
        chained = jgd.chain(jgd.clip(1.0), jgd.adam(lr))
        step(chained, w, chained.init(w))
    assert counter.count == 1

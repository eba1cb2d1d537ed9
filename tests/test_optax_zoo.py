"""Every optax 0.2.8 alias and optax.contrib optimizer as a jgd rule (DESIGN §2 "Every optax
optimizer"). Oracle: optax itself, run side by side on the same pytree and gradients."""

from __future__ import annotations

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
from problems import mixed_tree, oracle

import jgd
from jgd.lift import is_elementwise


def loss(params):
    """A smooth non-quadratic objective, so moments and line searches see varied gradients."""
    leaves = jax.tree.leaves(params)
    return sum(jnp.sum(0.5 * (x - 1.0) ** 2 + 0.1 * jnp.cos(3.0 * x)) for x in leaves)


# name -> (how to call a factory from its module with the swept number v, the number's default)
def _lr(name):
    return lambda ns, v: getattr(ns, name)(v)


ALIASES = {name: _lr(name) for name in jgd.optax_zoo.NAMES}
ALIASES["polyak_sgd"] = lambda ns, v: ns.polyak_sgd(max_learning_rate=v, f_min=-10.0)
ALIASES["noisy_sgd"] = lambda ns, v: ns.noisy_sgd(v, key=jax.random.key(3))
ALIASES["lbfgs"] = lambda ns, v: ns.lbfgs(v, linesearch=None)
ALIASES["adafactor"] = lambda ns, v: ns.adafactor(v, min_dim_size_to_factor=2)
OWN = {"sgd": lambda ns, v: ns.sgd(v, momentum=0.9, nesterov=True),
       "sgd_plain": lambda ns, v: ns.sgd(v), "adagrad": _lr("adagrad"), "adam": _lr("adam"),
       "adam_nesterov": lambda ns, v: ns.adam(v, nesterov=True), "adamw": _lr("adamw"),
       "rmsprop": lambda ns, v: ns.rmsprop(v, initial_scale=0.1, bias_correction=True),
       "rmsprop_centered": lambda ns, v: ns.rmsprop(v, 0.8, 1e-6, 0.0, True, True, 0.5)}

CONTRIB = {name: _lr(name) for name in jgd.contrib.NAMES}
CONTRIB["mechanize"] = lambda ns, v, sgd=None: ns.mechanize(sgd(0.1), weight_decay=v)
CONTRIB["sam"] = lambda ns, v, sgd=None: ns.sam(sgd(v), sgd(0.05), sync_period=2)
CONTRIB["reduce_on_plateau"] = lambda ns, v: ns.reduce_on_plateau(factor=0.5, patience=2, min_scale=v)

VALUES = {"reduce_on_plateau": (0.5, 0.3, 0.7), "mechanize": (0.01, 0.02, 0.03)}
# jgd's own implementations fuse and round differently from optax's code (rsqrt, folded
# bias corrections): equal to float32 rounding, 1e-5 over 20 steps; lifted rules run optax's
# own code, 1e-6.
RTOL = {"own": 1e-5, "alias": 1e-6, "contrib": 1e-6}


def params_for(name):
    tree = mixed_tree()
    if name == "sm3":  # optax's sm3 fails on a scalar leaf (IndexError in _new_accum)
        del tree["scalar"]
    return tree


def _pair(table, name, value):
    """(jgd's rule, optax's rule) for the same arguments."""
    make = table[name]
    if table is CONTRIB:
        if name in ("mechanize", "sam"):
            return make(jgd.contrib, value, sgd=jgd.sgd), make(optax.contrib, value, sgd=optax.sgd)
        return make(jgd.contrib, value), make(optax.contrib, value)
    return make(jgd, value), make(optax, value)


def _extra(params):
    value, grad = jax.value_and_grad(loss)(params)
    return grad, {"value": value, "grad": grad, "value_fn": loss, "obj_fn": loss}


def _run(opt, params, steps=20, extras=True):
    state = opt.init(params)
    for _ in range(steps):
        grad, extra = _extra(params)
        updates, state = opt.update(grad, state, params, **(extra if extras else {}))
        params = optax.apply_updates(params, updates)
    return params


DEPRECATED = pytest.mark.filterwarnings("ignore:`optimistic_adam` is deprecated:DeprecationWarning")
CASES = [pytest.param("alias", n, marks=DEPRECATED) if n == "optimistic_adam" else ("alias", n) for n in ALIASES]
CASES += [("own", n) for n in OWN] + [("contrib", n) for n in CONTRIB]
TABLES = {"alias": ALIASES, "own": OWN, "contrib": CONTRIB}


@pytest.mark.parametrize("kind,name", CASES)
def test_numbers_equal_optax(kind, name):
    """Eager, 20 steps on a pytree of several shapes: jgd's rule = optax's to 1e-6."""
    value = VALUES.get(name, (1e-2,))[0]
    ours, theirs = _pair(TABLES[kind], name, value)
    params = params_for(name)
    with oracle():
        expected = _run(theirs, params, extras=name != "sam")  # optax's sam takes no extra arguments
        actual = _run(ours, params)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=RTOL[kind], atol=1e-7)


@pytest.mark.parametrize("kind,name", CASES)
def test_one_compilation_for_every_value(kind, name):
    """Passed into jit, the rule compiles once for three values of its number, and the traced
    numbers match optax's (float32 complements: 1e-5)."""
    values = VALUES.get(name, (1e-2, 3e-2, 5e-3))
    params = params_for(name)

    @jax.jit
    def step(opt, params, state):
        grad, extra = _extra(params)
        updates, state = opt.update(grad, state, params, **extra)
        return optax.apply_updates(params, updates), state

    for value in values:
        ours, theirs = _pair(TABLES[kind], name, value)
        state, p = ours.init(params), params
        for _ in range(3):
            p, state = step(ours, p, state)
        with oracle():
            expected = _run(theirs, params, steps=3, extras=name != "sam")
        for a, e in zip(jax.tree.leaves(p), jax.tree.leaves(expected)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=1e-5, atol=1e-6)
    assert step._cache_size() == 1


@pytest.mark.parametrize("name", ["lion", "adabelief", "yogi", "radam", "lamb"])
def test_vmap_over_learning_rates(name):
    """vmap over the learning rate = each value run on its own."""
    params = mixed_tree()
    lrs = jnp.array([1e-3, 1e-2, 1e-1])
    factory = getattr(jgd, name)

    def final(lr):
        return _run(factory(lr), params, steps=5)

    batched = jax.vmap(final)(lrs)
    for i, lr in enumerate([1e-3, 1e-2, 1e-1]):
        single = _run(factory(lr), params, steps=5)
        for a, e in zip(jax.tree.leaves(batched), jax.tree.leaves(single)):
            np.testing.assert_allclose(np.asarray(a[i]), np.asarray(e), rtol=1e-5, atol=1e-6)


def test_grad_with_respect_to_the_optimizer():
    """jax.grad of a loss after 3 steps w.r.t. a lifted optimizer = central finite differences."""
    params = mixed_tree(jnp.float32)

    def after(opt):
        return loss(_run(opt, params, steps=3))

    grads = jax.grad(after)(jgd.lion(0.05, b1=0.8))
    h = 1e-3
    fd = (after(jgd.lion(0.05 + h, b1=0.8)) - after(jgd.lion(0.05 - h, b1=0.8))) / (2 * h)
    assert grads.hyperparams.learning_rate == pytest.approx(float(fd), rel=1e-2)


def test_leaves_are_the_numeric_arguments_each_once():
    opt = jgd.lion(1e-3, b1=0.95, mu_dtype=jnp.bfloat16)
    assert sorted(k for k, v in opt.hyperparams.items() if isinstance(v, float)) == [
        "b1", "b2", "learning_rate", "weight_decay"]
    assert len(jax.tree.leaves(opt)) == 4
    # a jgd schedule's numbers are leaves too: a sweep over its peak compiles once
    scheduled = jgd.adabelief(jgd.schedules.warmup_cosine_decay(0.0, 1e-2, 5, 50))
    assert len(jax.tree.leaves(scheduled)) == 4 + 6


def test_pickle_and_signature():
    import inspect
    assert inspect.signature(jgd.lion) == inspect.signature(optax.lion)
    assert inspect.signature(jgd.contrib.muon) == inspect.signature(optax.contrib.muon)
    opt = pickle.loads(pickle.dumps(jgd.adan(1e-3)))
    params = mixed_tree()
    with oracle():
        np.testing.assert_allclose(
            np.asarray(jax.tree.leaves(_run(opt, params, 3))[0]),
            np.asarray(jax.tree.leaves(_run(optax.adan(1e-3), params, 3))[0]), rtol=1e-6)


def branchy(learning_rate, threshold=0.5):
    """A factory that branches in Python on a number (as some optax factories do)."""
    if threshold > 0:
        return optax.sgd(learning_rate)
    return optax.sign_sgd(learning_rate)


def test_branching_factory_names_the_argument():
    rule = jgd.lift(branchy)
    params = {"w": jnp.ones(3)}
    step = jax.jit(lambda opt, g, s: opt.update(g, s))
    with pytest.raises(TypeError, match=r"'threshold'.*static=\('threshold',\)"):
        step(rule(0.1), params, rule(0.1).init(params))
    fixed = jgd.lift(branchy, static=("threshold",))
    updates, _ = step(fixed(0.1), params, fixed(0.1).init(params))
    np.testing.assert_allclose(updates["w"], -0.1 * np.ones(3))


def test_lift_errors():
    with pytest.raises(ValueError, match="not arguments of"):
        jgd.lift(optax.lion, static=("nope",))
    with pytest.raises(TypeError, match="jgd.lion"):
        jgd.lion(1e-3, bogus=1)
    with pytest.raises(TypeError, match="callable"):
        jgd.lift(3)


def test_static_parts_compare_by_value():
    """Equal optax pieces and partial masks rebuilt per call are the same program."""
    import functools

    def decay_mask(params, skip):
        return jax.tree.map(lambda x: x.ndim > 1 and skip, params)

    params = mixed_tree()
    step = jax.jit(lambda opt, g, s, p: opt.update(g, s, p))
    for lr in (1e-3, 2e-3, 3e-3):
        opt = jgd.chain(optax.clip(1.0), jgd.lion(lr, mask=functools.partial(decay_mask, skip=True)))
        step(opt, params, opt.init(params), params)
    assert step._cache_size() == 1


def test_elementwise_declarations():
    assert is_elementwise(jgd.lion(1e-3)) and is_elementwise(jgd.adam(1e-3))
    assert not is_elementwise(jgd.lamb(1e-3))
    assert not is_elementwise(jgd.chain(jgd.clip(1.0), jgd.contrib.muon(1e-3)))


def test_schedule_free_eval_params():
    opt = jgd.contrib.schedule_free_adamw(1e-2)
    params = mixed_tree()
    state = opt.init(params)
    grad, _ = _extra(params)
    _, state = opt.update(grad, state, params)
    ref = optax.contrib.schedule_free_adamw(1e-2)
    with oracle():
        ref_state = ref.init(params)
        _, ref_state = ref.update(grad, ref_state, params)
    for a, e in zip(jax.tree.leaves(jgd.contrib.schedule_free_eval_params(state, params)),
                    jax.tree.leaves(optax.contrib.schedule_free_eval_params(ref_state, params))):
        np.testing.assert_allclose(a, e, rtol=1e-6)


@pytest.mark.parametrize("make,name", [
    (lambda: jgd.lamb(1e-3), "jgd.lamb"), (lambda: jgd.contrib.muon(1e-3), "jgd.contrib.muon"),
    (lambda: jgd.chain(jgd.clip(1.0), jgd.sm3(1e-3)), "jgd.sm3"),
    (lambda: jgd.masked(jgd.adam(1e-3), lambda p: p), "jgd.masked"),
])
def test_flat_refuses_rules_that_are_not_elementwise(make, name):
    with pytest.raises(TypeError, match=f"{name} is not elementwise"):
        jgd.flat(make())


def test_flat_takes_elementwise_lifted_rules():
    """jgd.flat(jgd.lion) = jgd.lion leaf by leaf (lion is elementwise)."""
    params = mixed_tree()
    with oracle():
        expected = _run(optax.lion(1e-2), params, steps=5)
    actual = _run(jgd.flat(jgd.lion(1e-2)), params, steps=5)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=1e-6, atol=1e-7)


def _rosenbrock_counted(counter):
    def fun(params):
        jax.debug.callback(lambda: counter.append(1))
        x, y = params["x"], params["y"]
        return jnp.sum(100.0 * (y - x**2) ** 2 + (1.0 - x) ** 2)
    return fun


@pytest.mark.parametrize("name", ["lbfgs", "lbfgs_backtracking"])
def test_minimize_reuses_the_line_search_value_and_gradient(name):
    """minimize(lbfgs) = optax's documented L-BFGS loop (value_and_grad_from_state), step by
    step, with the same number of objective evaluations (none repeated at the accepted point)."""
    def make(ns):
        if name == "lbfgs":
            return ns.lbfgs()
        return ns.lbfgs(linesearch=optax.scale_by_backtracking_linesearch(max_backtracking_steps=15, store_grad=True))

    params = {"x": jnp.array([-1.2, 0.5]), "y": jnp.array([1.0, 0.3])}
    ours_count, theirs_count = [], []
    steps = 15
    result = jgd.minimize(_rosenbrock_counted(ours_count), params, make(jgd), steps=steps)
    jax.effects_barrier()

    fun = _rosenbrock_counted(theirs_count)
    opt = make(optax)
    value_and_grad = optax.value_and_grad_from_state(fun)

    @jax.jit
    def step(params, state):
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=fun)
        return optax.apply_updates(params, updates), state, value

    with oracle():
        p, state = params, opt.init(params)
        losses = []
        for _ in range(steps):
            p, state, value = step(p, state)
            losses.append(float(value))
        jax.effects_barrier()
    np.testing.assert_allclose(np.asarray(result.losses), np.asarray(losses), rtol=1e-5)
    for a, e in zip(jax.tree.leaves(result.params), jax.tree.leaves(p)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=1e-5, atol=1e-6)
    assert len(ours_count) == len(theirs_count)


NAN_HYPERGRADIENTS = {
    # optax's radam takes a square root of a negative number in the branch jnp.where discards
    # while the rectification term is undefined (the first steps), so every derivative is NaN
    "radam": "optax's radam: sqrt of a negative in the discarded branch of jnp.where",
    "mechanize": "optax.contrib.mechanize: NaN derivatives with respect to s_init and weight_decay",
}
GRAD_CASES = [pytest.param(*c.values if hasattr(c, "values") else c,
                           marks=[*getattr(c, "marks", ()),
                                  *([pytest.mark.xfail(reason=NAN_HYPERGRADIENTS[c[1]], strict=True)]
                                    if not hasattr(c, "values") and c[1] in NAN_HYPERGRADIENTS else [])])
              for c in CASES]


def _differentiable_part(opt):
    """The optimizer's floating leaves as a list, and how to put them back (a PRNG key leaf,
    noisy_sgd's, is not differentiable)."""
    leaves, treedef = jax.tree.flatten(opt)
    floating = [i for i, x in enumerate(leaves) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]

    def rebuild(values):
        full = list(leaves)
        for i, v in zip(floating, values):
            full[i] = v
        return jax.tree.unflatten(treedef, full)

    return [leaves[i] for i in floating], rebuild


@pytest.mark.parametrize("kind,name", GRAD_CASES)
def test_finite_grad_with_respect_to_the_optimizer_and_pickle(kind, name):
    """jax.grad of the loss after 3 steps w.r.t. the optimizer has one finite entry per
    numeric hyperparameter; the optimizer survives a pickle round trip with the same numbers."""
    value = VALUES.get(name, (1e-2,))[0]
    ours, _ = _pair(TABLES[kind], name, value)
    params = params_for(name)
    values, rebuild = _differentiable_part(ours)
    grads = jax.grad(lambda v: loss(_run(rebuild(v), params, steps=3)))(values)
    assert len(grads) == len(values)
    for leaf in grads:
        assert np.all(np.isfinite(np.asarray(leaf))), (name, grads)
    again = pickle.loads(pickle.dumps(ours))
    for a, e in zip(jax.tree.leaves(_run(again, params, steps=2)), jax.tree.leaves(_run(ours, params, steps=2))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def keyword_factory(learning_rate, **options):
    """A factory taking its options as **kwargs (a static string and a number among them)."""
    rule = optax.sgd(learning_rate) if options["kind"] == "sgd" else optax.sign_sgd(learning_rate)
    return optax.chain(rule, optax.scale(options["scale"]))


def test_lift_takes_a_factory_with_var_keywords():
    opt = jgd.lift(keyword_factory)(0.1, kind="sgd", scale=2.0)
    assert sorted(k for k, _ in opt.hyperparams.items()) == ["kind", "learning_rate", "scale"]
    updates, _ = jax.jit(lambda o, g, s: o.update(g, s))(opt, jnp.ones(2), opt.init(jnp.zeros(2)))
    np.testing.assert_allclose(updates, -0.2 * np.ones(2), rtol=1e-6)


@pytest.mark.parametrize("kind,name", CASES)
def test_vmap_over_the_swept_number_of_every_rule(kind, name):
    """vmap over each rule's swept number (its learning rate for most) = each value run alone."""
    values = VALUES.get(name, (1e-2, 3e-2, 5e-3))
    params = params_for(name)
    make = TABLES[kind][name]

    def final(value):
        ours = (make(jgd.contrib, value, sgd=jgd.sgd) if name in ("mechanize", "sam")
                else make(jgd.contrib if kind == "contrib" else jgd, value))
        return _run(ours, params, steps=3)

    batched = jax.vmap(final)(jnp.asarray(values, jnp.float32))
    for i, value in enumerate(values):
        single = jax.jit(final)(jnp.float32(value))
        for a, e in zip(jax.tree.leaves(batched), jax.tree.leaves(single)):
            np.testing.assert_allclose(np.asarray(a[i]), np.asarray(e), rtol=1e-5, atol=1e-6)

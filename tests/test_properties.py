"""Property tests over every public factory (``problems.FACTORIES``) with hypothesis:
random pytrees (nested dicts, tuples and lists; scalars; empty leaves; 0..1000 entries)
in float32, bfloat16 and float64 under x64."""

from __future__ import annotations

import pickle

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from problems import FACTORIES, NOT_FACTORIES, TESTED_AGAINST_OPTAX

import jgd

PROPERTY_SETTINGS = settings(
    max_examples=3,
    deadline=None,
    derandomize=True,  # the same examples in CI and here
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
LEARNING_RATES = (0.1, 0.01)


@st.composite
def shapes(draw):
    shape = tuple(draw(st.lists(st.integers(0, 12), max_size=3)))
    while int(np.prod(shape)) > 1000:
        shape = shape[1:]
    return shape


def trees(max_leaves=6):
    leaf = shapes()
    containers = lambda children: (  # noqa: E731
        st.dictionaries(st.sampled_from("abcdef"), children, min_size=1, max_size=3)
        | st.tuples(children, children)
        | st.lists(children, min_size=1, max_size=3)
    )
    return st.recursive(leaf, containers, max_leaves=max_leaves).filter(
        lambda t: 1 <= len(jax.tree.leaves(t, is_leaf=_is_shape))
    )


def _is_shape(x):
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def realize(shape_tree, dtype, seed):
    """Arrays of ``dtype`` shaped as ``shape_tree`` says, with normal entries."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s), dtype), shape_tree, is_leaf=_is_shape
    )


def two_steps(opt, params, grads):
    """Two updates with the same gradients; returns the second update and the state."""
    state = opt.init(params)
    wide = jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32
    value = 0.5 * sum(jnp.sum(jnp.square(g.astype(wide))) for g in jax.tree.leaves(grads))
    for _ in range(2):
        updates, state = opt.update(grads, state, params, value=value)
        params = jgd.apply_updates(params, updates)
    return updates, state


def assert_close(a, b, dtype):
    tol = {jnp.bfloat16: 3e-2, jnp.float32: 2e-5, jnp.float64: 1e-12}[dtype]
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_allclose(
            np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=tol, atol=tol
        )


def check_properties(name, shape_tree, dtype, seed):
    make, nan_behaviour = FACTORIES[name]
    params = realize(shape_tree, dtype, seed)
    grads = realize(shape_tree, dtype, seed + 1)
    opt = make(0.1)

    # jit ≡ eager
    eager = two_steps(opt, params, grads)
    jitted = jax.jit(two_steps)(opt, params, grads)
    assert_close(jitted, eager, dtype)

    # dtypes: updates follow the gradients, state floats follow the params
    updates, state = jitted
    assert jax.tree.map(jnp.result_type, updates) == jax.tree.map(jnp.result_type, grads)
    float_state = {jnp.result_type(x) for x in jax.tree.leaves(state) if jnp.issubdtype(jnp.result_type(x), jnp.floating) and jnp.ndim(x)}
    assert float_state <= {jnp.dtype(dtype)}, float_state

    # vmap over the learning rate ≡ a loop over it
    lrs = jnp.asarray(LEARNING_RATES, jnp.float32)
    batched = jax.jit(jax.vmap(lambda lr: two_steps(make(lr), params, grads)))(lrs)
    for i, lr in enumerate(LEARNING_RATES):
        one = jax.jit(two_steps)(make(jnp.float32(lr)), params, grads)
        assert_close(jax.tree.map(lambda x: x[i], batched), one, dtype)

    # a donated step ≡ an undonated one, and the caller's arrays survive the undonated one
    def step(params, state):
        updates, state = opt.update(grads, state, params, value=jnp.float32(1.0))
        return jgd.apply_updates(params, updates), state

    state0 = opt.init(params)
    plain = jax.jit(step)(params, state0)
    copies = jax.tree.map(jnp.copy, (params, state0))
    donated = jax.jit(step, donate_argnums=(0, 1))(*copies)
    assert_close(donated, plain, dtype)
    assert_close(jax.jit(step)(params, state0), plain, dtype)

    # the state pickles
    restored = pickle.loads(pickle.dumps(state))
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    assert_close(restored, state, dtype)

    # NaN in one leaf: no exception, and the damage stays where the rule says
    sizes = [x.size for x in jax.tree.leaves(grads)]
    if not any(sizes):
        return
    hit = next(i for i, s in enumerate(sizes) if s)
    leaves = jax.tree.leaves(grads)
    leaves[hit] = leaves[hit].reshape(-1).at[0].set(jnp.nan).reshape(leaves[hit].shape)
    nan_grads = jax.tree.unflatten(jax.tree.structure(grads), leaves)
    updates, state = jax.jit(two_steps)(opt, params, nan_grads)
    out = [np.asarray(x, np.float64) for x in jax.tree.leaves(updates)]
    if nan_behaviour == "leaf":
        assert np.isnan(out[hit].reshape(-1)[0])
        assert all(np.all(np.isfinite(x)) for i, x in enumerate(out) if i != hit)
    elif nan_behaviour == "skip":
        assert all(np.all(x == 0) for x in out)
        assert int(state.skipped) == 2
    else:
        assert nan_behaviour == "spread"


@pytest.mark.parametrize("name", FACTORIES)
@PROPERTY_SETTINGS
@given(shape_tree=trees(), dtype=st.sampled_from([jnp.float32, jnp.bfloat16]), seed=st.integers(0, 2**16))
def test_properties(name, shape_tree, dtype, seed):
    check_properties(name, shape_tree, dtype, seed)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "subgradient_polyak", "proximal_gradient_fista_box", "flat"])
@settings(PROPERTY_SETTINGS, max_examples=3)
@given(shape_tree=trees(max_leaves=4), seed=st.integers(0, 2**16))
def test_properties_float64(name, shape_tree, seed):
    with jax.enable_x64(True):
        check_properties(name, shape_tree, jnp.float64, seed)


def test_the_factory_table_lists_every_public_factory():
    public = {n for n in jgd.__all__ if callable(getattr(jgd, n))} - NOT_FACTORIES - TESTED_AGAINST_OPTAX
    missing = {n for n in public if not any(k == n or k.startswith(n + "_") for k in FACTORIES)}
    assert not missing

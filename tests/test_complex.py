"""Complex params: optimized as optax does where jgd's rule is linear in the gradient
(sgd, momentum, clipping by global norm: |g|², a real norm), refused with a clear error
where second moments would otherwise be silently wrong (adagrad, rmsprop, adam, adamw)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from problems import oracle

import jgd

TARGET = jnp.array([1 + 1j, -1 - 1j, 1 - 2j], jnp.complex64)


def loss(x):
    """optax's complex parabola: a real loss of complex params."""
    return jnp.sum(jnp.abs(x - TARGET) ** 2)


def run(opt, steps=300):
    x, state = jnp.zeros(3, jnp.complex64), opt.init(jnp.zeros(3, jnp.complex64))
    for _ in range(steps):
        grads = jnp.conj(jax.grad(loss)(x))  # JAX's convention: descend along the conjugate
        updates, state = opt.update(grads, state, x)
        x = optax.apply_updates(x, updates)
    return x


@pytest.mark.parametrize("ours, theirs", [
    (lambda: jgd.sgd(0.1), lambda: optax.sgd(0.1)),
    (lambda: jgd.momentum(0.05, 0.9), lambda: optax.sgd(0.05, momentum=0.9)),
    (lambda: jgd.chain(jgd.clip_by_global_norm(0.5), jgd.sgd(0.1)),
     lambda: optax.chain(optax.clip_by_global_norm(0.5), optax.sgd(0.1))),
])
def test_linear_rules_equal_optax_on_the_complex_parabola(ours, theirs):
    with oracle():
        expected = run(theirs())
        actual = run(ours())
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(actual, TARGET, atol=1e-3)  # and they converge


def test_global_norm_of_complex_entries_is_real():
    from jgd._transform import global_norm

    tree = {"a": jnp.array([3 + 4j], jnp.complex64), "b": jnp.array([1.0, 2.0], jnp.float32)}
    norm = global_norm(tree)
    assert norm.dtype == jnp.float32
    np.testing.assert_allclose(norm, np.sqrt(25 + 1 + 4), rtol=1e-6)


@pytest.mark.parametrize("make, where", [
    (lambda: jgd.adam(0.1), "params['w']"), (lambda: jgd.adamw(0.1), "params['w']"),
    (lambda: jgd.rmsprop(0.1), "params['w']"), (lambda: jgd.adagrad(0.1), "params['w']"),
    (lambda: jgd.flat(jgd.adam(0.1)), "params['complex64']"),  # flat names its buffer
])
def test_second_moment_rules_refuse_complex_params_by_name(make, where):
    with pytest.raises(TypeError, match="does not support complex") as error:
        make().init({"w": jnp.zeros(3, jnp.complex64), "b": jnp.zeros(2)})
    assert where in str(error.value)

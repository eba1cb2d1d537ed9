"""Doctests (pytest --doctest-modules over jgd/) see jax, jnp, np and jgd, as the
docstrings' examples assume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgd


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    doctest_namespace.update(jax=jax, jnp=jnp, np=np, jgd=jgd)

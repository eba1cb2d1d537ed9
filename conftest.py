"""Doctests (pytest --doctest-modules over jgd/) see jax, jnp, np and jgd, as the
docstrings' examples assume."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgd


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    doctest_namespace.update(jax=jax, jnp=jnp, np=np, jgd=jgd)


# The default suite is the quick one (pyproject's addopts deselect `slow`); .ci/run runs the
# slow cases after it. tests/slow.txt lists the cases measured slowest on the 2-core CI
# machine kind (pytest --durations=0), one node id (or id prefix ending in "[") a line.
_SLOW = [line.strip() for line in (pathlib.Path(__file__).parent / "tests" / "slow.txt").read_text().splitlines()
         if line.strip() and not line.startswith("#")]


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config, items):
    exact = {s for s in _SLOW if not s.endswith("[")}
    prefixes = tuple(s for s in _SLOW if s.endswith("["))
    for item in items:
        if item.nodeid in exact or (prefixes and item.nodeid.startswith(prefixes)):
            item.add_marker(pytest.mark.slow)

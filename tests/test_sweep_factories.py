"""jgd.sweep with a dict of factories (the optimizer itself as a hyperparameter): equal to
one sweep per factory (the existing path, the oracle) and run by run to minimize; one
result whose best() ranks across factories; table, dataframe and plot; errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgd

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(64, 4)), jnp.float32)
Y = X @ jnp.asarray([1.0, -2.0, 0.5, 3.0]) + 0.1 * jnp.asarray(RNG.normal(size=64), jnp.float32)
HELD_OUT = (X[:16], Y[:16])


def loss(w, batch):
    x, y = batch
    return jnp.mean((x @ w - y) ** 2)


def init(key):
    return 0.1 * jax.random.normal(key, (4,))


FACTORIES = {"sgd": jgd.sgd, "adam": jgd.adam}
GRIDS = {"sgd": {"learning_rate": [0.01, 0.05], "momentum": [0.0, 0.9]}, "adam": {"learning_rate": [1e-3, 1e-2, 3e-2]}}
KWARGS = dict(data=(X, Y), batch_size=16, steps=30, seeds=2, key=jax.random.key(7),
              evaluate=jgd.Eval(lambda w, batch: {"loss": loss(w, batch)}, data=HELD_OUT, every=10, monitor="loss"))


@pytest.fixture(scope="module")
def joined():
    return jgd.sweep(loss, init, FACTORIES, GRIDS, **KWARGS)


@pytest.fixture(scope="module")
def apart():
    return {name: jgd.sweep(loss, init, FACTORIES[name], GRIDS[name], **KWARGS) for name in FACTORIES}


def test_equals_one_sweep_per_factory(joined, apart):
    assert joined.final_loss.shape == (4 + 3, 2)
    start = 0
    for name, result in apart.items():
        k = int(np.prod(result.grid_shape))
        rows = slice(start, start + k)
        assert list(joined.hparams["optimizer"][rows]) == [name] * k
        for field in ("losses", "final_loss", "best_loss", "best_step", "num_steps", "diverged"):
            theirs = getattr(result, field)
            np.testing.assert_array_equal(getattr(joined, field)[rows], theirs.reshape((k,) + theirs.shape[len(result.grid_shape):]))
        np.testing.assert_array_equal(joined.evals["loss"][rows], result.evals["loss"].reshape(k, 2, -1))
        np.testing.assert_array_equal(joined.best_params[rows], result.best_params.reshape(k, 2, 4))
        for hp, values in result.hparams.items():
            np.testing.assert_array_equal(joined.hparams[hp][rows], values.ravel())
        start += k
    assert np.isnan(joined.hparams["momentum"][4:]).all()  # adam has no momentum


def test_best_ranks_across_factories(joined, apart):
    winners = {name: r.best() for name, r in apart.items()}
    name = min(winners, key=lambda n: winners[n]["score"])
    best = joined.best()
    assert best["optimizer"] == name and best["score"] == winners[name]["score"]
    assert best["learning_rate"] == winners[name]["learning_rate"]
    np.testing.assert_array_equal(best["params"], winners[name]["params"])


def test_a_run_equals_minimize_with_its_factory_and_seed(joined):
    index, seed = 5, 1  # adam, the second learning rate
    assert joined.hparams["optimizer"][index] == "adam"
    k = jax.random.split(jax.random.key(7), 2)[seed]
    kwargs = {key: v for key, v in KWARGS.items() if key not in ("seeds", "key")}
    r = jgd.minimize(loss, init(k), jgd.adam(jnp.float32(joined.hparams["learning_rate"][index])), key=k, **kwargs)
    np.testing.assert_allclose(joined.losses[index, seed], r.losses, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(joined.best_params[index, seed], r.best_params, rtol=1e-6, atol=1e-7)


def test_points_per_factory_and_the_views(joined, tmp_path):
    points = jgd.sweep(loss, init, FACTORIES, points={"sgd": {"learning_rate": [0.05], "momentum": [0.9]},
                                                      "adam": {"learning_rate": [1e-2, 3e-2]}}, **KWARGS)
    assert list(points.hparams["optimizer"]) == ["sgd", "adam", "adam"]
    np.testing.assert_array_equal(points.losses[0], joined.losses[3])  # sgd (0.05, 0.9), the grid's last
    table = joined.table()
    assert "optimizer" in table.splitlines()[0] and "adam" in table and "sgd" in table
    frame = joined.to_dataframe()
    assert sorted(set(frame["optimizer"])) == ["adam", "sgd"] and len(frame) == 7 * 2
    joined.plot(tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").stat().st_size > 0


@pytest.mark.parametrize("factory, grid, match", [
    ({}, {}, "names no factory"),
    ({"sgd": jgd.sgd}, {"adam": {"learning_rate": [0.1]}}, r"grid must be a dict \{factory name"),
    ({"sgd": jgd.sgd}, {"sgd": [0.1]}, r"grid\['sgd'\] must be a dict"),
    ({"sgd": "sgd"}, {"sgd": {"learning_rate": [0.1]}}, r"factory\['sgd'\] must be an optimizer factory"),
    ({"sgd": jgd.sgd}, {"sgd": {"optimizer": [0.1]}}, "names a hyperparameter 'optimizer'"),
])
def test_errors_name_the_argument(factory, grid, match):
    with pytest.raises((TypeError, ValueError), match=match):
        jgd.sweep(loss, init, factory, grid, steps=2, data=(X, Y), batch_size=16)


def test_halving_refuses_a_dict_of_factories_and_says_what_to_do():
    with pytest.raises(TypeError, match="halving takes one factory.*jgd.sweep"):
        jgd.halving(loss, init, FACTORIES, GRIDS, steps=9, min_steps=3, data=(X, Y), batch_size=16,
                    evaluate=KWARGS["evaluate"])

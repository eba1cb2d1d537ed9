"""The runs test_checkpoint.py saves, kills and resumes: a mini-batch sweep, and a minimize
run with mini-batches, dropout keys, a model state and evaluation. Run as a script it
performs one of them with save_dir (in a subprocess that the test kills) and saves the
result to an .npz."""

import sys

import jax
import jax.numpy as jnp
import numpy as np

import jgd

rng = np.random.default_rng(0)
X = rng.normal(size=(200, 8)).astype(np.float32)
Y = (X @ rng.normal(size=8) + 0.1 * rng.normal(size=200)).astype(np.float32)
X_VAL, Y_VAL = X[:40] + 0.1, Y[:40]


def loss(w, batch):
    r = batch[0] @ w - batch[1]
    return 0.5 * jnp.mean(r * r)


def val(w, data):
    r = data[0] @ w - data[1]
    return {"mse": jnp.mean(r * r)}


def init(key):
    return jax.random.normal(key, (8,), jnp.float32)


def dropout_loss(w, state, batch, key):
    """Dropout on the inputs and a running mean of the batch means (a model state)."""
    keep = jax.random.bernoulli(key, 0.8, batch[0].shape)
    x = jnp.where(keep, batch[0] / 0.8, 0.0)
    r = x @ w - batch[1]
    state = 0.9 * state + 0.1 * jnp.mean(batch[0], axis=0)
    return 0.5 * jnp.mean(r * r), (state, {"first": r[0]})


def sweep(steps=300, **save):
    return jgd.sweep(loss, init, jgd.momentum, {"learning_rate": [0.01, 0.03, 0.1], "beta": [0.0, 0.9]},
                     seeds=2, key=jax.random.key(2), steps=steps, data=(X, Y), batch_size=16,
                     evaluate=jgd.Eval(val, (X_VAL, Y_VAL), every=10, monitor="mse"), **save)


def minimize(steps=300, **save):
    return jgd.minimize(dropout_loss, jnp.zeros(8, jnp.float32), jgd.adam(0.01), steps=steps, data=(X, Y),
                        batch_size=16, key=jax.random.key(3), with_key=True, model_state=jnp.zeros(8, jnp.float32),
                        has_aux=True, record_aux=True,
                        evaluate=jgd.Eval(lambda w, s, d: val(w, d), (X_VAL, Y_VAL), every=10, monitor="mse"), **save)


def halving(steps=90, **save):
    """Rungs of 10, 30 and 90 steps over 6 configurations, two seeds each."""
    return jgd.halving(loss, init, jgd.momentum, {"learning_rate": [0.003, 0.03, 0.3], "beta": [0.0, 0.9]},
                       seeds=2, key=jax.random.key(4), steps=steps, min_steps=10, eta=3, data=(X, Y), batch_size=16,
                       evaluate=jgd.Eval(val, (X_VAL, Y_VAL), every=10, monitor="mse"), **save)


def arrays(result):
    """The fields compared bit for bit, as name -> numpy array."""
    if isinstance(result, jgd.SweepResult):
        fields = dict(losses=result.losses, params=result.params, best_params=result.best_params,
                      mse=result.evals["mse"], best_loss=result.best_loss, best_step=result.best_step,
                      num_steps=result.num_steps)
        if result.rung is not None:
            fields["rung"] = result.rung
    else:
        fields = dict(losses=result.losses, params=result.params, best_params=result.best_params,
                      mse=result.evals["mse"], model_state=result.model_state, aux=result.aux["first"],
                      num_steps=result.num_steps, best_step=result.best_step, opt_mu=result.state.opt_state.mu)
    return {k: np.asarray(v) for k, v in fields.items()}


if __name__ == "__main__":
    kind, save_dir, out = sys.argv[1], sys.argv[2], sys.argv[3]
    steps = int(sys.argv[4]) if len(sys.argv) > 4 else 300
    run = {"sweep": sweep, "minimize": minimize, "halving": halving}[kind]
    save_every = 10 if kind == "halving" else 20
    np.savez(out, **arrays(run(save_dir=save_dir, save_every=save_every, **({} if len(sys.argv) <= 4 else {"steps": steps}))))

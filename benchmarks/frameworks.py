"""A flax train step per learning rate, as users write it: flax's ``TrainState`` with
``optax.adam`` (closed over: one compilation per learning rate) against
``jgd.flax.TrainState`` with ``jgd.adam`` (its numbers traced: one compilation for all), and
an equinox step under ``eqx.filter_jit`` closing over ``optax.adamw`` (equinox's examples)
against one taking ``jgd.adamw(lr)`` with Python floats as an argument. Step time per call
(interleaved rounds, median; the goal is within 1.05x of the optax original) and the
compilations for three learning rates (``jgd.debug.count_compiles``).

    python benchmarks/frameworks.py [--smoke]

Writes results/frameworks.json.
"""

import argparse
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import write

import jgd
import jgd.flax
import jgd.nnx
from jgd.benchmark import interleaved_times


def linen_contenders(width, batch):
    import flax.linen as nn
    from flax.training import train_state

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            for _ in range(3):
                x = nn.relu(nn.Dense(width)(x))
            return nn.Dense(10)(x)

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, 64)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, batch))
    model = MLP()
    params = model.init(jax.random.key(0), x)

    def fresh():  # the steps donate their state: every state gets params of its own
        return jax.tree.map(jnp.copy, params)

    def train_step(state):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(state.apply_fn(p, x), y).mean()
        return state.apply_gradients(grads=jax.grad(loss)(state.params))

    states = {"flax TrainState + optax.adam": lambda lr: train_state.TrainState.create(
                  apply_fn=model.apply, params=fresh(), tx=optax.adam(lr)),
              "jgd.flax.TrainState + jgd.adam": lambda lr: jgd.flax.TrainState.create(
                  apply_fn=model.apply, params=fresh(), tx=jgd.adam(lr))}
    return train_step, states


def equinox_contenders(width, batch):
    import equinox as eqx

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, 64)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, batch))
    model = eqx.nn.MLP(64, 10, width, 3, key=jax.random.key(0))
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(p):
        logits = jax.vmap(eqx.combine(p, static))(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def fresh():
        return jax.tree.map(jnp.copy, params)

    def optax_step(lr):  # equinox's examples: make_step closes over the optimizer
        optim = optax.adamw(lr)

        def train_step(state):
            p, opt_state = state
            updates, opt_state = optim.update(jax.grad(loss)(p), opt_state, p)
            return optax.apply_updates(p, updates), opt_state
        return eqx.filter_jit(train_step, donate="all"), lambda: (lambda p: (p, optim.init(p)))(fresh())

    def train_step(state):  # the optimizer an argument, its numbers Python floats
        opt, p, opt_state = state
        updates, opt_state = opt.update(jax.grad(loss)(p), opt_state, p)
        return opt, optax.apply_updates(p, updates), opt_state

    jgd_step = eqx.filter_jit(train_step, donate="all")

    def jgd_contender(lr):
        opt = jgd.adamw(lr)
        return jgd_step, lambda: (lambda p: (opt, p, opt.init(p)))(fresh())

    return {"eqx.filter_jit closing over optax.adamw": optax_step,
            "eqx.filter_jit, jgd.adamw as argument": jgd_contender}


def linen_family(width, batch):
    train_step, states = linen_contenders(width, batch)

    def contender(make):
        step = jax.jit(train_step, donate_argnums=0)  # one per contender, reused for every lr
        return lambda lr: (step, lambda: make(lr))
    return {name: contender(make) for name, make in states.items()}


def main(smoke):
    width, batch = (32, 16) if smoke else (256, 128)
    repeats, per_round = (2, 1) if smoke else (20, 5)
    rows, out = [], []
    for family, baseline in ((linen_family, "flax TrainState + optax.adam"),
                             (equinox_contenders, "eqx.filter_jit closing over optax.adamw")):
        contenders = family(width, batch)
        for name, make in contenders.items():
            with jgd.debug.count_compiles() as compiles:
                for lr in (1e-3, 3e-3, 1e-2):
                    step, state = make(lr)
                    jax.block_until_ready(step(state()))
            rows.append({"contender": name, "baseline": baseline, "compiles_for_3_lrs": compiles.of("train_step")})
        # step time: one state per contender, advanced in interleaved rounds
        steps = {name: make(1e-3) for name, make in contenders.items()}
        current = {name: state() for name, (_, state) in steps.items()}

        def call(name):
            def run():
                current[name] = steps[name][0](current[name])
                jax.block_until_ready(current[name])
            return run

        for name in contenders:
            call(name)()
        times = interleaved_times({name: call(name) for name in contenders}, repeats, per_round, rewarm=per_round > 1)
        base = statistics.median(times[baseline])
        for row in rows[-len(contenders):]:
            t = statistics.median(times[row["contender"]])
            row.update(us_per_step=t * 1e6, ratio_vs_optax=t / base)
        out += rows[-len(contenders):]
    print(f"{'contender':<42} {'compiles (3 lrs)':>16} {'us/step':>9} {'vs optax':>9}")
    for row in out:
        print(f"{row['contender']:<42} {row['compiles_for_3_lrs']:>16} {row['us_per_step']:>9.1f} "
              f"{row['ratio_vs_optax']:>8.2f}x")
    write("frameworks", {"width": width, "batch": batch, "rows": out}, smoke)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true")
    main(parser.parse_args().smoke)

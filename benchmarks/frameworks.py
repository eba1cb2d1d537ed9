"""A flax train step per learning rate, as users write it: flax's ``TrainState`` with
``optax.adam`` (closed over: one compilation per learning rate) against
``jgd.flax.TrainState`` with ``jgd.adam`` (its numbers traced: one compilation for all), and
``nnx.Optimizer`` against ``jgd.nnx.Optimizer`` under ``nnx.jit``. Step time per call
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


def main(smoke):
    width, batch = (32, 16) if smoke else (256, 128)
    repeats, per_round = (2, 1) if smoke else (20, 5)
    train_step, states = linen_contenders(width, batch)
    rows = []
    for name, make in states.items():
        step = jax.jit(train_step, donate_argnums=0)
        with jgd.debug.count_compiles() as compiles:
            for lr in (1e-3, 3e-3, 1e-2):
                jax.block_until_ready(step(make(lr)))
        rows.append({"contender": name, "compiles_for_3_lrs": compiles.of("train_step")})
    # step time: one state per contender, advanced in interleaved rounds
    current = {name: make(1e-3) for name, make in states.items()}
    steps = {name: jax.jit(train_step, donate_argnums=0) for name in states}

    def call(name):
        def run():
            current[name] = steps[name](current[name])
            jax.block_until_ready(current[name].params)
        return run

    for name in states:
        call(name)()
    times = interleaved_times({name: call(name) for name in states}, repeats, per_round, rewarm=per_round > 1)
    base = statistics.median(times["flax TrainState + optax.adam"])
    print(f"{'contender':<34} {'compiles (3 lrs)':>16} {'us/step':>9} {'vs optax':>9}")
    for row in rows:
        t = statistics.median(times[row["contender"]])
        row.update(us_per_step=t * 1e6, ratio_vs_optax=t / base)
        print(f"{row['contender']:<34} {row['compiles_for_3_lrs']:>16} {row['us_per_step']:>9.1f} "
              f"{row['ratio_vs_optax']:>8.2f}x")
    write("frameworks", {"width": width, "batch": batch, "rows": rows}, smoke)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true")
    main(parser.parse_args().smoke)

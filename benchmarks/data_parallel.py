"""Data parallelism on 4 forced CPU devices: ``minimize`` on data sharded over a mesh
(``NamedSharding(mesh, P("data"))``, params replicated) against a hand-written
data-parallel loop (a jitted ``shard_map`` step: each device samples its share of the
batch from its own rows, ``pmean`` of the gradient, an optax adam update), against
``minimize`` with ``data_shards=1`` (one sampler over the whole, sharded data set: the
behaviour before shard-local sampling) and against ``minimize`` on one device. An MLP of
~300k params, batch 512, adam. The goal: data-parallel ``minimize`` ≤ 1.2× the
hand-written loop. Also the compiled loop's collectives.

    python benchmarks/data_parallel.py [--smoke]

Writes results/data_parallel.json. The 4 devices share this machine's cores, so the
figures compare ways of running data parallelism, not speed-ups from more hardware.
"""

import glob
import os
import tempfile

DUMP = tempfile.mkdtemp()  # the compiled programs' HLO, to read the loop's collectives
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
                           f" --xla_dump_to={DUMP} --xla_dump_hlo_pass_re=NONE")

import argparse  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from _common import interleaved, write  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jgd  # noqa: E402


def mlp(widths, key):
    keys = jax.random.split(key, len(widths) - 1)
    return [{"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros(b)}
            for k, a, b in zip(keys, widths[:-1], widths[1:])]


def loss(params, batch):
    x, y = batch
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    logits = x @ params[-1]["w"] + params[-1]["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def main(smoke):
    widths = (64, 64, 10) if smoke else (64, 512, 512, 10)
    examples, batch, steps, repeats = (1024, 64, 10, 1) if smoke else (16384, 512, 200, 5)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(examples, widths[0])).astype(np.float32)
    Y = rng.integers(0, 10, examples).astype(np.int32)
    params = mlp(widths, jax.random.key(0))
    size = sum(x.size for x in jax.tree.leaves(params))
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded = jax.device_put((X, Y), NamedSharding(mesh, P("data")))
    replicated = jax.device_put(params, NamedSharding(mesh, P()))
    tx = optax.adam(1e-3)
    local_batch = batch // 4

    def local_step(p, s, data, t):  # on each device: its own rows, its share of the batch
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(1), t), jax.lax.axis_index("data"))
        index = jax.random.randint(key, (local_batch,), 0, data[1].shape[0])
        value, g = jax.value_and_grad(loss)(p, jax.tree.map(lambda x: x[index], data))
        g, value = jax.lax.pmean((g, value), "data")
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, value

    step = jax.jit(jax.shard_map(local_step, mesh=mesh, in_specs=(P(), P(), P("data"), P()),
                                 out_specs=(P(), P(), P())), donate_argnums=(0, 1))

    def shard_map_loop():
        # the fresh state is ready before the first step: programs dispatched while another
        # device program waits in its all-reduce deadlocked XLA:CPU's forced devices here
        p, s = jax.block_until_ready((jax.tree.map(jnp.copy, replicated), tx.init(replicated)))
        for t in range(steps):
            p, s, value = step(p, s, sharded, jnp.int32(t))
        return jax.block_until_ready(p)

    common = dict(steps=steps, batch_size=batch, key=jax.random.key(2))
    opt = jgd.adam(1e-3)
    contenders = {
        "shard_map_loop": shard_map_loop,
        "minimize_sharded": lambda: jax.block_until_ready(
            jgd.minimize(loss, replicated, opt, data=sharded, **common).params),
        "minimize_sharded_one_sampler": lambda: jax.block_until_ready(
            jgd.minimize(loss, replicated, opt, data=sharded, data_shards=1, **common).params),
        "minimize_one_device": lambda: jax.block_until_ready(
            jgd.minimize(loss, params, opt, data=(X, Y), **common).params),
    }
    for run in contenders.values():
        run()
    t = interleaved(contenders, repeats)
    per_step = {k: 1e3 * v / steps for k, v in t.items()}
    ratios = {k: t[k] / t["shard_map_loop"] for k in t}

    def collectives(data_shards):
        """The all-reduced shapes and other collectives of minimize's compiled loop (XLA's dump)."""
        before = set(glob.glob(f"{DUMP}/*to_the_end*after_optimizations.txt"))
        jgd.minimize(loss, replicated, jgd.adam(1e-3), data=sharded, data_shards=data_shards,
                     **dict(common, steps=steps + 1))  # another steps: a fresh compilation, dumped
        (program,) = set(glob.glob(f"{DUMP}/*to_the_end*after_optimizations.txt")) - before
        hlo = open(program).read()
        reduced = [line.split("=", 1)[1].split("all-reduce")[0].strip() for line in hlo.splitlines()
                   if "all-reduce(" in line or "all-reduce-start(" in line]
        return {"all_reduced": reduced, "all_gathers": hlo.count("all-gather"), "all_to_alls": hlo.count("all-to-all")}

    hlo = {"minimize_sharded": collectives(None), "minimize_sharded_one_sampler": collectives(1)}
    print(f"MLP {size} params, batch {batch}, 4 forced CPU devices: "
          + ", ".join(f"{k} {per_step[k]:.2f} ms/step ({ratios[k]:.2f}x)" for k in t))
    print(f"collectives in the compiled loop: {hlo}")
    write("data_parallel", {"params": size, "batch_size": batch, "examples": examples, "steps": steps,
                            "ms_per_step": per_step, "ratio_to_shard_map_loop": ratios, "collectives": hlo}, smoke)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    main(parser.parse_args().smoke)

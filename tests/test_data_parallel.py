"""Data parallelism that follows the data's sharding. Oracle: the same run on one device
with ``data_shards=m`` (the same stratified sampling, emulated), to float rounding; the
compiled loop's collectives from its HLO. The several-device cases run in a subprocess
with 4 forced CPU devices, since the device count is fixed when JAX starts."""

import os
import pathlib
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import processes
import pytest

import jgd

SCRIPT = textwrap.dedent("""
    import contextlib, glob, os, sys, tempfile
    dump = tempfile.mkdtemp()  # the compiled programs' HLO, to read the loop's collectives
    os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=4 "
                               f"--xla_dump_to={dump} --xla_dump_hlo_pass_re=NONE")
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    import jgd

    rng = np.random.default_rng(0)
    X = rng.normal(size=(256, 8)).astype(np.float32)
    Y = (X @ rng.normal(size=8)).astype(np.float32)
    params = {"w": jnp.zeros((8, 16)), "v": jnp.full((16,), 0.1)}

    def loss(p, batch):
        return 0.5 * jnp.mean((jnp.tanh(batch[0] @ p["w"]) @ p["v"] + batch[0][:, 0] - batch[1]) ** 2)

    kwargs = dict(steps=40, batch_size=32, key=jax.random.key(0))
    for microbatches in (1, 2):
        oracle = jgd.minimize(loss, params, jgd.adam(0.05), data=(X, Y), data_shards=4,
                              microbatches=microbatches, **kwargs)
        for kind in (AxisType.Auto, AxisType.Explicit):
            mesh = jax.make_mesh((4,), ("data",), axis_types=(kind,))
            data = jax.device_put((X, Y), NamedSharding(mesh, P("data")))
            placed = jax.device_put(params, NamedSharding(mesh, P()))
            context = jax.set_mesh(mesh) if kind == AxisType.Explicit else contextlib.nullcontext()
            before = set(glob.glob(f"{dump}/*to_the_end*after_optimizations.txt"))
            with context:  # an Explicit mesh's users work under it (plain jax.grad needs it too)
                r = jgd.minimize(loss, placed, jgd.adam(0.05), data=data, microbatches=microbatches, **kwargs)
            (program,) = set(glob.glob(f"{dump}/*to_the_end*after_optimizations.txt")) - before
            hlo = open(program).read()
            np.testing.assert_allclose(np.asarray(r.losses), np.asarray(oracle.losses), rtol=2e-5, atol=1e-6)
            for name in params:
                np.testing.assert_allclose(np.asarray(r.params[name]), np.asarray(oracle.params[name]),
                                           rtol=2e-5, atol=1e-6)
                assert r.params[name].sharding.is_equivalent_to(placed[name].sharding, placed[name].ndim)
            # per step the gradient's and the loss's all-reduce, and no collective over examples: no
            # all-reduce of a batch-sized array (rows of 32, or 16 a micro-batch), no all-gather
            reduced = [line.split("=", 1)[1].split("all-reduce")[0] for line in hlo.splitlines()
                       if "all-reduce(" in line or "all-reduce-start(" in line]
            assert any("f32[16,8]" in r and "f32[16]" in r for r in reduced), (kind, microbatches, reduced)
            assert not any("[32" in r or "[16,8]" not in r and "[16]" in r for r in reduced), (kind, reduced)
            for collective in ("all-gather", "all-to-all", "collective-permute"):
                assert collective not in hlo, (kind, microbatches, collective)

    mesh = jax.make_mesh((4,), ("data",), axis_types=(AxisType.Auto,))
    errors = []
    for data, batch_size in (((X, Y), 30), ((X[:, :4].T.copy(), Y[:4]), 2)):
        placed = jax.device_put(data, (NamedSharding(mesh, P("data")), NamedSharding(mesh, P("data"))))
        if batch_size == 2:  # features by examples: sharded over its second axis
            placed = (jax.device_put(X[:8, :4], NamedSharding(mesh, P(None, "data"))), jax.device_put(Y[:8]))
        try:
            jgd.minimize(lambda w, b: jnp.sum(w) * jnp.mean(b[1]), jnp.zeros(2), jgd.sgd(0.1), data=placed,
                         steps=2, batch_size=batch_size, key=jax.random.key(0))
        except ValueError as error:
            errors.append(str(error))
    assert "batch_size=30 must divide by the data's 4 shards" in errors[0], errors
    assert "data[0] is sharded over an axis other than its leading" in errors[1], errors
    print("ok")
""")


def test_sharded_data_is_sampled_shard_by_shard_and_equals_the_emulation():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "ok" in out.stdout, out.stdout[-2000:] + out.stderr[-4000:]


TWO_PROCESSES = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{sys.argv[2]}", num_processes=2, process_id=int(sys.argv[1]),
                               initialization_timeout=60)
    import jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import jgd

    rng = np.random.default_rng(0)
    X = rng.normal(size=(128, 8)).astype(np.float32)
    Y = (X @ rng.normal(size=8)).astype(np.float32)

    def loss(w, batch):
        return 0.5 * jnp.mean((jnp.tanh(batch[0] @ w) - batch[1]) ** 2)

    kwargs = dict(steps=30, batch_size=16, key=jax.random.key(1))
    mesh = Mesh(np.array(jax.devices()), ("data",))
    half = slice(64 * jax.process_index(), 64 * jax.process_index() + 64)  # this process's examples
    data = tuple(jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), x[half]) for x in (X, Y))
    w = jax.device_put(np.full(8, 0.1, np.float32), NamedSharding(mesh, P()))
    r = jgd.minimize(loss, w, jgd.adam(0.05), data=data, **kwargs)
    np.save(sys.argv[3], np.stack([np.asarray(r.losses), np.asarray(r.params)[:1].repeat(30)]))
    with jax.default_device(jax.local_devices(backend="cpu")[0]):  # the oracle, on this process alone
        oracle = jgd.minimize(loss, jnp.full(8, 0.1), jgd.adam(0.05), data=(X, Y), data_shards=2, **kwargs)
    np.testing.assert_allclose(np.asarray(r.losses), np.asarray(oracle.losses), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(r.params), np.asarray(oracle.params), rtol=2e-5, atol=1e-6)
    print("ok", jax.process_count())
""")


def test_two_processes_with_half_the_data_each_equal_the_emulation(tmp_path):
    """2 processes × 1 device joined by jax.distributed, each holding half the examples of a
    global data array: the data-parallel run equals one process with data_shards=2."""
    port = processes.free_port()
    done = processes.run_together([[sys.executable, "-c", TWO_PROCESSES, str(i), port, str(tmp_path / f"{i}.npy")]
                                   for i in range(2)], env={**os.environ, "JAX_PLATFORMS": "cpu"})
    for returncode, stdout, stderr in done:
        assert returncode == 0 and "ok 2" in stdout, stdout[-2000:] + stderr[-4000:]
    np.testing.assert_array_equal(np.load(tmp_path / "0.npy"), np.load(tmp_path / "1.npy"))  # both hold the result


def test_the_guides_two_process_script_runs_as_written(tmp_path):
    """The data-parallel guide's several-host script, started twice on this machine."""
    guide = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "guides" / "data-parallel.md").read_text()
    (script,) = re.findall(r"^```py\n(.*?)^```\n", guide, flags=re.S | re.M)
    (tmp_path / "dp.py").write_text(script.replace("127.0.0.1:12355", f"127.0.0.1:{processes.free_port()}"))
    done = processes.run_together([[sys.executable, "dp.py", str(i)] for i in range(2)], cwd=tmp_path,
                                  env={**os.environ, "JAX_PLATFORMS": "cpu"})
    printed = []
    for returncode, stdout, stderr in done:
        assert returncode == 0, stdout[-2000:] + stderr[-4000:]
        printed.append(re.findall(r"^(\d) (\S+)$", stdout, flags=re.M)[-1])  # after gloo's own lines
    assert [int(line[0]) for line in printed] == [0, 1] and printed[0][1] == printed[1][1], printed
    assert float(printed[0][1]) < 1e-2  # it trained


def test_data_shards_samples_each_block_once_an_epoch():
    n, b, m = 48, 12, 4
    examples = jnp.arange(n, dtype=jnp.float32)

    def fun(w, batch):
        return jnp.sum(w ** 2) + 0.0 * jnp.sum(batch), batch

    r = jgd.minimize(fun, jnp.ones(1), jgd.sgd(0.1), steps=8, data=examples, batch_size=b, data_shards=m,
                     key=jax.random.key(2), has_aux=True, record_aux=True)
    batches = np.asarray(r.aux).astype(int)  # (steps, b): each step's examples, shard by shard
    per_epoch = n // b
    for batch in batches:
        blocks = batch.reshape(m, b // m) // (n // m)
        np.testing.assert_array_equal(blocks, np.repeat(np.arange(m)[:, None], b // m, axis=1))  # b/m from each
    for epoch in range(len(batches) // per_epoch):
        seen = batches[epoch * per_epoch:(epoch + 1) * per_epoch].ravel()
        np.testing.assert_array_equal(np.sort(seen), np.arange(n))  # every example once an epoch
    # one shard is no sharding, bit for bit
    kwargs = dict(steps=8, data=examples, batch_size=b, key=jax.random.key(2), has_aux=True, record_aux=True)
    np.testing.assert_array_equal(jgd.minimize(fun, jnp.ones(1), jgd.sgd(0.1), data_shards=1, **kwargs).aux,
                                  jgd.minimize(fun, jnp.ones(1), jgd.sgd(0.1), **kwargs).aux)


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_size=10, data_shards=4), "batch_size=10 must divide by the data's 4 shards"),
    (dict(batch_size=8, data_shards=4, microbatches=4), r"each micro-batch \(8 // 4\) must divide"),
    (dict(batch_size=6, data_shards=3), "40 examples must split into 3 equal shards"),
    (dict(batch_size=8, data_shards=0), "data_shards"),
])
def test_bad_data_shards(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jgd.minimize(lambda w, b: jnp.sum(w * jnp.mean(b)), jnp.ones(1), jgd.sgd(0.1), steps=2,
                     data=jnp.ones(40), key=jax.random.key(0), **kwargs)


FSDP = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    import jgd

    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    split = NamedSharding(mesh, P("data", None))
    params = {"w": jax.device_put(jnp.ones((512, 64)), split),
              "b": jax.device_put(jnp.zeros(64), NamedSharding(mesh, P()))}
    rules = {"sgd": jgd.sgd(0.1, momentum=0.9), "momentum": jgd.momentum(0.1, 0.9), "adam": jgd.adam(0.1),
             "adamw": jgd.adamw(0.1), "adagrad": jgd.adagrad(0.1), "rmsprop": jgd.rmsprop(0.1),
             "lion": jgd.lion(0.1), "chain": jgd.chain(jgd.clip_by_global_norm(1.0), jgd.adam(0.1))}
    for name, opt in rules.items():
        # eager init (a jitted init's outputs are placed by the compiler: not covered yet)
        for how, init in (("eager", opt.init),):
            state = init(params)
            for leaf in jax.tree.leaves(state):
                if getattr(leaf, "shape", None) == (512, 64):
                    assert leaf.sharding.is_equivalent_to(split, 2), (name, how, leaf.sharding)
                    per_device = {s.device: s.data.nbytes for s in leaf.addressable_shards}
                    assert max(per_device.values()) == leaf.nbytes // 4, (name, how, per_device)
        # and through an update
        grads = jax.tree.map(lambda p: 0.01 * p, params)
        updates, state = jax.jit(opt.update)(grads, opt.init(params), params)
        assert updates["w"].sharding.is_equivalent_to(split, 2), (name, updates["w"].sharding)

    # FSDP through minimize: the weight split over the data axis, the data sharded too
    rng = np.random.default_rng(0)
    X = rng.normal(size=(256, 512)).astype(np.float32)
    Y = rng.normal(size=256).astype(np.float32)
    start = {"w": jnp.asarray(rng.normal(size=(512, 64)) / 23, jnp.float32), "b": jnp.zeros(64)}

    def loss(p, batch):
        return 0.5 * jnp.mean((jnp.sum(jnp.tanh(batch[0] @ p["w"] + p["b"]), axis=1) - batch[1]) ** 2)

    kwargs = dict(steps=30, batch_size=32, key=jax.random.key(0))
    oracle = jgd.minimize(loss, start, jgd.adam(0.01), data=(X, Y), data_shards=4, **kwargs)
    placed = {"w": jax.device_put(start["w"], split), "b": jax.device_put(start["b"], NamedSharding(mesh, P()))}
    r = jgd.minimize(loss, placed, jgd.adam(0.01), data=jax.device_put((X, Y), NamedSharding(mesh, P("data"))),
                     **kwargs)
    np.testing.assert_allclose(np.asarray(r.losses), np.asarray(oracle.losses), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(r.params["w"]), np.asarray(oracle.params["w"]), rtol=2e-5, atol=1e-6)
    for leaf in (r.params["w"], r.best_params["w"], r.state.opt_state.mu["w"], r.state.opt_state.nu["w"]):
        assert leaf.sharding.is_equivalent_to(split, 2), leaf.sharding
        assert max(s.data.nbytes for s in leaf.addressable_shards) == leaf.nbytes // 4
    print("ok")
""")


def test_state_follows_the_params_sharding_through_init_update_and_minimize():
    out = subprocess.run([sys.executable, "-c", FSDP], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "ok" in out.stdout, out.stdout[-2000:] + out.stderr[-4000:]

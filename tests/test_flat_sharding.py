"""jgd.flat keeps sharded leaves sharded: with params split over 4 (forced CPU) devices,
flat(adam) gives adam's numbers and output shardings, and its compiled step has no
all-gather; on an Explicit mesh a jitted init lays the state out as an eager one. Runs
in a subprocess, since the device count is fixed at JAX's start."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import jgd

    mesh = Mesh(np.array(jax.devices()), ("x",))
    rng = np.random.default_rng(0)
    place = lambda a, spec: jax.device_put(jnp.asarray(a, jnp.float32), NamedSharding(mesh, spec))
    params = {"w": place(rng.normal(size=(8, 16)), P("x", None)), "v": place(rng.normal(size=(16, 4)), P(None, "x")),
              "b": place(rng.normal(size=16), P()), "s": place(1.5, P())}
    grads = jax.tree.map(lambda p: p * 0.1 + 0.01, params)

    def step(opt):
        def run(params, state, grads):
            updates, state = opt.update(grads, state, params)
            return jgd.apply_updates(params, updates), state
        state = opt.init(params)
        compiled = jax.jit(run).lower(params, state, grads).compile()
        return compiled(params, state, grads), compiled.as_text()

    (expected, _), _ = step(jgd.adam(0.1))
    for pack_below in (None, 0):
        (out, state), hlo = step(jgd.flat(jgd.adam(0.1), pack_below=pack_below))
        for name in params:
            np.testing.assert_allclose(np.asarray(out[name]), np.asarray(expected[name]), rtol=1e-6, atol=1e-7)
            assert out[name].sharding.is_equivalent_to(params[name].sharding, out[name].ndim), name
        assert "all-gather" not in hlo, "flat gathered a sharded leaf"
        # the replicated leaves are still packed together
        assert {"float32"} <= set(state.inner.mu), state.inner.mu.keys()

    # On an Explicit mesh the shardings are part of the types, so a jitted init sees them:
    # the same layout and shardings as an eager one (on an Auto mesh a trace carries none)
    from jax.sharding import AxisType
    explicit = jax.make_mesh((4,), ("x",), axis_types=(AxisType.Explicit,))
    with jax.sharding.set_mesh(explicit):
        placed = {k: jax.device_put(v, NamedSharding(explicit, v.sharding.spec)) for k, v in params.items()}
        opt = jgd.flat(jgd.adam(0.1))
        eager, jitted = opt.init(placed), jax.jit(opt.init)(placed)
    assert jax.tree.structure(eager) == jax.tree.structure(jitted)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        assert a.shape == b.shape and a.sharding.is_equivalent_to(b.sharding, a.ndim), (a.sharding, b.sharding)
    assert len(jax.tree.leaves(eager.inner.mu)) == 3  # w and v their own, b and s packed
    print("ok")
""")


def test_flat_keeps_sharded_leaves_sharded_without_all_gather():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stdout[-2000:] + out.stderr[-4000:]

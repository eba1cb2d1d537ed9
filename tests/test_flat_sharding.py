"""jgd.flat keeps sharded leaves sharded: with params split over 4 (forced CPU) devices,
flat(adam) gives adam's numbers and output shardings, and its compiled step has no
all-gather. Runs in a subprocess, since the device count is fixed at JAX's start."""

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
    print("ok")
""")


def test_flat_keeps_sharded_leaves_sharded_without_all_gather():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stdout[-2000:] + out.stderr[-4000:]

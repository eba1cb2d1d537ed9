"""Runs one fixed sweep and saves its losses; used by test_sweep.py in subprocesses with
4 forced CPU devices (through the host loop with "host" after the mode), or as one of two processes joined by jax.distributed (optionally
saving to, and resuming from, a save_dir given after the port; with "host" there, through
the host loop; or, with "global" there,
each process holding half the examples of one global data array sharded over both, and
optionally a save_dir after it)."""

import sys

import jax
import numpy as np

if __name__ == "__main__":
    out, mode = sys.argv[1], sys.argv[2]
    if mode == "distributed":
        process_id, port = int(sys.argv[3]), sys.argv[4]
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
                                   initialization_timeout=60)

import sweep_case  # noqa: E402

if __name__ == "__main__":
    extra = sys.argv[5] if len(sys.argv) > 5 else None
    if extra == "global":  # this process's half of the rows, one global array over both processes
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        rows = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec("data"))
        half = slice(32 * jax.process_index(), 32 * jax.process_index() + 32)
        data = tuple(jax.make_array_from_process_local_data(rows, x[half]) for x in (sweep_case.X, sweep_case.Y))
        assert not data[0].is_fully_addressable
        save = {"save_dir": sys.argv[6], "save_every": 10} if len(sys.argv) > 6 else {}
        result = sweep_case.run(data=data, **save)
    elif mode == "devices" and len(sys.argv) > 3:
        result = sweep_case.run(loop=sys.argv[3])
    elif extra == "host":
        result = sweep_case.run(loop="host")
    else:
        result = sweep_case.run(**({} if extra is None else {"save_dir": extra, "save_every": 10}))
    assert len(jax.devices()) == (4 if mode == "devices" else 2 if mode == "distributed" else 1), jax.devices()
    np.save(out, result.losses)
    print("devices", len(jax.devices()), "processes", jax.process_count())

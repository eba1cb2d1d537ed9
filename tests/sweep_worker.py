"""Runs one fixed sweep and saves its losses; used by test_sweep.py in subprocesses with
4 forced CPU devices, or as one of two processes joined by jax.distributed (optionally
saving to, and resuming from, a save_dir given after the port)."""

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
    save = {} if len(sys.argv) <= 5 else {"save_dir": sys.argv[5], "save_every": 10}
    result = sweep_case.run(**save)
    assert len(jax.devices()) == (4 if mode == "devices" else 2 if mode == "distributed" else 1), jax.devices()
    np.save(out, result.losses)
    print("devices", len(jax.devices()), "processes", jax.process_count())

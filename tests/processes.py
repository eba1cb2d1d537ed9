"""Processes started together and waited for: the several-process tests (jax.distributed
on 127.0.0.1) use these."""

import socket
import subprocess


def free_port() -> str:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def run_together(commands, timeout=300, **popen):
    """Starts every command at once and waits for all: ``[(returncode, stdout, stderr)]``.
    None outlives the call (a process still running at the timeout is killed)."""
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
             for command in commands]
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs)]

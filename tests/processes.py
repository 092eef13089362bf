"""The processes of one multi-process run on localhost, as a launcher starts them:
`omni-jax --coordinator localhost:PORT --num-processes N --process-id I …`, each with its own
simulated devices and its own log file.

Each process writes to a file, not a pipe: pipes read one after another let the process not yet
read fill its pipe and block, so it never reaches the run's end while the other waits for it at
the shutdown barrier.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import COMPILE_FASTER


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def devices_env(devices: int, optimized: bool = False) -> dict[str, str]:
    """The environment of a process with `devices` simulated CPU devices and conftest's other
    XLA flags; `optimized`: without those that compile faster and run slower, for a process that
    runs more than it compiles (the face detector over many frames)."""
    dropped = ("--xla_force_host_platform_device_count", *(COMPILE_FASTER if optimized else ()))
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(dropped))
    return {**os.environ, "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} {flags}"}


class Processes:
    """`count` processes of `omni-jax --json <argv>`, in `cwd`, logging to `logs/process-I.log`."""

    def __init__(self, argv: list[str], logs: Path, *, count: int = 2, devices: int = 4, cwd: Path | None = None,
                 optimized: bool = False):
        logs.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.logs = [logs / f"process-{i}.log" for i in range(count)]
        self.processes = []
        for i, log in enumerate(self.logs):
            with open(log, "w") as stream:
                self.processes.append(subprocess.Popen(
                    [sys.executable, "-m", "omni_jax.cli", "--json", "--coordinator", f"localhost:{port}",
                     "--num-processes", str(count), "--process-id", str(i), *argv],
                    cwd=cwd, env=devices_env(devices, optimized), stdout=stream, stderr=subprocess.STDOUT, text=True))

    def outputs(self) -> list[str]:
        return [log.read_text() for log in self.logs]

    def wait(self, timeout: float = 600) -> list[str]:
        """Every process's output once all have ended; asserts each exited 0, showing every
        output if not (one process's error often shows only as the other's timeout)."""
        for process in self.processes:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        outputs = self.outputs()
        assert all(p.returncode == 0 for p in self.processes), "\n".join(
            f"process {i} (exit {p.returncode}):\n{output[-6000:]}"
            for i, (p, output) in enumerate(zip(self.processes, outputs)))
        return outputs

    def kill(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGKILL)
            process.wait()

    def ended(self) -> str | None:
        """The output of a process that has already ended, if one has."""
        for process, output in zip(self.processes, self.outputs()):
            if process.poll() is not None:
                return output
        return None

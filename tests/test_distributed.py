"""Two processes on localhost (jax.distributed, CPU collectives), 4 simulated devices each: the
sharded forward and one train step over the 8 devices equal one process on one device."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from omni_jax.sharding import make_mesh
from tests.conftest import rel_err
from tests.distributed_worker import run

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
    out, port = tmp_path / "two_processes.npz", _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}  # the worker sets its 4 devices, keeping the collective timeouts
    workers = [subprocess.Popen([sys.executable, "-m", "tests.distributed_worker", str(port), str(i), str(out)],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i in range(2)]
    logs = [w.communicate(timeout=600)[0] for w in workers]
    for i, (worker, log) in enumerate(zip(workers, logs)):
        assert worker.returncode == 0, f"process {i} failed:\n{log[-3000:]}"
    distributed = dict(np.load(out))
    single = run(make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    assert set(distributed) == set(single) and len(single) > 10
    assert int(distributed["tokens"]) == int(single["tokens"]) > 0
    np.testing.assert_allclose(distributed["loss"], single["loss"], rtol=1e-5)
    assert rel_err(distributed["logits"], single["logits"]) < 1e-5
    for key in single:
        if key.startswith("params/"):
            np.testing.assert_allclose(distributed[key], single[key], rtol=2e-4, atol=1e-6, err_msg=key)

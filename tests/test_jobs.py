"""What `omni_jax.jobs` adds around every job that the CLI tests do not reach from outside."""
import gc
import os
import signal
import time

import pytest

from omni_jax.jobs import Terminated, TerminateOnSigterm


def test_a_sigterm_that_lands_in_a_garbage_collector_callback_still_stops_the_job(capsys):
    """Python drops an exception raised in a gc callback ("Exception ignored in …"): the job must
    still stop, promptly and without that print, and the handler before it be back after."""
    delivered = []

    def callback(phase: str, info: dict) -> None:
        if phase == "start" and not delivered:
            delivered.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs here, inside the callback
                pass

    before = signal.getsignal(signal.SIGTERM)
    gc.callbacks.append(callback)
    try:
        with pytest.raises(Terminated), TerminateOnSigterm():
            gc.collect()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # the job's own code, which the signal must reach
                time.sleep(0.001)
    finally:
        gc.callbacks.remove(callback)
    assert delivered and signal.getsignal(signal.SIGTERM) is before
    assert "Exception ignored" not in capsys.readouterr().err

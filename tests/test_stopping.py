"""Signals that Python would drop: a handler's exception raised inside a garbage collector's
callback is printed as "Exception ignored in …" and lost, so a job ran on past its SIGTERM
(`jobs.TerminateOnSigterm`) or past a second Ctrl-C (`stopping.StopRequest`)."""
import contextlib
import gc
import os
import signal
import time

import pytest

from omni_jax.jobs import Terminated, TerminateOnSigterm
from omni_jax.stopping import StopRequest


@contextlib.contextmanager
def ctrl_c_twice():
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # the first asks to save and stop
        assert stop.interrupted
        yield


@pytest.mark.parametrize("signum, installed, raised", [(signal.SIGTERM, TerminateOnSigterm, Terminated),
                                                       (signal.SIGINT, ctrl_c_twice, KeyboardInterrupt)])
def test_a_signal_that_lands_in_a_garbage_collector_callback_still_stops_the_job(signum, installed, raised, capsys):
    """The job stops promptly, nothing is printed, and the handlers before are back after."""
    delivered = []

    def callback(phase: str, info: dict) -> None:
        if phase == "start" and not delivered:
            delivered.append(True)
            os.kill(os.getpid(), signum)
            for _ in range(1000):  # the handler runs here, inside the callback
                pass

    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(raised), installed():
        gc.callbacks.append(callback)
        try:
            gc.collect()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # the job's own code, which the signal must reach
                time.sleep(0.001)
        finally:
            gc.callbacks.remove(callback)
    assert delivered and (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
    assert "Exception ignored" not in capsys.readouterr().err

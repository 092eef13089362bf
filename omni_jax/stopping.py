"""Stopping a long job between items, as schedulers and people ask: SIGTERM or Ctrl-C.

SIGTERM (a scheduler's, to the process or to its whole process group: SLURM, `docker stop`, a
preempted VM) or a Ctrl-C (SIGINT) asks the job to finish its current item — a training step,
an evaluation batch — save what it has, and stop; a second Ctrl-C stops at once
(KeyboardInterrupt, which `omni-jax` reports in one line). With several processes, jax's
preemption service (which handles SIGTERM) makes them agree on the item to stop after: a
Ctrl-C is handed to it as a SIGTERM. The data workers leave both signals to the main process
(`data.pipeline.leave_signals_to_the_main_process`).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import jax
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


class RaisedAgain:
    """While entered, an exception of `kind` that a signal handler raised and Python dropped —
    it landed in a callback Python runs for itself (a garbage collector's callback, a
    `__del__`: "Exception ignored in …") — is not printed, and `signum` is sent to the main
    thread again a moment later, to land in the job's own code. (From a thread: any way of
    raising the signal from the hook runs its handler there, at once.) `installed` is False
    from the moment the handler before may be back: a handler that asks it ignores a late one."""

    def __init__(self, signum: int, kind: type[BaseException]) -> None:
        self.signum, self.kind, self.installed, self.lock = signum, kind, False, threading.Lock()

    def hook(self, unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, self.kind):
            threading.Timer(0.01, self.send_again).start()
        else:
            self.previous_hook(unraisable)

    def send_again(self) -> None:
        with self.lock:  # never once the handler before may be back
            if self.installed:
                signal.pthread_kill(threading.main_thread().ident, self.signum)

    def __enter__(self) -> RaisedAgain:
        self.previous_hook, sys.unraisablehook = sys.unraisablehook, self.hook
        self.installed = True
        return self

    def __exit__(self, *_: Any) -> None:
        with self.lock:
            self.installed = False
        time.sleep(0.001)  # a signal sent just before is handled now, by the handler still installed
        sys.unraisablehook = self.previous_hook


class StopRequest:
    """Installs the handlers (from the main thread; elsewhere nothing is asked); `reached()`,
    asked after each item, says, the same on every process, whether to stop; `close()`
    restores them."""

    def __init__(self, saving: str = "saving at the next step"):
        self.saving = saving
        self.requested, self.interrupted, self.previous, self.calls = threading.Event(), False, {}, 0
        self.second_ctrl_c = RaisedAgain(signal.SIGINT, KeyboardInterrupt)
        if threading.current_thread() is threading.main_thread():
            self.second_ctrl_c.__enter__()  # first: a second Ctrl-C acts only while it is installed
            if jax.process_count() == 1:
                self.previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, lambda *_: self.requested.set())
            self.previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._interrupt)

    def _interrupt(self, *_: Any) -> None:
        if self.interrupted:
            if self.second_ctrl_c.installed:
                raise KeyboardInterrupt  # the second Ctrl-C
            return
        self.interrupted = True
        log.warning("interrupted: %s (Ctrl-C again stops at once, losing what is not saved)", self.saving)
        if jax.process_count() > 1:
            os.kill(os.getpid(), signal.SIGTERM)  # to jax's preemption service, which tells the other processes
        else:
            self.requested.set()

    def reached(self) -> bool:
        """Asked after every item, by every process (with several, a sync point: jax wants its
        ids to keep increasing, so they count the calls)."""
        self.calls += 1
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(self.calls)
        return self.requested.is_set()

    def close(self) -> None:
        if self.second_ctrl_c.installed:
            self.second_ctrl_c.__exit__()
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}

    def __enter__(self) -> StopRequest:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

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
import threading
from typing import Any

import jax
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


class StopRequest:
    """Installs the handlers (from the main thread; elsewhere nothing is asked); `reached()`,
    asked after each item, says, the same on every process, whether to stop; `close()`
    restores them."""

    def __init__(self, saving: str = "saving at the next step"):
        self.saving = saving
        self.requested, self.interrupted, self.previous, self.calls = threading.Event(), False, {}, 0
        if threading.current_thread() is threading.main_thread():
            if jax.process_count() == 1:
                self.previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, lambda *_: self.requested.set())
            self.previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._interrupt)

    def _interrupt(self, *_: Any) -> None:
        if self.interrupted:
            raise KeyboardInterrupt  # the second Ctrl-C
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
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}

    def __enter__(self) -> StopRequest:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

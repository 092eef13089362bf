"""What a job tells the person waiting for it, while it runs.

Every job takes `progress: Progress` (default `QUIET`: a Python caller sees nothing):

    with progress.stage("compiling the train step"):   # "compiling the train step…", then its time
        ...
    with progress.bar(total=len(batches), unit="clip", desc="dfew") as bar:   # a bar with a rate
        bar.update(8)
    progress.emit(record, text)                         # a result as soon as it is known

The command line gives a Progress that writes stages and bars to standard error, and prints
emitted results on standard output (each a JSON line with --json, where stages and bars are
silent).
"""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, Callable, Iterator, TextIO

from tqdm import tqdm

Emit = Callable[[dict[str, Any], str], None]


class Progress:
    """Stages and bars on `stream` (standard error) when `enabled`; `emit(record, text)` hands a
    result to `on_result` (none: dropped)."""

    def __init__(self, enabled: bool = True, on_result: Emit | None = None, stream: TextIO | None = None):
        self.enabled, self.on_result, self._stream = enabled, on_result, stream

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stderr

    def say(self, text: str) -> None:
        """One line for the person waiting (above the bars that are drawn, which stay)."""
        if self.enabled:
            tqdm.write(text, file=self.stream)

    @contextlib.contextmanager
    def stage(self, what: str) -> Iterator[None]:
        """A step that takes a while: announced, then its time once done."""
        self.say(f"{what}…")
        start = time.perf_counter()
        yield
        self.say(f"{what}: {time.perf_counter() - start:.1f} s")

    def bar(self, total: int | None = None, unit: str = "it", desc: str = "", initial: int = 0,
            unit_scale: bool = False) -> tqdm:
        """A progress bar (tqdm: `update(n)`, a context manager) with the rate per `unit`."""
        return tqdm(total=total, initial=initial, unit=unit, desc=desc, unit_scale=unit_scale, file=self.stream,
                    disable=not self.enabled, dynamic_ncols=True)

    def emit(self, record: dict[str, Any], text: str) -> None:
        """A result the job has for its caller now (an answer), as a record and as a line."""
        if self.on_result is not None:
            self.on_result(record, text)


QUIET = Progress(enabled=False)

"""What the benchmarks here share: a median wall-clock timer and the description of the run."""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from typing import Callable

import jax
import torch


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall-clock seconds of `repeats` calls of `fn` (which must block until done)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_info() -> dict[str, str]:
    """Date, machine and framework versions, the header of every benchmark's JSON."""
    return {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()} {os.cpu_count()} cores",
            "jax": jax.__version__, "torch": torch.__version__}


def finish(results: dict, as_json: bool) -> None:
    """The closing lines every benchmark prints: where it ran, then (with --json) one JSON object."""
    print(f"torch threads {torch.get_num_threads()}; {results['machine']}; {results['date']}")
    if as_json:
        print(json.dumps(results))

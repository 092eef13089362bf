"""The job contract, and running a job for the command line.

Every job is a function `run(cfg, *, <its inputs and outputs>, [stop], [model_overrides],
progress) -> summary` (a package with several jobs names each: `conversion.job.export`): `cfg`
a ConfigDict of named sections (`omni_jax/configs/`), the paths keyword arguments, `stop` a
StopRequest for the jobs that stop between items (train, eval, faces, annotate), `progress` a
`progress.Progress` (default: quiet), the result a dict. A job refuses an output that exists
unless it resumes it, checks the config fields it reads (`config_flags.check_ranges`), and
returns `error` in its summary when it did its work but too much of it failed (every clip
unreadable, more skipped than its fraction allows: `data.manifest.too_many_skipped`). Python
callers call the same functions.

`execute(job, ...)` is what the command line adds, the same for every job: XLA:CPU's options
and logging set before JAX starts, `jax.distributed` for the jobs that span processes, the
config loaded and overridden, the stop request, the progress on standard error, the time taken,
the errors (a user's mistake one line, a bug its traceback), the result (`key: value` lines, or
one JSON object with --json) and the exit code (docs/cli.md).
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable, Sequence

from tqdm import tqdm

from omni_jax import xla_cpu
from omni_jax.config_flags import MODEL_PREFIX, apply_overrides, load_config, resolve_paths, set_paths
from omni_jax.errors import InputError, Stopped, UserError
from omni_jax.progress import Progress

# exit statuses: done (or stopped by SIGTERM between items, its work kept), a user's mistake or
# a job whose items failed, a usage error, a bug (sysexits' EX_SOFTWARE), Ctrl-C, SIGTERM
OK, FAILED, USAGE, BUG_EXIT, INTERRUPTED, TERMINATED = 0, 1, 2, 70, 130, 143
# OSErrors that are the machine's, not a bug's: one line, as the user's mistakes are
MACHINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EACCES, errno.EPERM, errno.ESTALE,
                  errno.ENOTCONN}


@dataclasses.dataclass(frozen=True)
class Job:
    """A job as the command line runs it."""

    name: str  # the subcommand
    function: str  # "module:function"
    config: str  # the default --config
    stops: bool = False  # stops between items on SIGTERM / Ctrl-C (takes `stop`)
    processes: bool = False  # may span processes (jax.distributed)
    from_checkpoint: bool = False  # takes `model_overrides` (runs.run_config)
    emitted: str = ""  # the summary's list of results the job emitted as they came (not printed again)

    def load(self) -> Callable[..., dict[str, Any]]:
        module, _, function = self.function.partition(":")
        return getattr(importlib.import_module(module), function)


class Terminated(BaseException):
    """SIGTERM reached a job that does not stop between items (BaseException: no `except
    Exception` on the way swallows it)."""


class TerminateOnSigterm:
    """While entered, SIGTERM raises Terminated in the main thread, again if Python dropped it
    (`stopping.RaisedAgain`); `check()` raises it again for one a library swallowed (a bare
    `except:` around an import it tries)."""

    def __init__(self) -> None:
        from omni_jax.stopping import RaisedAgain

        self.received = False
        self.raised_again = RaisedAgain(signal.SIGTERM, Terminated)

    def __call__(self, *_: Any) -> None:
        if self.raised_again.installed:
            self.received = True
            raise Terminated

    def __enter__(self) -> "TerminateOnSigterm":
        self.raised_again.__enter__()  # first: the handler acts only while it is installed
        self.previous = signal.signal(signal.SIGTERM, self)
        return self

    def __exit__(self, *_: Any) -> None:
        self.raised_again.__exit__()
        signal.signal(signal.SIGTERM, self.previous)

    def check(self) -> None:
        if self.received:
            raise Terminated


def prepare_process(quiet: bool) -> None:
    """What must be set before JAX starts its backend, and the log's shape."""
    xla_cpu.configure()  # XLA reads XLA_FLAGS when JAX starts its CPU backend: nothing has yet
    # force: an import may have configured the root logger already (absl does, the first time orbax logs)
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax's per-save INFO lines
    # JAX probing for a TPU on every machine without one ("Unable to initialize backend 'tpu'")
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)


def initialize_distributed(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    """jax.distributed.initialize() for a multi-process launch: explicit flags, or a launcher
    JAX detects (SLURM, Open MPI, TPU pod slices, JAX_COORDINATOR_ADDRESS)."""
    import jax

    launched = any(int(os.environ.get(var, "1")) > 1 for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")) or (
        "JAX_COORDINATOR_ADDRESS" in os.environ or "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""))
    if coordinator or num_processes or process_id is not None:
        if None in (coordinator, num_processes, process_id):
            raise InputError("a multi-process run without a launcher JAX detects takes --coordinator HOST:PORT, "
                             "--num-processes N and --process-id I together")
        jax.distributed.initialize(coordinator, num_processes, process_id)
    elif launched:
        jax.distributed.initialize()


def users_path(error: OSError, paths: dict[str, str]) -> str | None:
    """The flag or field whose path (or a file under it) `error` is about, if any."""
    filenames = [os.path.abspath(str(f)) for f in (error.filename, error.filename2) if f]
    for flag, path in paths.items():
        if "://" in path:
            continue
        if any(f == path or f.startswith(path.rstrip(os.sep) + os.sep) for f in filenames):
            return flag
    return None


@dataclasses.dataclass
class Output:
    """What the command prints: results on standard output (JSON lines with --json), errors
    and stops on standard error."""

    command: str
    json: bool
    debug: bool

    def result(self, record: dict[str, Any], text: str) -> None:
        if self.json:
            print(json.dumps(record, ensure_ascii=False, default=str), flush=True)
        else:  # above the progress bars on standard error, which stay below
            tqdm.write(text, file=sys.stdout)

    def summary(self, summary: dict[str, Any], ok: bool) -> None:
        if self.json:
            print(json.dumps({"ok": ok, **summary}, ensure_ascii=False, default=str))
        else:
            for key, value in summary.items():
                print(f"{key:>14}: {value}")

    def error(self, message: str, **extra: Any) -> None:
        print(f"error: {message}", file=sys.stderr)
        if self.json:
            print(json.dumps({"ok": False, "error": message, **extra}, ensure_ascii=False))

    def stopped(self, message: str) -> None:
        print(f"omni-jax {self.command}: {message}", file=sys.stderr)


def execute(job: Job, config: str, overrides: Sequence[str], arguments: dict[str, Any], paths: dict[str, str],
            out: Output, distributed: tuple[str | None, int | None, int | None] = (None, None, None)) -> int:
    """Runs `job` for the command line; returns the exit status. arguments: the job's keyword
    arguments from the flags; paths: {flag: the absolute path given} (an OSError about one is the
    user's, named by its flag)."""
    prepare_process(out.json)
    # SIGTERM to a job that does not stop between items: unwind (the data workers, which leave
    # the signal to this process, are stopped with it) and say so
    handles_signals = threading.current_thread() is threading.main_thread()
    terminate = TerminateOnSigterm()
    installed = contextlib.ExitStack()
    if handles_signals and not job.stops:
        installed.enter_context(terminate)
    given = dict(paths)
    start = time.perf_counter()
    try:
        if job.processes:
            initialize_distributed(*distributed)
        cfg = load_config(config)
        apply_overrides(cfg, overrides)
        resolve_paths(cfg)
        given.update(set_paths(cfg))
        kwargs = dict(arguments)
        if job.from_checkpoint:
            # what the command line sets in the model ("text.rope_theta"): a run from a checkpoint
            # refuses those it may not change (runs.run_config)
            kwargs["model_overrides"] = [o[len(MODEL_PREFIX):].partition("=")[0] for o in overrides
                                         if o.startswith(MODEL_PREFIX)]
        progress = Progress(enabled=not out.json, on_result=out.result)
        function = job.load()
        terminate.check()
        if job.stops:
            from omni_jax.stopping import StopRequest

            with StopRequest() as stop:
                summary = function(cfg, **kwargs, stop=stop, progress=progress)
        else:
            summary = function(cfg, **kwargs, progress=progress)
    except Stopped as stopped:  # SIGTERM or Ctrl-C between items: the work done is kept
        out.stopped(str(stopped))
        if out.json:
            print(json.dumps({"ok": True, "stopped": "interrupted" if stopped.interrupted else "preempted",
                              "message": str(stopped)}))
        return INTERRUPTED if stopped.interrupted else OK
    except KeyboardInterrupt:  # a second Ctrl-C during training, or one during any other job
        out.stopped("stopped (Ctrl-C)")
        return INTERRUPTED
    except Terminated:
        out.stopped("stopped (SIGTERM)")
        return TERMINATED
    except Exception as error:
        flag = users_path(error, given) if isinstance(error, OSError) else None
        if isinstance(error, UserError) or flag or (isinstance(error, OSError) and error.errno in MACHINE_ERRNOS):
            # the input, or the machine (a full disk, a lost mount): one line
            if out.debug:
                traceback.print_exc()
            out.error(f"{flag}: {error.strerror or error}: {error.filename}" if flag else str(error))
            return FAILED
        # a bug: its traceback is what a report needs
        traceback.print_exc()
        print(f"omni-jax {job.name}: this is a bug in omni_jax, not a mistake in the input; please report it "
              "with the traceback above", file=sys.stderr)
        if out.json:
            print(json.dumps({"ok": False, "error": f"{type(error).__name__}: {error}", "bug": True}))
        return BUG_EXIT
    finally:
        installed.close()
    summary.pop(job.emitted, None)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    if summary.get("stopped") == "interrupted":  # a Ctrl-C that training answered by saving
        out.stopped(f"interrupted (Ctrl-C) and saved at step {summary['step']}; the same command resumes")
    failure = summary.get("error")
    out.summary(summary, ok=failure is None)
    if failure is not None:
        print(f"error: {failure}", file=sys.stderr)
        return FAILED
    return INTERRUPTED if summary.get("stopped") == "interrupted" else OK

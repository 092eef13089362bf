"""Files the processes of a job write apart, resumably, and merge: per-process progress files
(a key line, then one entry per finished batch, appended and flushed as they finish; a kill
leaves at most a torn last line) and per-process parts merged in manifest order by process 0.
`omni-jax eval`'s predictions, `omni-jax faces`' manifest and `omni-jax annotate`'s records
are written this way; the last two share the loop too (`lines_in_rounds`)."""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

import jax
import numpy as np
from jax.experimental import multihost_utils

from omni_jax.errors import RunStopped, Stopped
from omni_jax.stopping import StopRequest

log = logging.getLogger(__name__)


def read_progress(path: Path, key: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """The batches of predictions a progress file holds, in order, if it was made with `key`
    (else none); a line a kill cut short ends it."""
    if not path.exists():
        return []
    batches = []
    with path.open() as lines:
        try:
            if json.loads(next(lines)).get("key") != json.loads(json.dumps(key)):
                log.info("%s was made with other settings: starting over", path)
                return []
            for number, line in enumerate(lines):
                entry = json.loads(line)
                if entry.get("batch") != number:
                    break
                batches.append(entry["predictions"])
        except (StopIteration, json.JSONDecodeError, KeyError):
            pass
    return batches


@contextlib.contextmanager
def rewritten(path: Path, key: dict[str, Any], batches: list[list[dict[str, Any]]]) -> Iterator[TextIO]:
    """The progress file anew (renamed into place) with `key` and the batches kept, open to append."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as out:
        out.write(json.dumps({"key": key}) + "\n")
        out.writelines(json.dumps({"batch": i, "predictions": b}, ensure_ascii=False) + "\n"
                       for i, b in enumerate(batches))
    os.replace(tmp, path)
    with path.open("a") as out:
        yield out


def write_merged(predictions: list[dict[str, Any]], path: Path,
                 annotate: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
                 render: Callable[[dict[str, Any]], str] | None = None) -> list[dict[str, Any]]:
    """Merges every process's `predictions` (dicts with their manifest "line") into `path` (JSONL,
    manifest order); returns all. annotate(merged) → merged: process 0 runs it before writing
    (per-clip scores); an error there leaves no file. render(record) → the line written for it
    (default: the record as JSON); with `render` the merged records are returned on process 0
    only (the file's lines may not be JSON)."""
    index, count = jax.process_index(), jax.process_count()
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [path.with_name(f"{path.name}.part-{i}-of-{count}") for i in range(count)]
    _write_jsonl(parts[index], predictions)
    if count > 1:
        multihost_utils.sync_global_devices(f"predictions written: {path}")
    failure = None
    if index == 0:
        try:
            merged = sorted((json.loads(line) for part in parts for line in part.read_text().splitlines()),
                            key=lambda p: p["line"])
            lines = [p["line"] for p in merged]
            if len(set(lines)) != len(lines):
                twice = sorted({n for n in lines if lines.count(n) > 1})
                raise RuntimeError(f"{path}: manifest lines predicted twice: {twice}")
            if annotate is not None:
                merged = annotate(merged)
            write_jsonl(path, merged, render)
        except Exception as error:  # raised below, once the other processes know (they wait for the file)
            failure = error
        finally:
            for part in parts:
                part.unlink(missing_ok=True)
    if count > 1 and bool(multihost_utils.broadcast_one_to_all(np.bool_(failure is not None))) and index:
        raise RunStopped(f"{path}: process 0 could not write the predictions (its output says why)")
    if failure is not None:
        raise failure
    if render is not None:
        return merged if index == 0 else []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write_jsonl(path: Path, records: list[dict[str, Any]],
                 render: Callable[[dict[str, Any]], str] | None = None) -> None:
    render = render or (lambda record: json.dumps(record, ensure_ascii=False))
    path.write_text("".join(render(r) + "\n" for r in records), encoding="utf-8")


def write_jsonl(path: Path, records: list[dict[str, Any]],
                render: Callable[[dict[str, Any]], str] | None = None) -> None:
    """`path` written whole or not at all: under a temporary name (removed if writing fails),
    then renamed into place. render(record) → its line (default: the record as JSON)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        _write_jsonl(tmp, records, render)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def manifest_identity(manifest: str | os.PathLike) -> list[Any]:
    """[path, size, time of its last change] (size and time None when remote): what a progress
    file records of the manifest it was made from, to resume only from the same one."""
    stat = os.stat(manifest) if "://" not in str(manifest) else None
    return [str(manifest), stat and stat.st_size, stat and stat.st_mtime_ns]


def lines_in_rounds(lines: int, work: Callable[[int], dict[str, Any]], record_file: Path, key: dict[str, Any],
                    stop: StopRequest | None = None, in_flight: int = 1,
                    bar: Callable[[int, int], Any] | None = None, what: str = "") -> list[dict[str, Any]]:
    """This process's share of a job over `lines` manifest lines, resumably: process h of H
    takes elements h, h + H, h + 2H, … in rounds of one element each; work(element) → its
    record. After each round the record is appended to `record_file` (made with `key`), so a
    killed or stopped run resumes after the last round every process finished, losing at most
    the rounds in flight and recording none twice. `in_flight` > 1 works on that many rounds at
    once in threads (a job that waits on endpoints), recorded in order. `stop` is asked after
    each round (raises Stopped before the last); bar(done, total) → a context manager with
    update(). Returns this process's records, in order."""
    index, count = jax.process_index(), jax.process_count()
    rounds = -(-lines // count)
    kept = read_progress(record_file, key)
    start = int(np.min(multihost_utils.process_allgather(np.array(len(kept))))) if count > 1 else len(kept)
    records = [r for batch in kept[:start] for r in batch]
    if start:
        log.info("%s: resuming after round %d of %d (%s)", what, start, rounds, record_file)

    def one(round_: int) -> list[dict[str, Any]]:
        element = round_ * count + index
        return [work(element)] if element < lines else []
    with contextlib.ExitStack() as files:
        out = files.enter_context(rewritten(record_file, key, kept[:start]))
        progress = files.enter_context(bar(start, rounds) if bar else contextlib.nullcontext())
        pool = files.enter_context(concurrent.futures.ThreadPoolExecutor(in_flight)) if in_flight > 1 else None
        # on leaving early, rounds not started are dropped; the running ones finish first
        files.callback(lambda: pool and pool.shutdown(cancel_futures=True))
        pending: dict[int, concurrent.futures.Future] = {}  # round → its work, running or done and not yet recorded
        upcoming = iter(range(start, rounds))
        for round_ in range(start, rounds):
            while pool is not None:
                # keep `in_flight` rounds running, whichever finish first (a slow one holds up the
                # record, not the work), at most 4 × in_flight of them held for the record
                running = sum(not f.done() for f in pending.values())
                while running < in_flight and len(pending) < 4 * in_flight and (r := next(upcoming, None)) is not None:
                    pending[r], running = pool.submit(one, r), running + 1
                if pending[round_].done():
                    break
                concurrent.futures.wait([f for f in pending.values() if not f.done()],
                                        return_when=concurrent.futures.FIRST_COMPLETED)
            done = pending.pop(round_).result() if pool is not None else one(round_)
            records += done
            out.write(json.dumps({"batch": round_, "predictions": done}, ensure_ascii=False) + "\n")
            out.flush()
            if progress is not None:
                progress.update()
            if stop is not None and stop.reached() and round_ + 1 < rounds:
                raise Stopped(f"stopped after line {round_ + 1} of {rounds} of this process's share of {what}; "
                              "the same command resumes from there", interrupted=stop.interrupted)
    return records

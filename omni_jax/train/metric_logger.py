"""Metrics a user can watch: metrics.jsonl, TensorBoard events and a progress bar.

The step's metrics stay on the device until the next step has been dispatched, then are
fetched (one step late, as MaxText's metric logger does), so the host never waits for the
device it just gave work to. Only process 0 writes.

Per logged step: step, loss, learning_rate, grad_norm (and grad_norm/NAME per trained
top-level subtree: language_model, audio_projector, ...), assistant_tokens, tokens_per_s (the
batch's non-padding tokens: process 0's × hosts), clips_per_s (rows, likewise), step_seconds,
model_flops_per_step and hardware_flops_per_step (the step's, as `omni-jax plan` counts them:
`omni_jax.flops`; hardware FLOPs add the forwards the backward pass recomputes), mfu and hfu
(those ÷ (step time × devices × the device's bf16 peak); null where the peak is unknown),
nonfinite (skipped steps so far), skipped_<reason> (examples the input pipeline skipped, this
host's counts). The evaluators' figures (`train.eval_every`) go to
eval/metrics.jsonl and TensorBoard's eval/NAME/metric.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from omni_jax.flops import Flops

# Dense bf16 peak FLOP/s per device (vendors' data sheets), matched against jax's device_kind
# in order (so "TPU v5 lite" is tried before "TPU v5").
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989e12),
    ("H100", 989e12),  # SXM; the PCIe card's is 756e12
    ("A100", 312e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v6 lite", 918e12),  # v6e (Trillium)
    ("TPU v6e", 918e12),
)


def peak_flops(device_kind: str, configured: float = 0.0) -> float | None:
    """The device's bf16 peak (FLOP/s): `configured` when set, else from PEAK_FLOPS, else None."""
    if configured > 0:
        return configured
    return next((peak for name, peak in PEAK_FLOPS if name.lower() in device_kind.lower()), None)


class TensorBoardWriter:
    """Scalars into TensorBoard event files (tensorboard's own writer and protos; no TensorFlow).

    purge_step: a resumed run's first step. A session-start event at that step makes TensorBoard
    drop what earlier files hold from that step on (as tf.summary's purge_step does), so the
    steps a killed run wrote after its last checkpoint are shown once, as the rerun wrote them."""

    def __init__(self, logdir: Path, purge_step: int | None = None):
        from tensorboard.compat.proto import event_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._writer = EventFileWriter(str(logdir))
        if purge_step is not None:
            self._writer.add_event(
                event_pb2.Event(
                    wall_time=time.time(),
                    step=purge_step,
                    session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START),
                )
            )

    def write(self, step: int, scalars: dict[str, float]) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=step,
                                               summary=summary_pb2.Summary(value=values)))

    def close(self) -> None:
        self._writer.close()


def keep_lines_until(path: Path, step: int) -> None:
    """Drops the lines of a metrics file (JSONL) after `step`, the step a resumed run restored:
    it writes them again. A line cut short by a kill is dropped too. Replaced whole (written
    beside, renamed)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


class MetricLogger:
    """`record` each step's device metrics and host facts; the previous step's are fetched and
    written then. `nonfinite_streak` counts the latest fetched steps that were not applied."""

    def __init__(self, workdir: Path, total_steps: int, start_step: int, peak: float | None, log_every: int,
                 progress: bool = True):
        self.writing, self.workdir = jax.process_index() == 0, workdir
        self.peak, self.log_every = peak, max(1, log_every)
        self.devices = jax.device_count()
        self.pending: tuple[int, dict[str, jax.Array], dict[str, Any], Flops] | None = None
        self.last_time = time.perf_counter()
        self.nonfinite_streak = 0
        self.last_line: dict[str, Any] | None = None  # the latest written, for the caller's summary
        if self.writing:
            for lines in (workdir / "metrics.jsonl", workdir / "eval" / "metrics.jsonl"):
                keep_lines_until(lines, start_step)
            self.jsonl = (workdir / "metrics.jsonl").open("a")
            self.tensorboard = TensorBoardWriter(workdir / "tensorboard", purge_step=start_step + 1)
        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", file=sys.stderr, dynamic_ncols=True,
                        disable=not (progress and self.writing))

    def record(self, step: int, metrics: dict[str, jax.Array], host: dict[str, Any], flops: Flops) -> None:
        """step: the step just dispatched (1-based); host: its batch's facts (clips, tokens,
        skip counts); flops: its FLOPs (they follow the batch's bucket length). Writes the
        previous step's line."""
        now = time.perf_counter()
        host = {**host, "step_seconds": now - self.last_time}
        self.last_time = now
        self.flush()
        self.pending = (step, metrics, host, flops)

    def flush(self) -> None:
        """Fetches and writes the pending step (at the end of a run: the last one)."""
        if self.pending is None:
            return
        step, metrics, host, flops = self.pending
        self.pending = None
        values = {k: v.item() for k, v in jax.device_get(metrics).items()}
        self.nonfinite_streak = 0 if values["finite"] else self.nonfinite_streak + 1
        seconds = host.pop("step_seconds")
        utilisation = lambda n: n / (seconds * self.devices * self.peak) if self.peak else None
        line = {"step": step, "loss": values["loss"], "learning_rate": values["learning_rate"],
                "grad_norm": values["grad_norm"], "assistant_tokens": int(values["tokens"]),
                "finite": bool(values["finite"]), "nonfinite": int(values["nonfinite"]),
                "tokens_per_s": host.pop("tokens") / seconds,
                "clips_per_s": host.pop("clips") / seconds, "step_seconds": seconds,
                "model_flops_per_step": flops.model, "hardware_flops_per_step": flops.hardware,
                "mfu": utilisation(flops.model), "hfu": utilisation(flops.hardware),
                **{k: v for k, v in values.items() if k.startswith("grad_norm/")}, **host}
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(loss=f"{line['loss']:.4f}", tok_s=f"{line['tokens_per_s']:.0f}", refresh=False)
        if self.writing and (step % self.log_every == 0 or not line["finite"]):
            self.jsonl.write(json.dumps(line) + "\n")
            self.jsonl.flush()
            self.tensorboard.write(step, {k: v for k, v in line.items()
                                          if k != "step" and isinstance(v, (int, float)) and np.isfinite(v)})
            self.last_line = line

    def write_eval(self, step: int, results: dict[str, dict[str, Any]]) -> None:
        """The evaluators' figures at `step`: a line of WORKDIR/eval/metrics.jsonl and
        TensorBoard scalars `eval/NAME/metric`."""
        self.flush()
        if not self.writing:
            return
        with (self.workdir / "eval" / "metrics.jsonl").open("a") as lines:
            lines.write(json.dumps({"step": step, **results}) + "\n")
        self.tensorboard.write(step, {f"eval/{name}/{metric}": value for name, figures in results.items()
                                      for metric, value in figures.items() if isinstance(value, (int, float))})

    def close(self) -> None:
        self.flush()
        self.bar.close()
        if self.writing:
            self.jsonl.close()
            self.tensorboard.close()

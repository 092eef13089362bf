"""`omni-jax train`: one phase of Omni-Emotion training, from one CPU to a pod, read top to bottom.

    omni-jax train --config omni_emotion:7b,audio_alignment --workdir runs/phase1 \\
                   --init ckpt/omni-emotion-7b --config.data.manifest=train.jsonl

WORKDIR holds the run: config.json (the config as run, the base checkpoint), checkpoints/
(orbax: the trainable parameters, optimizer state, step and data position; see
train.checkpoint), metrics.jsonl and tensorboard/ (train.metric_logger), tokenizer/, and at the end
final/: a complete checkpoint (frozen + trained parameters, config, tokenizer) that
`load_pretrained`, `omni-jax export` and the next phase's `--init` take. Rerunning the same
command resumes from the latest checkpoint; SIGTERM (preemption) saves at the next step
boundary and exits 0.

Data: the manifest repeats without end and the run lasts `train.steps` (0: data.epochs passes
over the manifest in global batches), so every host takes the same number
of steps whatever it skips; the schedule is laid over those steps.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from omni_jax import registry
from omni_jax.atomic import atomic_write
from omni_jax.config_flags import AT_LEAST_0, AT_LEAST_1, check_ranges
from omni_jax.data import pipeline
from omni_jax.data.manifest import ManifestSource
from omni_jax.data.pipeline import global_batch, make_pipeline, pad_id_of
from omni_jax.errors import CheckpointRefused, InputError, RunStopped
from omni_jax.eval.evaluators import from_config
from omni_jax.eval.predict import FIELDS as EVAL_FIELDS
from omni_jax.eval.predict import Predictor
from omni_jax.faces.finder import finder_for
from omni_jax.flops import count_flops
from omni_jax.pretrained import load_pretrained, save_pretrained
from omni_jax.progress import QUIET, Progress
from omni_jax.runs import RUN_FILE, check_own_workdir, load_tokenizer, resolve_checkpoint, run_config
from omni_jax.sharding import make_mesh
from omni_jax.stopping import StopRequest
from omni_jax.train import step as train_step
from omni_jax.train.checkpoint import Checkpoints
from omni_jax.train.metric_logger import MetricLogger, peak_flops
from omni_jax.train.step import Trainer, make_trainer, training_model_config

log = logging.getLogger(__name__)

# Fields a resumed run may change without train.allow_config_change: where it runs and how
# it reports, not what it computes (a restored state fits any mesh).
RESUMABLE = ("mesh", "data.workers", "data.threads", "data.prefetch", "train.log_every", "train.profile",
             "train.checkpoint_every", "train.checkpoint_every_minutes", "train.keep_checkpoints", "train.keep_every",
             "train.peak_flops_per_device", "train.allow_config_change", "train.eval_every", "train.attention_impl",
             "eval", "evals", "plan", "infer", "check", "score", "convert")
# the loop's fields (config_flags.check_ranges; the step's are train.step.FIELDS)
FIELDS = {"train.steps": AT_LEAST_0, "train.seed": AT_LEAST_0, "train.max_nonfinite_steps": AT_LEAST_1,
          "train.checkpoint_every": AT_LEAST_0, "train.checkpoint_every_minutes": AT_LEAST_0,
          "train.keep_checkpoints": AT_LEAST_1, "train.keep_every": AT_LEAST_0, "train.log_every": AT_LEAST_1,
          "train.peak_flops_per_device": AT_LEAST_0, "train.profile.first_step": AT_LEAST_0,
          "train.profile.last_step": AT_LEAST_0, "train.eval_every": AT_LEAST_0}


class NonFiniteError(RunStopped):
    """Too many steps in a row had a non-finite loss or gradient norm."""


class ConfigChangedError(CheckpointRefused):
    """The workdir holds a run with another config."""


def check_workdir(workdir: Path, cfg: ml_collections.ConfigDict, init: Path | None) -> None:
    """Writes WORKDIR/config.json, or checks that a resumed run's is the same (refused unless
    train.allow_config_change, naming the fields that differ)."""
    record = {"config": cfg.to_dict(), "init": str(init.absolute()) if init else None}
    path = workdir / RUN_FILE
    if path.exists():
        try:
            before = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise CheckpointRefused(f"{path}: not JSON ({error}); the record of the run this workdir holds") from None
        differences = _differences(before, json.loads(json.dumps(record)))
        differences = [d for d in differences if not any(d.startswith(f"config.{field}") for field in RESUMABLE)]
        if differences and not cfg.train.allow_config_change:
            raise ConfigChangedError(f"{workdir} holds a run with another config ({'; '.join(differences[:8])}); "
                                     "use a new --workdir, or --config.train.allow_config_change=true to resume "
                                     "with this one")
    if jax.process_index() == 0:
        # renamed into place: another host checking a resumed run reads the old record or the new one
        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps(record, indent=2, default=str))


def _differences(before: Any, after: Any, where: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        return [d for k in sorted(set(before) | set(after))
                for d in _differences(before.get(k), after.get(k), f"{where}.{k}" if where else k)]
    return [] if before == after else [f"{where}: {before!r} → {after!r}"]


def batch_per_host(cfg: ml_collections.ConfigDict) -> int:
    hosts = jax.process_count()
    if cfg.data.batch_size:
        return cfg.data.batch_size
    if cfg.train.global_batch_size % hosts:
        raise InputError(f"train.global_batch_size {cfg.train.global_batch_size} does not split over {hosts} hosts")
    return cfg.train.global_batch_size // hosts


def total_steps(cfg: ml_collections.ConfigDict, source_size: int) -> int:
    """train.steps, or data.epochs passes over the manifest in global batches (the hosts' batches
    of a step together)."""
    if cfg.train.steps:
        return cfg.train.steps
    if not cfg.data.epochs:
        raise InputError("data.epochs is None (repeat forever): set train.steps")
    steps = cfg.data.epochs * (source_size // jax.process_count()) // cfg.data.batch_size
    if steps < 1:
        raise InputError(f"{source_size} examples over {jax.process_count()} hosts make no batch of "
                         f"{cfg.data.batch_size}")
    return steps


def initial_params(trainer: Trainer, cfg: ml_collections.ConfigDict, init: Path | None) -> Any:
    """The base parameters on the mesh: the --init checkpoint's, else the config's initialisers."""
    if init is None:
        return registry.init_params(registry.FAMILIES["omni_emotion"], trainer.config, trainer.mesh,
                                    seed=cfg.train.seed)
    _, params = load_pretrained(init, dtype=cfg.train.param_dtype, mesh=trainer.mesh)
    return params


def align_hosts(name: str, minutes: float = 10) -> None:
    """Every process waits here for the others, at the coordinator's barrier (not a collective).
    XLA:CPU's collectives (gloo) give a process 30 s to join another's first collective over a
    set of devices: hosts that get there unevenly (a loaded machine, slow storage, one host still
    importing) would fail at it. A no-op in a single process."""
    ocp.multihost.get_barrier_sync_fn()(key=name, timeout_ms=int(minutes * 60_000))


def run(cfg: ml_collections.ConfigDict, *, workdir: str | os.PathLike, init: str | os.PathLike | None = None,
        model_overrides: Sequence[str] = (), stop: StopRequest | None = None,
        progress: Progress = QUIET) -> dict[str, Any]:
    """Runs (or resumes) one training phase in `workdir`; returns a summary. With `init`, the
    model is the checkpoint's; `model_overrides` are the model fields the caller set
    (`runs.run_config` applies those a fine-tune may change and refuses the rest). `stop` is
    asked after every step: the run saves and returns, `stopped` "preempted" or "interrupted"."""
    check_ranges(cfg, FIELDS, train_step.FIELDS, pipeline.FIELDS, EVAL_FIELDS)
    workdir = Path(workdir)
    check_own_workdir(workdir, RUN_FILE, "training run")
    init = resolve_checkpoint(init)
    cfg = run_config(cfg, init, model_overrides)
    if not cfg.data.manifest:
        raise InputError("no training data: set --config.data.manifest=FILE.jsonl")
    source_size = len(ManifestSource(cfg.data.manifest))
    evaluators = from_config(cfg.evals, cfg.eval.max_skip_fraction) if cfg.train.eval_every else []  # checked now
    tokenizer = load_tokenizer(cfg, init)
    cfg.data.batch_size = batch_per_host(cfg)
    steps = total_steps(cfg, source_size)
    check_workdir(workdir, cfg, init)
    if jax.process_index() == 0:
        tokenizer.save_pretrained(workdir / "tokenizer")

    mesh = make_mesh(**cfg.mesh)
    train_step.check_batch(cfg.data.batch_size * jax.process_count(), cfg.train.microbatches, mesh)
    trainer = make_trainer(training_model_config(cfg), mesh, cfg.train, steps)
    pipeline_cfg = ml_collections.ConfigDict(cfg.to_dict())
    pipeline_cfg.data.epochs = None  # the run ends by its step count (see the module docstring)
    data = iter(make_pipeline(cfg.data.manifest, tokenizer, pipeline_cfg, modalities=cfg.train.modalities,
                              find_faces=finder_for(cfg.data.face_detector)))
    align_hosts("omni_jax_train_start")  # before the first collective: the checkpoints' sync
    checkpoints = Checkpoints(workdir / "checkpoints", cfg.train.keep_checkpoints, cfg.train.keep_every)
    with progress.stage("loading the parameters" if init else "initialising the parameters"):
        state, frozen = trainer.init_state(initial_params(trainer, cfg, init))
    start = checkpoints.latest_step()
    if start is not None:
        with progress.stage(f"restoring step {start}"):
            state = checkpoints.restore(start, trainer.abstract_state, data)
        log.info("resumed from step %d (%s)", start, workdir / "checkpoints")
    step = int(state["step"])
    pad_id, programs = pad_id_of(tokenizer), {}  # per sequence length: (the compiled step, its FLOPs)
    stopped, logger = "finished", None
    last_save, profiling, profile = time.monotonic(), False, cfg.train.profile
    try:
        while step < steps:
            host_batch = next(data)
            batch = global_batch(host_batch, mesh, pad_id)
            length = batch["input_ids"].shape[1]
            if logger is None:
                peak = peak_flops(jax.devices()[0].device_kind, cfg.train.peak_flops_per_device)
                logger = MetricLogger(workdir, steps, step, peak, cfg.train.log_every, progress.enabled)
            if profile.first_step and step + 1 == profile.first_step:
                jax.profiler.start_trace(str(workdir / "profile"))
                profiling = True
            with trainer.activate():
                if length not in programs:  # a new bucket: traced, counted as `plan` counts it, compiled
                    with progress.stage(f"compiling the train step for {length} tokens"):
                        traced = trainer.step.trace(state, frozen, batch)
                        programs[length] = traced.lower().compile(), count_flops(traced.jaxpr.jaxpr)
                    # its first collective starts gloo's context, which waits 30 s for the other
                    # hosts: they may take longer to compile
                    align_hosts(f"omni_jax_train_compiled_{length}")
                compiled, flops = programs[length]
                state, metrics = compiled(state, frozen, batch)
            step += 1
            if profiling and step >= max(profile.last_step, profile.first_step):
                jax.block_until_ready(state)
                jax.profiler.stop_trace()
                profiling = False
            counts = data.counts
            logger.record(step, metrics, {
                "clips": host_batch["input_ids"].shape[0] * jax.process_count(),
                "tokens": int(np.sum(host_batch["attention_mask"] > 0)) * jax.process_count(),
                **{f"skipped_{k}": v for k, v in counts["skipped"].items()}}, flops)
            if logger.nonfinite_streak >= cfg.train.max_nonfinite_steps:
                raise NonFiniteError(
                    f"{logger.nonfinite_streak} steps in a row had a non-finite loss or gradient norm (up to step "
                    f"{step - 1}); none was applied. The last good checkpoint is step {checkpoints.latest_step()} "
                    f"in {workdir / 'checkpoints'}: lower train.learning_rate or check the data")
            due = bool(cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0)
            if cfg.train.checkpoint_every_minutes and not due:
                late = time.monotonic() - last_save > 60 * cfg.train.checkpoint_every_minutes
                # every process must save at the same step: process 0's clock decides
                due = bool(multihost_utils.broadcast_one_to_all(np.bool_(late))) if jax.process_count() > 1 else late
            preempted = stop is not None and stop.reached()
            if due or preempted or step == steps:
                logger.flush()  # a restored run's metrics.jsonl then runs up to its checkpoint
                checkpoints.save(step, state, data)
                last_save = time.monotonic()
            if evaluators and not preempted and (step % cfg.train.eval_every == 0 or step == steps):
                predict = Predictor(trainer.model, trainer.params(state, frozen), tokenizer, cfg, mesh)
                logger.write_eval(step, {name: dict(evaluator.run(predict, workdir / "eval" / f"step_{step}"))
                                         for name, evaluator in evaluators})
            if preempted:
                stopped = "interrupted" if stop.interrupted else "preempted"
                break
        checkpoints.wait()
    finally:
        if profiling:  # the run ended (or was preempted, or failed) inside the profiled steps
            jax.profiler.stop_trace()
        if logger is not None:
            logger.close()
        checkpoints.close()
        data.close()
    summary = {"workdir": str(workdir), "phase": cfg.train.phase, "step": step, "steps": steps, "stopped": stopped,
               "resumed_from": start, "checkpoints": checkpoints.all_steps(),
               "nonfinite_steps": int(state["nonfinite"]), "skipped_examples": data.counts["skipped"],
               "last_loss": logger.last_line["loss"] if logger and logger.last_line else None}
    if stopped == "finished":
        provenance = {"trained": {"phase": cfg.train.phase, "steps": step, "workdir": str(workdir.absolute()),
                                  "base": str(init.absolute()) if init else f"initialised, seed {cfg.train.seed}"}}
        with progress.stage("writing final/"):
            final = save_pretrained(workdir / "final", trainer.config, trainer.params(state, frozen),
                                    workdir / "tokenizer", provenance)
        summary["final"] = str(final)
    return summary

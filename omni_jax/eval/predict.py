"""Sharded batched generation over a manifest, and the predictions files it writes.

`Predictor(model, params, tokenizer, cfg, mesh)(manifest, question)` runs every prompt batch of
this process (`data.generation_batches.prompt_batches`: manifest order, left-padded, padding rows so
every process runs the same batches) through `generate` on the mesh (batch over the data and
fsdp axes, parameters as `load_pretrained(mesh=...)` placed them) and returns this process's
predictions, one dict per manifest line it holds: `line`, `id`, `question`, `answer` (decoded,
cut at the first stop string), `reference` (a final gpt turn) and the line's other fields
(`label`, `labels`, ...); a line that could not be read has `skip` (its reason) and `message`
instead of an answer.

`process_files.write_merged` merges the processes' predictions into one JSONL file in manifest order:
each process writes its part (in a folder every process sees, as checkpoints need), process 0
checks that every line is there once, writes the
merged file under a temporary name and renames it (a crash never leaves a partial file
looking complete), then removes the parts.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from omni_jax.config_flags import AT_LEAST_0, AT_LEAST_1, FRACTION, Range
from omni_jax.data.generation_batches import Row, batch_count, prompt_batches
from omni_jax.data.manifest import ManifestSource
from omni_jax.data.pipeline import FACE_SOURCES, global_batch, host_rows, pad_id_of
from omni_jax.errors import InputError, Stopped
from omni_jax.faces.finder import finder_for
from omni_jax.generate import generate
from omni_jax.layers.attention import IMPLEMENTATIONS
from omni_jax.process_files import manifest_identity, read_progress, rewritten
from omni_jax.progress import QUIET, Progress
from omni_jax.sharding import activate
from omni_jax.stopping import StopRequest

log = logging.getLogger(__name__)

# the eval section's allowed values (config_flags.check_ranges), checked by the jobs that generate
FIELDS = {"eval.dtype": ("float32", "bfloat16", "float16"), "eval.attention_impl": IMPLEMENTATIONS,
          "eval.batch_size": AT_LEAST_1, "eval.max_new_tokens": AT_LEAST_1, "eval.temperature": AT_LEAST_0,
          "eval.top_k": AT_LEAST_0, "eval.top_p": Range(0, 1, open_low=True), "eval.seed": AT_LEAST_0,
          "eval.max_skip_fraction": FRACTION}


def stop_token_ids(tokenizer: Any) -> tuple[int, ...]:
    """The ids that end an answer: the tokenizer's EOS and the chat template's <|im_end|>."""
    ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    return tuple(sorted(i for i in ids if i is not None and i != tokenizer.unk_token_id))


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """`text` up to the first of the stop strings, stripped."""
    ends = [text.find(s) for s in stop if s and s in text]
    return (text[:min(ends)] if ends else text).strip()


class Predictor:
    """Answers the prompts of a manifest with `model` on `mesh`; see the module docstring.

    cfg.eval: modalities (the prompt's blocks and the media decoded), batch_size (per process),
    max_new_tokens, temperature (0: greedy), top_k, top_p, seed, stop (strings)."""

    def __init__(self, model: Any, params: Any, tokenizer: Any, cfg: ml_collections.ConfigDict, mesh: Mesh,
                 stop: StopRequest | None = None, resume_key: dict[str, Any] | None = None,
                 progress: Progress = QUIET,
                 on_answers: Callable[[list[dict[str, Any]]], None] | None = None):
        self.model, self.params, self.tokenizer, self.cfg, self.mesh = model, params, tokenizer, cfg, mesh
        # asked after each batch; what else must match for a progress file to be resumed (the checkpoint)
        self.stop, self.resume_key = stop, resume_key or {}
        # the bar over the clips; on_answers(predictions) after each batch, as they come
        self.progress, self.on_answers = progress, on_answers
        self.pad_id, self.stop_ids = pad_id_of(tokenizer), stop_token_ids(tokenizer)
        devices = mesh.shape["data"] * mesh.shape["fsdp"] // jax.process_count()
        if cfg.eval.batch_size % max(devices, 1):
            raise InputError(f"eval.batch_size {cfg.eval.batch_size} must be a multiple of this process's "
                             f"{devices} devices on the data and fsdp axes")

    def generate(self, arrays: dict[str, np.ndarray], batch_index: int) -> np.ndarray:
        """Global generation of one batch of every process → this process's rows' new tokens
        [batch_size, max_new_tokens]."""
        ev = self.cfg.eval
        inputs = global_batch(arrays, self.mesh, self.pad_id, left=True)
        rng = jax.random.fold_in(jax.random.key(ev.seed), batch_index) if ev.temperature > 0 else None
        with activate(self.mesh):
            tokens = generate(self.model, self.params, inputs.pop("input_ids"), inputs.pop("attention_mask"),
                              max_new_tokens=ev.max_new_tokens, eos_token_ids=self.stop_ids, pad_token_id=self.pad_id,
                              temperature=ev.temperature, top_k=ev.top_k, top_p=ev.top_p, rng=rng, **inputs)
        return host_rows(tokens)

    def answer(self, tokens: np.ndarray) -> str:
        """New tokens [max_new_tokens] → the answer text (up to the first stop token or string)."""
        ends = np.flatnonzero(np.isin(tokens, self.stop_ids))
        tokens = tokens[:ends[0]] if len(ends) else tokens
        return cut_at_stop(self.tokenizer.decode(tokens.tolist(), skip_special_tokens=True), tuple(self.cfg.eval.stop))

    def __call__(self, manifest: str | os.PathLike, question: str | None = None,
                 kept_in: Path | None = None) -> list[dict[str, Any]]:
        """This process's predictions. kept_in: this process keeps its answers batch by batch in
        KEPT_IN-i-of-n, so a stopped or killed run resumes after the last batch every process
        finished (a file made for other settings, `resume_key`, is started over); `stop` is
        asked after each batch (raises Stopped)."""
        ev = self.cfg.eval
        key = resume_key(self.cfg, manifest, question, **self.resume_key)
        record = None if kept_in is None else kept_in.with_name(
            f"{kept_in.name}-{jax.process_index()}-of-{jax.process_count()}")
        kept = read_progress(record, key) if record is not None else []
        # every process resumes at the same batch: the fewest any of them finished
        start = int(np.min(multihost_utils.process_allgather(np.array(len(kept)))))
        predictions = [p for batch in kept[:start] for p in batch]
        total = batch_count_of(manifest, jax.process_count(), ev.batch_size)
        if start:
            log.info("%s: resuming after batch %d of %d (%s)", manifest, start, total, record)
        batches = prompt_batches(manifest, self.tokenizer, self.cfg, ev.batch_size, modalities=ev.modalities,
                                 question=question, start_batch=start,
                                 find_faces=finder_for(self.cfg.data.face_detector))
        clips = len(ManifestSource(manifest))
        with contextlib.ExitStack() as files:
            files.enter_context(contextlib.closing(batches))  # the data workers, also when stopped
            out = None if record is None else files.enter_context(rewritten(record, key, kept[:start]))
            bar = files.enter_context(self.progress.bar(total=clips, initial=min(clips, len(predictions) *
                                                                                 jax.process_count()),
                                                        unit="clip", desc=Path(manifest).name))
            for index, (arrays, rows) in enumerate(batches, start=start):
                if index == start:  # the first batch compiles prefill and decoding
                    with self.progress.stage("compiling generation (with the first batch)"):
                        tokens = self.generate(arrays, index)
                else:
                    tokens = self.generate(arrays, index)
                batch = [prediction(row, self.answer(t)) for row, t in zip(rows, tokens) if not row.padding]
                predictions += batch
                bar.update(len(batch) * jax.process_count())
                if self.on_answers is not None:
                    self.on_answers(batch)
                if out is not None:
                    out.write(json.dumps({"batch": index, "predictions": batch}, ensure_ascii=False) + "\n")
                    out.flush()
                # asked after every batch (a sync point with several processes), heeded before the last
                if self.stop is not None and self.stop.reached() and index + 1 < total:
                    raise Stopped(f"stopped after batch {index + 1} of {total} of {manifest}; the same command "
                                  "resumes from there", interrupted=self.stop.interrupted)
        return predictions


def run_settings(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """What answers depend on: the model, the pipeline's and generation's settings (not the ones
    that change no answer: workers, threads, prefetch, the skip limit)."""
    unused = ("workers", "threads", "prefetch", "max_skip_fraction", "min_examples", "manifest")
    return {"model": cfg.model.to_dict(), "data": {k: v for k, v in cfg.data.to_dict().items() if k not in unused},
            "eval": {k: v for k, v in cfg.eval.to_dict().items() if k not in unused}}


def resume_key(cfg: ml_collections.ConfigDict, manifest: str | os.PathLike, question: str | None,
               **extra: Any) -> dict[str, Any]:
    """What must match for a progress file to be resumed: the manifest (path, size, time of its
    last change), the question, `run_settings`, the process count."""
    return {"manifest": manifest_identity(manifest), "question": question, **run_settings(cfg),
            "processes": jax.process_count(), **extra}


def batch_count_of(manifest: str | os.PathLike, processes: int, batch_size: int) -> int:
    return batch_count(len(ManifestSource(manifest)), processes, batch_size)


def prediction(row: Row, answer: str) -> dict[str, Any]:
    """A predictions-file line: the row's identity and references, with its answer or skip."""
    out = {"line": row.line, "id": row.id, "question": row.question}
    if row.skip:
        return {**out, "skip": row.skip, "message": row.message, **row.extra}
    return {**out, "answer": answer, "reference": row.reference, **row.used, **row.extra}


def media_counts(predictions: list[dict[str, Any]]) -> dict[str, int]:
    """How the answered clips' media were used (`pipeline.media_used`): faces by source, and the
    clips whose audio ran past the windows the model hears (the rest is not heard)."""
    counts = {f"faces/{source}": sum(p.get("faces") == source for p in predictions) for source in FACE_SOURCES}
    counts = {key: n for key, n in counts.items() if n}
    counts["audio_cut"] = sum(p.get("audio_heard_seconds", 0) < p.get("audio_seconds", 0) for p in predictions)
    return counts



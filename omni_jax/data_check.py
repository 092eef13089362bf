"""`omni-jax data-check`: one pass over a manifest, as the job that will read it reads it.

The task decides what a line needs (`task_of`): training lines (conversations with an
answer; audio-only lines for phase 1) go through the training pipeline; evaluation lines
(emotion_classification: `label`, open_vocabulary: `labels`, reasoning_judge:
`description`) have their references checked as the evaluator checks them and their prompts
built and media decoded as generation does. Every line is then usable or skipped with its
reason; the report also counts, per manifest, the lines whose faces need the detector, the
clips whose audio is longer than the windows the model hears, and the target words the
tokenizer turns into its unknown token. Nothing is loaded but the tokenizer.
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Callable

import ml_collections

from omni_jax.config_flags import Range, check_ranges
from omni_jax.data import pipeline
from omni_jax.data.generation_batches import prompt_batches
from omni_jax.data.manifest import ManifestSource, json_lines
from omni_jax.data.pipeline import FLAGS, STATS, make_pipeline
from omni_jax.errors import InputError
from omni_jax.eval.evaluators import EVALUATORS
from omni_jax.faces.finder import finder_for
from omni_jax.progress import QUIET, Progress

TASKS = ("train", *EVALUATORS)
# a line's field that makes it an evaluation line, and of which task
REFERENCE_FIELDS = {evaluator.reference: task for task, evaluator in EVALUATORS.items()}


def task_of(manifest: str, cfg: ml_collections.ConfigDict, requested: str | None = None) -> tuple[str, str, str | None]:
    """(task, why, the config's evaluator of it): `requested` (--task); else the config's
    evaluator whose manifest this is; else the first line's own fields."""
    evaluators = cfg.evals.items()
    first_of = lambda task: next((name for name, spec in evaluators if spec.type == task), None)
    for name, spec in evaluators:
        if (
            spec.manifest
            and Path(spec.manifest).resolve() == Path(manifest).resolve()
            and requested in (None, spec.type)
        ):
            return spec.type, f"the config's evaluator {name!r} reads this manifest", name
    if requested:
        return requested, "--task", first_of(requested)
    for _, entry in json_lines(manifest):
        for key, task in REFERENCE_FIELDS.items():
            if key in entry:
                return task, f"the lines' {key!r} field", first_of(task)
        return "train", "the lines' conversations (no reference field)", None
    return "train", "no line to tell otherwise", None


@dataclasses.dataclass
class Pass:
    """What one pass over the lines saw."""

    examples: int = 0
    usable: int = 0
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    facts: dict[str, int] = dataclasses.field(default_factory=dict)
    lengths: list[int] = dataclasses.field(default_factory=list)


def training_pass(manifest: str, tokenizer: Any, cfg: ml_collections.ConfigDict,
                  progress: Callable[[int], None]) -> Pass:
    """The training pipeline once over every line, batches of one, reporting instead of stopping."""
    run = ml_collections.ConfigDict(cfg.to_dict())
    run.data.update(batch_size=1, epochs=1, max_skip_fraction=1.0, pack_text_only=False)
    batches = iter(make_pipeline(manifest, tokenizer, run, shuffle=False, drop_remainder=False,
                                 modalities=cfg.train.modalities, find_faces=finder_for(cfg.data.face_detector)))
    seen = Pass()
    try:
        for batch in batches:
            seen.lengths.append(int(batch["attention_mask"].sum()))
            progress(batches.counts["seen"])
    finally:
        batches.close()  # the workers and their shared memory now, also on an error
    counts = batches.counts
    return dataclasses.replace(seen, examples=counts["seen"], usable=counts["ok"], skipped=dict(counts["skipped"]),
                               facts={key: counts[key] for key in STATS + FLAGS})


def evaluation_pass(manifest: str, tokenizer: Any, cfg: ml_collections.ConfigDict, question: str | None,
                    progress: Callable[[int], None]) -> Pass:
    """The prompts generation would build, with their media decoded, once over every line."""
    seen = Pass(facts={key: 0 for key in STATS + FLAGS})
    for arrays, rows in prompt_batches(manifest, tokenizer, cfg, 1, modalities=cfg.eval.modalities, question=question,
                                       process=(0, 1), find_faces=finder_for(cfg.data.face_detector)):
        row = rows[0]
        if row.padding:
            continue
        seen.examples += 1
        if row.skip:
            seen.skipped[row.skip] = seen.skipped.get(row.skip, 0) + 1
        else:
            seen.usable += 1
            seen.lengths.append(int(arrays["attention_mask"].sum()))
            for key in seen.facts:
                seen.facts[key] += row.facts.get(key, False)
        progress(seen.examples)
    return seen


def target_texts(manifest: str, task: str) -> list[str]:
    """What the model is asked to produce: the gpt turns of training lines, the references of
    evaluation lines (a label, the words of `labels`, a description)."""
    texts = []
    field = EVALUATORS[task].reference if task != "train" else None
    for _, entry in json_lines(manifest):
        if field is None:
            turns = entry.get("conversations")
            texts += [t["value"] for t in turns if isinstance(t, dict) and t.get("from") == "gpt"
                      and isinstance(t.get("value"), str)] if isinstance(turns, list) else []
        else:
            value = entry.get(field)
            flat = value if isinstance(value, list) else [value]
            texts += [v for item in flat for v in (item if isinstance(item, list) else [item]) if isinstance(v, str)]
    return texts


def unknown_words(texts: list[str], tokenizer: Any, shown: int = 10) -> dict[str, Any]:
    """Target words the tokenizer maps to its unknown token (a word-level vocabulary's
    [UNK]; byte-level BPEs such as Qwen2's have none), and the unknown share of target tokens."""
    unk = tokenizer.unk_token_id
    words = [word for text in texts for word in text.split()]
    if unk is None:
        return {"target_words": len(words), "unknown_words": 0, "unknown_token_share": 0.0, "unknown_examples": []}
    tokens = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    total = sum(len(t) for t in tokens)
    unknown = {word for word in set(words) if unk in tokenizer(word, add_special_tokens=False)["input_ids"]}
    return {"target_words": len(words),
            "unknown_words": sum(word in unknown for word in words),
            "unknown_token_share": round(sum(t.count(unk) for t in tokens) / max(total, 1), 4),
            "unknown_examples": sorted(unknown)[:shown]}


def length_histogram(lengths: list[int], buckets: tuple[int, ...]) -> dict[str, int]:
    """Token lengths counted per bucket they pad to ("<=4096": n)."""
    edges = sorted(buckets)
    return {f"<={edge}": sum(1 for n in lengths if lo < n <= edge) for lo, edge in zip([0, *edges], edges)}


def check_manifest(manifest: str, tokenizer: Any, cfg: ml_collections.ConfigDict, task: str | None = None,
                   max_skip_fraction: float | None = None,
                   progress: Callable[[int], None] = lambda done: None) -> dict[str, Any]:
    """The report `omni-jax data-check` prints; with `error` when more than max_skip_fraction
    of the lines would be skipped (default: the task's own, data. or eval.max_skip_fraction)."""
    task, why, evaluator = task_of(manifest, cfg, task)
    start = time.perf_counter()
    if task == "train":
        seen = training_pass(manifest, tokenizer, cfg, progress)
        limit, field = cfg.data.max_skip_fraction, "data.max_skip_fraction"
    else:
        spec = dict(cfg.evals[evaluator].to_dict()) if evaluator else {}
        for key in ("type", "manifest"):
            spec.pop(key, None)
        question = spec.get("question")
        EVALUATORS[task].check_references(evaluator or task, manifest, **spec)  # as eval checks them
        seen = evaluation_pass(manifest, tokenizer, cfg, question, progress)
        limit, field = cfg.eval.max_skip_fraction, "eval.max_skip_fraction"
    if max_skip_fraction is not None:
        limit, field = max_skip_fraction, "check.max_skip_fraction"
    seconds = time.perf_counter() - start
    skipped = sum(seen.skipped.values())
    report = {"manifest": manifest, "task": task, "task_from": why, "examples": seen.examples, "usable": seen.usable,
              "skipped": skipped, "skipped_by_reason": dict(sorted(seen.skipped.items())), **seen.facts,
              **unknown_words(target_texts(manifest, task), tokenizer),
              "token_length_histogram": length_histogram(seen.lengths, tuple(cfg.data.buckets)),
              "token_length_max": max(seen.lengths, default=0),
              "clips_per_second": round(seen.examples / seconds, 2)}
    if not seen.examples:
        report["error"] = f"{manifest}: no line to check"
    elif skipped == seen.examples or skipped > limit * seen.examples:
        report["error"] = (f"{skipped} of {seen.examples} lines would be skipped "
                           f"({', '.join(f'{r} {n}' for r, n in sorted(seen.skipped.items()))}), more than {field}="
                           f"{limit:g} allows")
    return report


def run(cfg: ml_collections.ConfigDict, *, manifest: str | os.PathLike, progress: Progress = QUIET) -> dict[str, Any]:
    """`omni-jax data-check`: `check_manifest` with the tokenizer data.tokenizer names, the task
    and limit of cfg.check, a bar over the lines."""
    from omni_jax.runs import load_tokenizer

    check_ranges(cfg, {"check.task": ("", *TASKS), "check.max_skip_fraction": Range(0, 1, none=True)}, pipeline.FIELDS)
    if not cfg.data.tokenizer:
        raise InputError("data-check needs the tokenizer the run will use: --config.data.tokenizer=DIR")
    tokenizer = load_tokenizer(cfg, None)
    manifest = str(manifest)
    with progress.bar(total=len(ManifestSource(manifest)), unit="clip", desc=f"checking {Path(manifest).name}") as bar:
        return check_manifest(manifest, tokenizer, cfg, cfg.check.task or None, cfg.check.max_skip_fraction,
                              progress=lambda done: bar.update(done - bar.n))

"""What `omni-jax annotate` makes of its records: the training and evaluation manifests, the
table of counts, the histogram of scores per source dataset (the paper's Fig. 3).

Manifests (docs/data.md), each line the clip (`id`, `video`, `audio`, the face track by time,
`source`) with:
    phase2_classification.jsonl  the classification question, the source's classes as options → the label
    phase3_instructions.jsonl    three conversations per clip (the paper's Fig. 1, `manifests.job.instructions`):
                                 the label; the reason (which cites the cues and concludes); the emotion words
The questions are the evaluators' (`outputs.evals`: the Omni-Emotion config's `evals`), as
`omni-jax manifest` writes them.
    eval_emer.jsonl              human-reviewed clips: "description" (the reason), for evals.emer
    eval_emer_ov.jsonl           human-reviewed clips: "labels" (the emotion words), for evals.emer_ov
The training manifests take the kept (SRE) clips and, unless outputs.reviewed_in_training is
False, the human-reviewed (HRE) ones, with the reviewer's fixes.
"""
from __future__ import annotations

import collections
import json
import os
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from omni_jax.data.manifest import turns
from omni_jax.manifests import formats
from omni_jax.manifests.job import instructions
from omni_jax.manifests.vocabulary import Vocabulary
from omni_jax.process_files import write_jsonl

MANIFESTS = ("phase2_classification.jsonl", "phase3_instructions.jsonl", "eval_emer.jsonl", "eval_emer_ov.jsonl")
RECORDS = "records.jsonl"  # every line's record, in manifest order


def read_records(out: Path) -> list[dict[str, Any]]:
    path = out / RECORDS
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def final(record: dict[str, Any]) -> dict[str, Any] | None:
    """The record's annotation as it stands: the human review's when accepted or fixed, the
    reviewer's for a kept clip; None for a clip without one (discarded, failed, rejected)."""
    human = record.get("human_review")
    if human is not None:
        return None if human["decision"] == "reject" else {k: human[k] for k in ("reason", "emotions", "intensity")}
    if record["status"] == "kept":
        return {k: record["review"][k] for k in ("reason", "emotions", "intensity")}
    return None


def clip_fields(record: dict[str, Any], out: Path) -> dict[str, Any]:
    """The clip's manifest fields, its paths relative to `out` (remote ones as they are)."""
    # no `label`: a line with one reads as an evaluation line (data-check), these are training lines
    fields = {"id": record["id"], "source": record["source"]}
    for key in ("video", "audio"):
        if record.get(key):
            fields[key] = record[key] if "://" in record[key] else os.path.relpath(record[key], out)
    if record.get("faces"):
        fields["faces"] = record["faces"]
    return fields


def source_classes(records: list[dict[str, Any]], vocabulary: Vocabulary) -> dict[str, list[str]]:
    """Each source's class names, the options of its classification question: its format's
    table (`omni-jax manifest`) when the source is one, then any other label its clips carry."""
    names = collections.defaultdict(list)
    for r in records:
        if r.get("source") and not names[r["source"]] and r["source"] in formats.FORMATS:
            names[r["source"]] = [vocabulary.class_name(w) for w in (formats.FORMATS[r["source"]].table or {}).values()]
        if r.get("label") and r["label"] not in names[r["source"]]:
            names[r["source"]].append(r["label"])
    return names


def manifest_lines(records: list[dict[str, Any]], out: Path, outputs: ml_collections.ConfigDict
                   ) -> dict[str, list[dict[str, Any]]]:
    """Every output manifest's lines (module docstring)."""
    vocabulary = Vocabulary.from_evals(outputs.evals)
    classes = source_classes(records, vocabulary)
    lines: dict[str, list[dict[str, Any]]] = {name: [] for name in MANIFESTS}
    for r in records:
        annotation = final(r)
        if annotation is None:
            continue
        clip = clip_fields(r, out)
        if r.get("human_review") is not None:
            lines["eval_emer.jsonl"].append({**clip, "description": annotation["reason"]})
            lines["eval_emer_ov.jsonl"].append({**clip, "labels": annotation["emotions"]})
            if not outputs.reviewed_in_training:
                continue
        question = vocabulary.options(classes[r["source"]])
        lines["phase2_classification.jsonl"].append({**clip, "conversations": turns(question, r["label"])})
        lines["phase3_instructions.jsonl"] += [
            {**clip, "id": f"{r['id']}:{kind}", "conversations": conversation}
            for kind, conversation in instructions(vocabulary, question, r["label"], annotation["reason"],
                                                   annotation["emotions"])]
    return lines


def counts(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Lines, kept, discarded by reason, failed by step, skipped by reason, human-reviewed, and
    the same per source dataset: they add up to the lines."""
    def table(rs: list[dict[str, Any]]) -> dict[str, Any]:
        by = lambda status, key: dict(sorted(collections.Counter(
            r[key]["step"] if key == "failure" else r[key] for r in rs if r["status"] == status).items()))
        return {"lines": len(rs), "kept": sum(r["status"] == "kept" for r in rs),
                "discarded": by("discarded", "discard"), "failed": by("failed", "failure"),
                "skipped": by("skipped", "skip"),
                "human_reviewed": dict(sorted(collections.Counter(
                    r["human_review"]["decision"] for r in rs if r.get("human_review")).items()))}
    sources = sorted({r["source"] for r in records if "source" in r})
    return {**table(records), "by_source": {s: table([r for r in records if r.get("source") == s]) for s in sources}}


def score_histogram(records: list[dict[str, Any]], path: Path, threshold: float) -> None:
    """A PNG of the scores (0-10) of each source's scored clips, one panel per source, the
    threshold marked (the paper's Fig. 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = collections.defaultdict(list)
    for r in records:
        if "score" in r:
            scored[r["source"]].append(r["score"])
    sources = sorted(scored) or ["(none scored)"]
    figure, axes = plt.subplots(1, len(sources), figsize=(3.2 * len(sources), 2.8), squeeze=False)
    for ax, source in zip(axes[0], sources):
        ax.hist(scored.get(source, []), bins=np.arange(12) - 0.5, color="#4477aa")
        ax.axvline(threshold - 0.5, color="#cc3311", linestyle="--", linewidth=1)
        ax.set(title=f"{source} ({len(scored.get(source, []))})", xlabel="score", xlim=(-0.5, 10.5), xticks=range(11))
    axes[0][0].set_ylabel("clips")
    figure.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(tmp, dpi=100)
    plt.close(figure)
    os.replace(tmp, path)


def write_outputs(records: list[dict[str, Any]], out: Path, cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The manifests, counts.json and scores.png in `out`; returns the counts with the manifests' sizes."""
    lines = manifest_lines(records, out, cfg.outputs)
    for name, entries in lines.items():
        write_jsonl(out / name, entries)
    table = {**counts(records), "manifests": {name: len(entries) for name, entries in lines.items()}}
    tmp = out / ".counts.json.tmp"
    tmp.write_text(json.dumps(table, indent=1) + "\n")
    os.replace(tmp, out / "counts.json")
    score_histogram(records, out / "scores.png", cfg.review.threshold)
    return table

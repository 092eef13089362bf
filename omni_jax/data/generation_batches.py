"""Prompt batches for generation (evaluation, inference): a manifest → left-padded prompts
with their media, in manifest order, every line accounted for.

The same per-example work as training (`pipeline.load_example`'s media and blocks; worker
processes, `data.workers`), with three differences:
  - the prompt is the conversation up to its last human turn plus the assistant header
    (`text.tokenize_prompt`); a final gpt turn, if any, is the reference, not prompt;
  - no shuffle, one pass; process h of H takes lines h, h + H, … (as training deals them), and
    every process yields the same number of batches, ceil(ceil(lines / H) / batch): rows left
    over are padding rows, so processes stay in step for the sharded generation and nothing
    is dropped (the last partial batch included);
  - a line that cannot be read is not dropped silently: its row is padding and its `Row`
    carries the skip reason, so the predictions list it.
Prompts are padded on the left (generation continues every row at the same position).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator

import grain
import jax
import ml_collections
import numpy as np

from omni_jax.data import text
from omni_jax.data.errors import ExampleError
from omni_jax.data.manifest import ManifestLine, ManifestSource
from omni_jax.data.pipeline import (
    FLAGS,
    MEDIA,
    NO_MEDIA,
    STATS,
    FindFaces,
    bucket_length,
    haar_faces,
    media_inputs,
    media_used,
    ordered_examples,
    pad_id_of,
    prompt_blocks,
)
from omni_jax.modality_tokens import MODALITIES, parse_modalities


@dataclasses.dataclass(frozen=True)
class Row:
    """What a batch row is: a prompt (`skip` None), a line that could not be read (`skip` its
    reason), or padding (`line` 0). `line`: the manifest line number (the merge key)."""

    line: int
    id: str = ""
    question: str = ""
    reference: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    skip: str | None = None
    message: str = ""
    used: dict[str, Any] = dataclasses.field(default_factory=dict)  # pipeline.media_used
    facts: dict[str, bool] = dataclasses.field(default_factory=dict)  # pipeline.STATS + FLAGS, as training counts them

    @property
    def padding(self) -> bool:
        return self.line == 0


def split_reference(conversations: Any) -> tuple[Any, str | None]:
    """(the turns to prompt with, the final gpt turn's text or None)."""
    if isinstance(conversations, list) and conversations and isinstance(conversations[-1], dict) \
            and conversations[-1].get("from") == "gpt":
        return conversations[:-1], conversations[-1].get("value")
    return conversations, None


class PromptTransform:
    """(ManifestLine, rng) → (Row, example dict or None) (picklable: it runs in grain's workers;
    prompts hold every modality asked for: the rng is not drawn); `find_faces` serves lines
    without boxes."""

    def __init__(self, source: ManifestSource, tokenizer: Any, cfg: ml_collections.ConfigDict,
                 modalities: tuple[str, ...], find_faces: FindFaces = haar_faces):
        self.source, self.tokenizer, self.cfg, self.modalities = source, tokenizer, cfg, modalities
        self.find_faces = find_faces

    def __call__(self, line: ManifestLine, rng: np.random.Generator) -> tuple[Row, dict[str, np.ndarray] | None]:
        record_id = f"{self.source.path.name}:{line.number}"
        try:
            record = self.source.parse(line)
            record_id = record.id
            turns, reference = split_reference(record.conversations)
            row = Row(line.number, record.id, question=_last_human(turns), reference=reference, extra=record.extra)
            blocks = prompt_blocks(record, self.modalities)
            ids = text.tokenize_prompt(turns, self.tokenizer, self.cfg.model, max(self.cfg.data.buckets), blocks=blocks,
                                       name=f"{record.id} ({record.where})")
            example = {"input_ids": ids, **media_inputs(record, self.cfg, self.modalities, find_faces=self.find_faces)}
            facts = {key: bool(example[key]) for key in STATS + FLAGS if key in example}
            return dataclasses.replace(row, used=media_used(example, self.cfg.data.num_frames), facts=facts), example
        except ExampleError as error:
            return Row(line.number, record_id, skip=error.reason, message=str(error)), None


def _last_human(turns: Any) -> str:
    values = [t.get("value", "") for t in turns if isinstance(t, dict) and t.get("from") == "human"]
    return str(values[-1]).replace("<video>", "").replace("<audio>", "").strip() if values else ""


def _padding_example(cfg: ml_collections.ConfigDict, modalities: tuple[str, ...]) -> dict[str, np.ndarray]:
    """A row's media when it holds no prompt: those of a record without media (zeros, absent)."""
    media = media_inputs(NO_MEDIA, cfg, modalities)
    return {k: v for k, v in media.items() if k in MEDIA + FLAGS}


def left_pad(examples: list[dict[str, np.ndarray] | None], buckets: tuple[int, ...], pad_id: int,
             blank: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Stacks a batch: input_ids and attention_mask [B, bucket] int32, padded on the left to the
    smallest bucket holding the longest prompt; media stacked (`blank` for rows without one)."""
    lengths = [len(e["input_ids"]) for e in examples if e is not None] or [1]
    length = bucket_length(lengths, buckets)
    ids = np.full((len(examples), length), pad_id, np.int32)
    mask = np.zeros((len(examples), length), np.int32)
    for i, example in enumerate(examples):
        if example is not None:
            n = len(example["input_ids"])
            ids[i, length - n:], mask[i, length - n:] = example["input_ids"], 1
    batch = {"input_ids": ids, "attention_mask": mask}
    for key in blank:
        batch[key] = np.stack([(e if e is not None else blank)[key] for e in examples])
    return batch


def batch_count(lines: int, processes: int, batch_size: int) -> int:
    """Batches every process yields: its share of the lines (the largest share) in batches."""
    return max(1, math.ceil(math.ceil(lines / processes) / batch_size))


def prompt_batches(manifest: Any, tokenizer: Any, cfg: ml_collections.ConfigDict, batch_size: int, *,
                   modalities: str | tuple[str, ...] = MODALITIES, question: str | None = None,
                   process: tuple[int, int] | None = None, start_batch: int = 0,
                   find_faces: FindFaces = haar_faces) -> Iterator[tuple[dict[str, np.ndarray], list[Row]]]:
    """This process's prompt batches: (arrays, rows) with arrays input_ids, attention_mask
    [batch_size, bucket] int32 (left-padded) and the media of `modalities` (as `make_pipeline`
    gives them); rows: a Row per batch row. question: the human turn of lines without
    `conversations`. process: (index, count), default JAX's. start_batch: the batches before
    it are left out (a resumed run), their lines never read. find_faces: as `make_pipeline`'s."""
    modalities = parse_modalities(modalities)
    index, count = process or (jax.process_index(), jax.process_count())
    source = ManifestSource(manifest, question)
    data = ml_collections.ConfigDict(cfg.data.to_dict())
    data.epochs = 1
    shard = grain.sharding.ShardOptions(shard_index=index, shard_count=count, drop_remainder=False)
    elements = iter(
        ordered_examples(
            source,
            PromptTransform(source, tokenizer, cfg, modalities, find_faces),
            data,
            shard,
            shuffle=False,
            skip=start_batch * batch_size,
        )
    )
    blank, pad_id = _padding_example(cfg, modalities), pad_id_of(tokenizer)
    try:
        for _ in range(start_batch, batch_count(len(source), count, batch_size)):
            rows, examples = [], []
            for row, example in elements:
                rows.append(row)
                examples.append(example)
                if len(rows) == batch_size:
                    break
            rows += [Row(0)] * (batch_size - len(rows))
            examples += [None] * (batch_size - len(examples))
            yield left_pad(examples, tuple(cfg.data.buckets), pad_id, blank), rows
    finally:
        elements.close()  # the workers and their shared memory now, not "leaked" at exit

"""The input pipeline: a JSONL manifest → static-shape, sharded batches for OmniEmotion.

Order (grain's MapDataset, deterministic from the seed):
  manifest lines → shuffle (seed; a new order each epoch) → repeat (epochs): one global order
  → this process's elements h, h + H, h + 2H, … (process h of H) → per-example transform
  → worker processes with prefetch (mp_prefetch; worker i decodes elements i, i + W, ... and
  the main process reads them back in order) → batches (main process) → global arrays.
Within a process grain reads the source and runs the transform on `data.threads` threads, so
both are thread-safe (the manifest reads under a lock, each thread has its own face detector).

Skips: the transform never raises for bad input. An `ExampleError` becomes a `Skipped` marker
that flows through the workers like an example; the batching iterator in the main process
counts markers by reason, logs each skipped example once (its id and file), and raises
`TooManySkipsError` when more than `max_skip_fraction` of the examples seen were skipped (once
`min_examples` were seen). Any other exception is a bug and propagates. Because the counts
live in the main-process iterator, they are part of its checkpointable state: `get_state()`
returns grain's state for the upstream iterator (taken at a batch boundary, so no example is
half consumed) plus the counts; a restored iterator resumes both. Counts are per process
(each host counts its own shard).

Batches: numpy, per host, padded to the smallest of `data.buckets` that holds the batch's
longest row; `global_batch` turns one into jax.Arrays sharded over the batch's mesh axes
(data × fsdp, from LOGICAL_AXIS_RULES), agreeing on one length across hosts first.

Modalities (a phase's, or an evaluation's): the pipeline decodes only what they include and
each prompt holds only their blocks (`prompt_blocks`): phase 1 (a) gives audio blocks and
log-mels, no pixels; phase 2 (v, f) video blocks and pixels, no log-mel. An audio-only example
(`audio`, no `video`) holds the audio block alone. A text-only example (neither) has no
placeholder block (the model merges features row by row) and zero media flagged absent; with
`data.pack_text_only`, short ones share rows (segment ids in `attention_mask`, positions from
0 per example).
"""
from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import gc
import logging
import os
import shutil
import signal
import tempfile
from typing import Any, Callable, Iterator

import flax.linen as nn
import grain
import jax
import ml_collections
import numpy as np
from etils import epath
from jax.sharding import Mesh, PartitionSpec

from omni_jax.config_flags import AT_LEAST_0, AT_LEAST_1, FRACTION, Range
from omni_jax.data import audio, faces, text, video
from omni_jax.data.errors import ExampleError, TooManySkipsError
from omni_jax.data.manifest import ManifestLine, ManifestSource, Record
from omni_jax.errors import InputError
from omni_jax.modality_tokens import IGNORE, MODALITIES, audio_input_frames, parse_modalities
from omni_jax.sharding import LOGICAL_AXIS_RULES

log = logging.getLogger(__name__)

# per-example facts counted, not skipped: text cut to the longest bucket, centre crops for want of
# a face, faces the detector looked for (no manifest box for some frame), audio with damaged
# packets skipped, an audio track without samples (absent), audio longer than the windows hear
STATS = ("truncated", "face_fallback", "face_detected", "audio_damaged", "audio_empty", "audio_cut")
# what a clip's prediction reports of its media (`media_used`)
FACE_SOURCES = ("manifest", "detector", "manifest+detector", "fallback")
MEDIA = ("pixel_values_videos", "face_pixels", "input_features")  # the model's media inputs
FLAGS = ("has_video", "has_face", "has_audio")
# frames [F, H, W, 3] uint8 RGB and their times [F] seconds → a box (x0, y0, x1, y1) or None per frame
FindFaces = Callable[[np.ndarray, np.ndarray], list]
# the data section's allowed values (config_flags.check_ranges), checked by the jobs that read it
FIELDS = {"data.num_frames": AT_LEAST_1, "data.image_size": AT_LEAST_1, "data.face_size": AT_LEAST_1,
          "data.face_time_tolerance": AT_LEAST_0, "data.batch_size": AT_LEAST_0, "data.workers": AT_LEAST_0,
          "data.threads": AT_LEAST_1, "data.prefetch": AT_LEAST_1, "data.modality_dropout": FRACTION,
          "data.seed": AT_LEAST_0, "data.epochs": Range(1, none=True), "data.max_skip_fraction": FRACTION,
          "data.min_examples": AT_LEAST_0}


@dataclasses.dataclass(frozen=True)
class Skipped:
    """The marker a bad example becomes (it crosses worker processes like an example)."""

    reason: str
    id: str
    message: str


# --------------------------------------------------------------------------- per example


@contextlib.contextmanager
def local_file(path: epath.Path) -> Iterator[str]:
    """A local filename for `path`; a remote one (gs://…) is copied to a temporary file first."""
    if "://" not in str(path):
        yield os.fspath(path)
        return
    if not path.exists():
        raise ExampleError("missing_file", f"{path}: no such file")
    with tempfile.NamedTemporaryFile(suffix=path.suffix) as local, path.open("rb") as remote:
        shutil.copyfileobj(remote, local)
        local.flush()
        yield local.name


def haar_faces(frames: np.ndarray, times: np.ndarray) -> list:
    """A face finder (FindFaces: frames [F, H, W, 3] uint8 and their times [F] → a box or None
    per frame): OpenCV's Haar cascade on each frame. The default of the functions here; a run
    passes `omni_jax.faces.finder.finder_for(cfg.data.face_detector)` (RetinaFace and the tracker)."""
    return video.detect_faces(frames)


def frame_boxes(record: Record, clip: video.VideoFrames, tolerance: float,
                find_faces: FindFaces = haar_faces) -> tuple[list, int]:
    """(a box or None per sampled frame, how many of them the detector looked for): found by
    `find_faces` when the manifest gives none; by time, the manifest's box nearest to the
    frame's timestamp when within `tolerance` seconds (a null there: no face), found for frames
    with none that near; positional, as given (their count must be the number of sampled frames)."""
    if record.faces is None:
        return find_faces(clip.frames, clip.timestamps), len(clip.frames)
    if record.face_times is None:
        if len(record.faces) != len(clip.frames):
            raise ExampleError("malformed_json", f"{record.where}: 'faces' has {len(record.faces)} boxes, expected "
                                                 f"one per sampled frame ({len(clip.frames)}), or give them by time")
        return list(record.faces), 0
    times = np.asarray(record.face_times)
    nearest = [int(np.argmin(np.abs(times - t))) for t in clip.timestamps]
    covered = [abs(times[i] - t) <= tolerance for i, t in zip(nearest, clip.timestamps)]
    uncovered = [f for f, ok in enumerate(covered) if not ok]
    detected = iter(find_faces(clip.frames[uncovered], clip.timestamps[uncovered]) if uncovered else [])
    return [record.faces[i] if ok else next(detected) for i, ok in zip(nearest, covered)], len(uncovered)


def vision_inputs(record: Record, data: ml_collections.ConfigDict, modalities: tuple[str, ...],
                  find_faces: FindFaces = haar_faces) -> dict[str, np.ndarray]:
    """pixel_values_videos [F, S, S, 3] and face_pixels [F, s, s, 3]: zeros (flagged absent)
    without a video or for a modality left out (faces are then neither detected nor cropped)."""
    shape = (data.num_frames,)
    out = {"pixel_values_videos": np.zeros(shape + (data.image_size, data.image_size, 3), np.float32),
           "face_pixels": np.zeros(shape + (data.face_size, data.face_size, 3), np.float32),
           "has_video": np.bool_(False), "has_face": np.bool_(False), "face_fallback": np.bool_(False),
           "face_detected": np.int32(0)}
    if record.video is None:
        return out
    with local_file(record.video) as path:
        clip = video.load_frames(path, data.num_frames)
    if "v" in modalities:
        out.update(pixel_values_videos=video.preprocess_frames(clip.frames, data.image_size), has_video=np.bool_(True))
    if "f" in modalities:
        boxes, detected = frame_boxes(record, clip, data.face_time_tolerance, find_faces)
        crops = faces.face_crops(clip.frames, boxes, data.face_size)
        out.update(face_pixels=crops.pixel_values, has_face=np.bool_(True), face_fallback=np.bool_(crops.fallback),
                   face_detected=np.int32(detected))
    return out


def audio_inputs(record: Record, model: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """input_features [windows, n_mels, T]: the manifest's audio file, else the clip's own track.

    T = the encoder's input frames (3000 at full size; tiny configs take the first T). model: cfg.model."""
    source, frames = record.audio or record.video, audio_input_frames(model.audio)
    with contextlib.nullcontext(None) if source is None else local_file(source) as path:
        feats = audio.load_audio_features(path, model.audio.num_mel_bins, model.audio_windows, frames)
    heard = min(feats.seconds, model.audio_windows * audio.WINDOW_SECONDS)
    return {"input_features": feats.features, "has_audio": np.bool_(feats.present),
            "audio_damaged": np.bool_(feats.damaged), "audio_empty": np.bool_(feats.empty),
            "audio_seconds": np.float32(feats.seconds), "audio_heard_seconds": np.float32(heard),
            "audio_cut": np.bool_(feats.seconds > heard)}


def media_used(example: dict[str, Any], frames: int) -> dict[str, Any]:
    """What an example's prediction says of its media: where its faces came from (FACE_SOURCES;
    absent without faces) and the seconds of audio heard out of the track's length."""
    used = {}
    if example.get("has_face"):
        detected = int(example["face_detected"])
        used["faces"] = ("fallback" if example["face_fallback"] else "manifest" if not detected
                         else "detector" if detected == frames else "manifest+detector")
    if example.get("has_audio"):
        used.update(audio_seconds=round(float(example["audio_seconds"]), 2),
                    audio_heard_seconds=round(float(example["audio_heard_seconds"]), 2))
    return used


def prompt_blocks(record: Record, modalities: tuple[str, ...]) -> tuple[str, ...]:
    """The multimodal blocks of `record`'s prompt: a clip's video block (scene and faces) and
    audio block as far as `modalities` include them; an audio-only example's audio block; none
    for a text-only example. A media example none of whose modalities is wanted is skipped."""
    if record.video is None and record.audio is None:
        return ()
    blocks = (("video",) if record.video is not None and {"v", "f"} & set(modalities) else ()) + (
        ("audio",) if "a" in modalities else ())
    if not blocks:
        raise ExampleError("modality_excluded", f"{record.where}: an audio-only example, and the modalities "
                                                f"{','.join(modalities)} leave audio out")
    return blocks


NO_MEDIA = Record("", None, None, None, [], "")  # what a padding row or a left-out modality decodes


def media_inputs(record: Record, cfg: ml_collections.ConfigDict, modalities: tuple[str, ...],
                 kept: tuple[str, ...] | None = None, find_faces: FindFaces = haar_faces) -> dict[str, Any]:
    """The media of `modalities` (a batch of phase 2 carries no log-mel, one of phase 1 no
    pixels), each zeros and flagged absent where the record lacks it or `kept` (default: all
    of them) leaves it out, and the decoding's counted facts."""
    kept = modalities if kept is None else kept
    example = {}
    if {"v", "f"} & set(modalities):
        example.update(vision_inputs(record, cfg.data, kept, find_faces))
    if "a" in modalities:
        example.update(audio_inputs(record if "a" in kept else NO_MEDIA, cfg.model))
    return example


def kept_modalities(record: Record, modalities: tuple[str, ...], dropout: float,
                    rng: np.random.Generator) -> tuple[str, ...]:
    """The modalities of one training example under modality dropout: audio and faces each left
    out with probability `dropout` (the scene stays), unless that leaves the record no block."""
    if not dropout:
        return modalities
    kept = tuple(m for m, draw in zip(modalities, rng.random(len(modalities))) if m == "v" or draw >= dropout)
    try:
        prompt_blocks(record, kept)
    except ExampleError:  # an audio-only example without its audio
        return modalities
    return kept


def load_example(record: Record, tokenizer: Any, cfg: ml_collections.ConfigDict,
                 modalities: tuple[str, ...] = MODALITIES, kept: tuple[str, ...] | None = None,
                 find_faces: FindFaces = haar_faces) -> dict[str, Any]:
    """One example's model inputs (tokens: text.TokenizedExample, unpadded; `media_inputs`) and
    its counted facts; `kept`: the modalities its prompt holds (default all of `modalities`)."""
    kept = modalities if kept is None else kept
    blocks = prompt_blocks(record, kept)
    tokens = text.tokenize_conversation(
        record.conversations,
        tokenizer,
        cfg.model,
        max(cfg.data.buckets),
        blocks=blocks,
        name=f"{record.id} ({record.where})",
    )
    return {"tokens": tokens, "truncated": np.bool_(tokens.truncated),
            **media_inputs(record, cfg, modalities, kept, find_faces)}


class ExampleTransform:
    """(ManifestLine, rng) → example dict or Skipped (picklable: it runs in grain's worker
    processes); the rng draws `data.modality_dropout`; `find_faces` serves lines without boxes."""

    def __init__(self, source: ManifestSource, tokenizer: Any, cfg: ml_collections.ConfigDict,
                 modalities: tuple[str, ...] = MODALITIES, find_faces: FindFaces = haar_faces):
        self.source, self.tokenizer, self.cfg, self.modalities = source, tokenizer, cfg, modalities
        self.find_faces = find_faces

    def __call__(self, line: ManifestLine, rng: np.random.Generator) -> dict[str, np.ndarray] | Skipped:
        record_id = f"{self.source.path.name}:{line.number}"
        try:
            record = self.source.parse(line)
            record_id = record.id
            kept = kept_modalities(record, self.modalities, self.cfg.data.modality_dropout, rng)
            return load_example(record, self.tokenizer, self.cfg, self.modalities, kept, self.find_faces)
        except ExampleError as error:
            return Skipped(error.reason, record_id, str(error))


# --------------------------------------------------------------------------- order


def ordered_examples(source: ManifestSource, transform: Callable[[ManifestLine, np.random.Generator], Any],
                     data: ml_collections.ConfigDict,
                     shard: grain.sharding.ShardOptions, shuffle: bool = True, skip: int = 0) -> grain.IterDataset:
    """This process's examples (or Skipped markers) in training order, decoded by workers.

    One global order (every epoch shuffled anew), dealt out element by element: process h of H
    takes h, h + H, h + 2H, …, so a step's batches of b on the H hosts together hold exactly
    the H·b examples one process would batch at that step: the run does not depend on the host
    count. With drop_remainder the order is cut to a multiple of H (every host, equal steps).
    skip: this process's first elements left out, never decoded (a resumed evaluation)."""
    _absl_flags_parsed()
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=data.seed)  # repeat() reseeds each epoch: a new order every epoch
    ds = ds.repeat(data.epochs)
    if shard.drop_remainder and data.epochs is not None:
        ds = ds[:len(ds) - len(ds) % shard.shard_count]
    # lazily mapped: each host decodes only its share, with the draws of the element's global place
    ds = ds.random_map(transform, seed=data.seed)[shard.shard_index::shard.shard_count][skip:]
    # grain's default read options run 16 threads with a 500-example buffer in every process:
    # at the 7B config (~20 MB an example) that is ~10 GB per worker. Bounded by the config.
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=data.threads, prefetch_buffer_size=data.prefetch))
    if data.workers > 0:
        ds = ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=data.workers, per_worker_buffer_size=data.prefetch),
            worker_init_fn=leave_signals_to_the_main_process,
        )
        release_workers_at_exit()
    return ds


@functools.cache
def release_workers_at_exit() -> None:
    """At exit, before multiprocessing's own exit function: (1) data workers a run left open
    (an error, a signal on the way) are killed: they ignore SIGTERM, which is how
    multiprocessing would stop them before waiting for them forever; (2) grain unlinks a
    worker's shared-memory array when the main process drops it, on a thread pool the
    interpreter does not wait for: the last arrays of every command were left to the resource
    tracker, which warned at exit of "leaked shared_memory objects" it then removed. This waits
    for that pool (grain has no public hook for it; where its private pool is gone, nothing is
    done)."""
    import multiprocessing

    def release() -> None:
        from grain._src.python.ipc import shared_memory_array

        for worker in multiprocessing.active_children():
            worker.kill()
            worker.join(5)
        gc.collect()
        arrays = shared_memory_array.SharedMemoryArray
        pool = getattr(arrays, "_del_thread_pool", None)
        if pool is not None and hasattr(arrays, "_disable_async_del"):
            arrays._disable_async_del()  # what is dropped from now on is unlinked at once
            pool.close()
            pool.join()

    atexit.register(release)


def leave_signals_to_the_main_process(worker: int, workers: int) -> None:
    """In each data worker: SIGINT and SIGTERM are ignored. A scheduler's SIGTERM and a
    terminal's Ctrl-C reach the whole process group; a worker that died of them would fail the
    run mid-batch, while the main process saves at the next step and stops the workers itself.
    JAX there (the face detector) runs on the host's CPU: the accelerators are the main
    process's, and a worker starting their backend would take their memory."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    jax.config.update("jax_platforms", "cpu")


# --------------------------------------------------------------------------- batches


def pad_batch(rows: list[list[dict[str, np.ndarray]]], length: int, pad_id: int) -> dict[str, np.ndarray]:
    """Stacks rows (each one example, or several text-only ones packed): input_ids, labels,
    attention_mask (1/0, or segment ids in a packed row), position_ids padded to [batch, length];
    the media of a row's first example (a packed row's are zeros, flagged absent)."""
    padded = [text.pack_examples([e["tokens"] for e in row], length, pad_id)[0] if len(row) > 1
              else text.pad_to_bucket(row[0]["tokens"], (length,), pad_id) for row in rows]
    batch = {key: np.stack([p[key] for p in padded]) for key in padded[0]}
    for key in MEDIA + FLAGS:
        if key in rows[0][0]:  # the modalities the pipeline was asked for
            batch[key] = np.stack([row[0][key] for row in rows])
    return batch


def bucket_length(lengths: list[int], buckets: tuple[int, ...]) -> int:
    """The smallest bucket that holds the longest example."""
    longest = max(lengths)
    fitting = [b for b in sorted(buckets) if b >= longest]
    if not fitting:
        raise ValueError(f"an example of {longest} tokens exceeds the largest bucket {max(buckets)}")
    return fitting[0]


def new_counts() -> dict[str, Any]:
    return {"seen": 0, "ok": 0, "skipped": {}, **{k: 0 for k in STATS + FLAGS}}


class BatchIterator(grain.DatasetIterator):
    """Counts and logs skips, checks the skip fraction, and batches good examples.

    State = upstream state at the last batch boundary + counts, so restoring it resumes both.
    """

    def __init__(
        self,
        parent: grain.DatasetIterator,
        batch_size: int,
        buckets: tuple[int, ...],
        pad_id: int,
        max_skip_fraction: float,
        min_examples: int,
        drop_remainder: bool = True,
        pack_text_only: bool = False,
    ):
        super().__init__(parent)
        self.batch_size, self.buckets, self.pad_id = batch_size, tuple(buckets), pad_id
        self.pack_length = min(buckets) if pack_text_only else 0
        self.max_skip_fraction, self.min_examples, self.drop_remainder = max_skip_fraction, min_examples, drop_remainder
        self.counts = new_counts()
        self._logged: set[tuple[str, str]] = set()

    def _count(self, item: dict[str, np.ndarray] | Skipped) -> bool:
        """Counts one element; True if it is a usable example."""
        counts = self.counts
        counts["seen"] += 1
        if isinstance(item, Skipped):
            counts["skipped"][item.reason] = counts["skipped"].get(item.reason, 0) + 1
            if (item.reason, item.id) not in self._logged:  # once per example, not once per epoch
                self._logged.add((item.reason, item.id))
                log.warning("skipped %s (%s): %s", item.id, item.reason, item.message)
            self._check_skips()
            return False
        counts["ok"] += 1
        for key in STATS + FLAGS:
            counts[key] += int(bool(item.get(key, False)))
        return True

    def _check_skips(self) -> None:
        seen, skipped = self.counts["seen"], sum(self.counts["skipped"].values())
        if seen >= self.min_examples and skipped > self.max_skip_fraction * seen:
            raise TooManySkipsError(
                f"{skipped} of {seen} examples skipped ({skipped / seen:.0%} > max_skip_fraction "
                f"{self.max_skip_fraction:.0%}); by reason: {dict(sorted(self.counts['skipped'].items()))}")

    def __next__(self) -> dict[str, np.ndarray]:
        rows: list[list[dict[str, np.ndarray]]] = []
        room: list[int] = []  # tokens left in each row (0: a row that takes nothing more)
        while len(rows) < self.batch_size:
            try:
                item = next(self._parent)
            except StopIteration:
                if rows and not self.drop_remainder:
                    break
                raise
            if self._count(item):
                self._place(item, rows, room)
        length = bucket_length([sum(len(e["tokens"].input_ids) for e in row) for row in rows], self.buckets)
        return pad_batch(rows, length, self.pad_id)

    def _place(self, item: dict[str, np.ndarray], rows: list[list], room: list[int]) -> None:
        """A clip gets a row; with packing, a short text-only example joins the first row of this
        batch with room (first fit, up to the smallest bucket), else opens one. Packing stays
        within a batch, so a batch boundary leaves nothing pending and the state stays exact."""
        size = len(item["tokens"].input_ids)
        if not self.pack_length or item["tokens"].multimodal or size > self.pack_length:
            rows.append([item])
            room.append(0)
            return
        fit = next((i for i, free in enumerate(room) if free >= size), None)
        if fit is None:
            rows.append([])
            room.append(self.pack_length)
            fit = len(rows) - 1
        rows[fit].append(item)
        room[fit] -= size

    def get_state(self) -> dict[str, Any]:
        counts = {**self.counts, "skipped": dict(self.counts["skipped"])}
        return {"upstream": self._parent.get_state(), "counts": counts}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["upstream"])
        # a state saved before a count existed restores it as 0
        self.counts = {**new_counts(), **state["counts"], "skipped": dict(state["counts"]["skipped"])}


class Batches(grain.IterDataset):
    """IterDataset of numpy batches; its iterator is a BatchIterator."""

    def __init__(self, parent: grain.IterDataset, **options: Any):
        super().__init__(parent)
        self.options = options

    def __iter__(self) -> BatchIterator:
        return BatchIterator(self._parent.__iter__(), **self.options)


def pad_id_of(tokenizer: Any) -> int:
    """The id padding uses (attention_mask hides it): the tokenizer's pad token, else its EOS."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def make_pipeline(manifest: str | os.PathLike, tokenizer: Any, cfg: ml_collections.ConfigDict, *,
                  shard: grain.sharding.ShardOptions | None = None, shuffle: bool = True,
                  drop_remainder: bool = True, modalities: str | tuple[str, ...] = MODALITIES,
                  find_faces: FindFaces = haar_faces) -> Batches:
    """Numpy batches of this process's shard of `manifest`, as configured by `cfg.data`.

    Batch: input_ids, labels, attention_mask [B, bucket] int32; pixel_values_videos
    [B, F, S, S, 3], face_pixels [B, F, s, s, 3] and has_video, has_face [B] bool (when
    `modalities` has v or f); input_features [B, windows, n_mels, T] float32 and has_audio [B]
    bool (when it has a). `iter(...)` has get_state/set_state and `.counts`.
    modalities: "v,a,f" or a subset (a training phase's, `prompt.parse_modalities`): the
    prompt's blocks and the media decoded follow them. find_faces: for lines without boxes
    (a run passes `omni_jax.faces.finder.finder_for(cfg.data.face_detector)`).
    """
    data = cfg.data
    if data.batch_size < 1:
        raise InputError(f"data.batch_size {data.batch_size}: set the clips per host per step (a training run "
                         "derives it from train.global_batch_size)")
    source = ManifestSource(manifest)
    shard = shard or grain.sharding.ShardByJaxProcess(drop_remainder=True)
    transform = ExampleTransform(source, tokenizer, cfg, parse_modalities(modalities), find_faces)
    examples = ordered_examples(source, transform, data, shard, shuffle)
    return Batches(examples, batch_size=data.batch_size, buckets=tuple(data.buckets), pad_id=pad_id_of(tokenizer),
                   max_skip_fraction=data.max_skip_fraction, min_examples=data.min_examples,
                   drop_remainder=drop_remainder, pack_text_only=data.pack_text_only)


def _absl_flags_parsed() -> None:
    """grain reads absl flags in its workers; a program that never parsed them gets the defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


# --------------------------------------------------------------------------- global arrays


def repad(batch: dict[str, np.ndarray], length: int, pad_id: int, left: bool = False) -> dict[str, np.ndarray]:
    """The batch with its token arrays padded to `length` (on the right; prompts on the left)."""
    fill = {"input_ids": pad_id, "labels": IGNORE, "attention_mask": 0, "position_ids": 0}
    extra = length - batch["input_ids"].shape[1]
    widths = ((0, 0), (extra, 0) if left else (0, extra))
    return {k: np.pad(v, widths, constant_values=fill[k]) if k in fill else v for k, v in batch.items()}


def global_batch(batch: dict[str, np.ndarray], mesh: Mesh, pad_id: int, rules: Any = LOGICAL_AXIS_RULES,
                 left: bool = False) -> dict[str, jax.Array]:
    """Per-host numpy batches → global jax.Arrays, batch axis sharded as "activation_batch".

    Hosts may have picked different buckets; all take the longest (one small all-gather),
    padding on the right, or on the left for prompts (`left`)."""
    length = batch["input_ids"].shape[1]
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        length = int(np.max(multihost_utils.process_allgather(np.int32(length))))
    batch = repad(batch, length, pad_id, left)
    sharding = nn.logical_to_mesh_sharding(PartitionSpec("activation_batch"), mesh, rules)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def host_rows(array: jax.Array) -> np.ndarray:
    """This process's rows of a global array sharded on its first (batch) axis, in the order
    `global_batch` took them from it: its shards by batch position, replicas (the tensor axis)
    once. On a TPU slice with several hosts a host's devices need not be one block of the
    mesh (meshes follow the torus), which `global_array_to_host_local_array` refuses."""
    shards = {shard.index[0].start or 0: shard for shard in array.addressable_shards}
    return np.concatenate([np.asarray(shards[start].data) for start in sorted(shards)])


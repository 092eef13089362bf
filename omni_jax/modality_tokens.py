"""What the data and the model agree on: token ids, the multimodal block, placeholder counts.

Below both `data/` and `models/` (it reads only configs), so the pipeline that writes a prompt
and the model that reads it take the same numbers from one place.

Multimodal block (the chat template wraps it; `multimodal_prompt_ids` builds it):
  <vi_start> [video block: `video_token_id` × placeholder_counts(cfg)["video"]] <vi_end>
  <au_start> [audio block: `audio_token_id` × placeholder_counts(cfg)["audio"]] <au_end>
A prompt holds the blocks of the modalities it was built for: a clip in phase 3 both, a clip
in phase 2 (video and face) only the first, an audio-only example (phase 1) only the second.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import ml_collections
import numpy as np

from omni_jax.errors import InputError
from omni_jax.layers.resize import half_size

IGNORE = -100  # label of positions that carry no loss (everything but the assistant's tokens)
# config field → token text; the placeholders' and the four modality tokens' trainable rows.
SPECIAL_TOKENS = {"audio_token_id": "<audio>", "vi_start_token_id": "<vi_start>", "vi_end_token_id": "<vi_end>",
                  "au_start_token_id": "<au_start>", "au_end_token_id": "<au_end>"}
# Modalities by letter, as configs and the command line name them: the video block carries the
# scene (v) and the face (f); the audio block the voice (a).
MODALITIES = ("v", "a", "f")


def parse_modalities(value: str | Sequence[str]) -> tuple[str, ...]:
    """"v,a,f" (or a sequence of letters) → ("v", "a", "f") in canonical order; an unknown letter
    or an empty set is an error that names it."""
    letters = [m.strip() for m in (value.split(",") if isinstance(value, str) else value) if m.strip()]
    unknown = sorted(set(letters) - set(MODALITIES))
    if unknown or not letters:
        raise InputError(f"modalities {value!r}: expected a non-empty subset of {','.join(MODALITIES)} "
                         f"(v: video frames, a: audio, f: faces){f'; unknown {unknown}' if unknown else ''}")
    return tuple(m for m in MODALITIES if m in letters)


def video_tokens(cfg: ml_collections.ConfigDict, frames: int) -> int:
    """LLaVA-OneVision's placeholder count of one video: frames × 2×2-pooled grid + the newline."""
    grid = cfg.vision.image_size // cfg.vision.patch_size
    return frames * math.prod(half_size(grid, grid)) + 1


def audio_input_frames(audio_cfg: ml_collections.ConfigDict) -> int:
    """Log-mel frames a Whisper window takes: 2 × positions (conv2 has stride 2): 3000 for 30 s."""
    return 2 * audio_cfg.max_source_positions


def audio_tokens_per_window(cfg: ml_collections.ConfigDict) -> int:
    return cfg.audio.max_source_positions // cfg.audio_pool


def placeholder_counts(cfg: ml_collections.ConfigDict) -> dict[str, int]:
    """Placeholders per clip: {"video": F·(V + A) + 1, "audio": windows × tokens per window}
    (V visual tokens per frame, A face tokens per frame)."""
    visual = video_tokens(cfg, 1) - 1  # per frame, without the newline
    face = cfg.face.face_grid[0] * cfg.face.face_grid[1]
    return {"video": cfg.num_frames * (visual + face) + 1, "audio": cfg.audio_windows * audio_tokens_per_window(cfg)}


def multimodal_prompt_ids(cfg: ml_collections.ConfigDict, before: Sequence[int] = (), after: Sequence[int] = (),
                          video: bool = True, audio: bool = True) -> np.ndarray:
    """before + [<vi_start> video placeholders <vi_end>] + [<au_start> audio placeholders <au_end>]
    + after; `video` / `audio` choose the blocks."""
    counts = placeholder_counts(cfg)
    block = []
    if video:
        block += [cfg.vi_start_token_id] + [cfg.video_token_id] * counts["video"] + [cfg.vi_end_token_id]
    if audio:
        block += [cfg.au_start_token_id] + [cfg.audio_token_id] * counts["audio"] + [cfg.au_end_token_id]
    return np.asarray([*before, *block, *after], np.int32)


def add_special_tokens(tokenizer: Any, cfg: ml_collections.ConfigDict) -> None:
    """Adds <audio>, <vi_start>, <vi_end>, <au_start>, <au_end> to a transformers tokenizer (in
    place; ones it has are kept) and checks they got the config's ids."""
    from tokenizers import AddedToken

    fields = sorted(SPECIAL_TOKENS, key=lambda field: cfg[field])
    tokenizer.add_tokens([AddedToken(SPECIAL_TOKENS[f], special=True, normalized=False) for f in fields],
                         special_tokens=True)
    got = {SPECIAL_TOKENS[f]: tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS[f]) for f in fields}
    want = {SPECIAL_TOKENS[f]: cfg[f] for f in fields}
    if got != want:
        raise InputError(f"the tokenizer assigns {got}, the config expects {want}: set the config's token ids")

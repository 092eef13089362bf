"""Conversations → token ids and loss labels (Qwen2's chat template), and static-shape rows.

Rendering: the tokenizer's own chat template (Qwen2-Instruct's; it adds the default system turn
"You are a helpful assistant." when the conversation has none) renders the whole conversation,
which is tokenized in one call. The tokenizer splits at special tokens, so this equals
tokenizing turn by turn (every turn starts with <|im_start|>); offsets locate each turn's
content. The template is also rendered with a sentinel in place of every content, which gives
the content's character span; the two renders must agree (a template that edits content, e.g.
trims it, is refused).

Multimodal block: the single marker of a human turn, `<video>` (a clip) or `<audio>` (an
audio-only example), is tokenized as its one token and replaced by
`modality_tokens.multimodal_prompt_ids(cfg.model, video=..., audio=...)` — [<vi_start>, video placeholders,
<vi_end>] [<au_start>, audio placeholders, <au_end>], the blocks the example's modalities call
for — inserted as ids (3,645 at full size with both: the placeholders are never tokenized as
text). Any other placeholder or modality token written in the text is refused (the model would
merge features there).

Labels: IGNORE (-100) everywhere except each assistant turn's content tokens and its closing
<|im_end|> (the model learns to stop). Not labelled: the "<|im_start|>assistant\\n" header and
the "\\n" after <|im_end|>, which generation never produces (it stops at <|im_end|>). This is
Qwen's own fine-tuning recipe minus the separator; LLaVA-NeXT's `preprocess_qwen` labels the
whole assistant turn and also every <|im_start|>, <|im_end|> and "\\n" of the prompt turns, so
its loss includes template tokens this one leaves out.

Truncation: a sequence longer than `max_length` loses its last tokens (text only: the block must
end within `max_length`, else the example is too_long). If no labelled token survives, the
example is no_assistant_turn; otherwise it is kept with `truncated=True` (counted and warned by
the pipeline).

Rows: `pad_to_bucket` pads one example to the smallest bucket that holds it; `pack_examples`
puts several text-only examples in one row with segment ids in `attention_mask`. A segment's
first label is IGNORE: with next-token targets (labels shifted left, `next_token_targets`) it
would be the previous segment's last target, and no position of its own segment predicts it.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import ml_collections
import numpy as np

from omni_jax.data.errors import ExampleError
from omni_jax.errors import InputError
from omni_jax.modality_tokens import IGNORE, SPECIAL_TOKENS, multimodal_prompt_ids

ROLES = {"system": "system", "human": "user", "gpt": "assistant"}  # LLaVA "from" → chat-template role
VIDEO, AUDIO = "<video>", "<audio>"
MARKERS = {VIDEO: "video_token_id", AUDIO: "audio_token_id"}  # either one, once, becomes the multimodal block
BLOCKS = ("video", "audio")
# Token ids that may appear only inside the inserted multimodal block.
RESERVED_FIELDS = ("image_token_id", "video_token_id", *SPECIAL_TOKENS)
_SENTINEL = re.compile("\x00([0-9]+)\x00")


@dataclasses.dataclass(frozen=True)
class TokenizedExample:
    """input_ids, labels: [length] int32 (labels IGNORE except assistant tokens); truncated: the
    text was cut to max_length; multimodal: holds the multimodal block."""

    input_ids: np.ndarray
    labels: np.ndarray
    truncated: bool
    multimodal: bool


def check_tokenizer(tokenizer: Any, cfg: ml_collections.ConfigDict) -> int:
    """Checks that the tokenizer maps <video>, <image> and Omni-Emotion's five tokens to the
    config's ids and has a chat template; returns the id of <|im_end|>."""
    tokens = {"<image>": "image_token_id", VIDEO: "video_token_id",
              **{text: field for field, text in SPECIAL_TOKENS.items()}}
    got = dict(zip(tokens, tokenizer.convert_tokens_to_ids(list(tokens))))
    want = {text: cfg[field] for text, field in tokens.items()}
    if got != want:
        raise InputError(f"the tokenizer maps {got}, the config expects {want}: add the tokens with "
                         "omni_emotion.add_special_tokens(tokenizer, cfg) or set the config's ids")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if not tokenizer.chat_template or im_end in (None, tokenizer.unk_token_id):
        raise InputError("the tokenizer needs Qwen2's chat template and its <|im_end|> token")
    return im_end


def _messages(conversations: Any, multimodal: bool, name: str, answered: bool = True) -> list[dict[str, str]]:
    """LLaVA turns → chat-template messages: an optional system turn, then human and gpt turns
    alternating from human, every value a non-blank string, and exactly one marker (`<video>`
    or `<audio>`, in a human turn) if `multimodal`, none otherwise. `answered`: at least one gpt
    turn is required (training); otherwise the turns must end with a human one (a prompt)."""
    def bad(why: str) -> ExampleError:
        return ExampleError("bad_conversation", f"{name}: {why}")

    if not isinstance(conversations, list) or not conversations:
        raise bad(f"conversations must be a non-empty list, got {conversations!r:.80}")
    messages = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or turn.get("from") not in ROLES:
            raise bad(f"turn {i} is not {{'from': one of {sorted(ROLES)}, 'value': ...}}: {turn!r:.80}")
        value = turn.get("value")
        if not isinstance(value, str) or not value.strip():
            raise bad(f"turn {i} ({turn['from']}) has no text")
        messages.append({"role": ROLES[turn["from"]], "content": value})
    dialogue = messages[1:] if messages[0]["role"] == "system" else messages
    for i, message in enumerate(dialogue):
        if message["role"] != ("user", "assistant")[i % 2]:
            raise bad(f"turns must alternate human, gpt, ... after an optional system turn; got "
                      f"{[turn['from'] for turn in conversations]}")
    places = [m["role"] for m in messages for marker in MARKERS for _ in range(m["content"].count(marker))]
    if places != (["user"] if multimodal else []):
        expected = "one <video> or <audio> in a human turn" if multimodal else "no <video> or <audio> (text-only)"
        raise bad(f"expected {expected}, "
                  f"found markers in {places or 'no'} turns")
    if answered and len(dialogue) < 2:
        raise ExampleError("no_assistant_turn", f"{name}: no gpt turn")
    if not answered and messages[-1]["role"] != "user":
        raise bad("a prompt ends with a human turn (the answer is generated)")
    return messages


def _render(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The chat template's text and each message content's [start, end) character span."""
    sentinels = [{"role": m["role"], "content": f"\x00{i}\x00"} for i, m in enumerate(messages)]
    parts = _SENTINEL.split(tokenizer.apply_chat_template(sentinels, tokenize=False))
    if parts[1::2] != [str(i) for i in range(len(messages))]:
        raise InputError("the chat template must write every message's content once, in order")
    text, spans = parts[0], []
    for message, between in zip(messages, parts[2::2]):
        spans.append((len(text), len(text) + len(message["content"])))
        text += message["content"] + between
    if text != tokenizer.apply_chat_template(messages, tokenize=False):
        raise InputError("the chat template changes message content; only templates that copy it verbatim "
                         "(as Qwen2's does) are supported")
    return text, spans


def _assistant_labels(ids: np.ndarray, offsets: np.ndarray, spans: list[tuple[int, int]], im_end: int) -> np.ndarray:
    """ids: [L]; offsets: [L, 2] character spans; spans: the assistant contents → labels [L]:
    the ids of tokens overlapping a content span and of the <|im_end|> right after it."""
    labelled = np.zeros(len(ids), bool)
    for start, end in spans:
        labelled |= (offsets[:, 0] < end) & (offsets[:, 1] > start)
        after = np.searchsorted(offsets[:, 0], end)
        if after < len(ids) and ids[after] == im_end:
            labelled[after] = True
    return np.where(labelled, ids, IGNORE).astype(np.int32)


def tokenize_conversation(conversations: Any, tokenizer: Any, cfg: ml_collections.ConfigDict, max_length: int,
                          blocks: tuple[str, ...] = BLOCKS, name: str = "conversation") -> TokenizedExample:
    """LLaVA-style turns [{"from": "human" | "gpt" | "system", "value": str}] → input_ids and
    labels ([L ≤ max_length] int32) as the module docstring lays out.

    blocks: the multimodal blocks the prompt holds ("video", "audio", both, or none for a
    text-only example). With any, exactly one marker (`<video>` or `<audio>`, in a human turn)
    is expected and becomes them; with none, no marker is allowed.
    name: names the example (id and file) in error messages.
    Raises ExampleError bad_conversation, no_assistant_turn or too_long."""
    unknown = set(blocks) - set(BLOCKS)
    if unknown:
        raise ValueError(f"unknown blocks {sorted(unknown)}; choose from {BLOCKS}")
    im_end = check_tokenizer(tokenizer, cfg)
    multimodal = bool(blocks)
    messages = _messages(conversations, multimodal, name)
    text, spans = _render(tokenizer, messages)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(encoding["input_ids"], np.int32)
    offsets = np.asarray(encoding["offset_mapping"], np.int64).reshape(-1, 2)
    labels = _assistant_labels(ids, offsets, [s for m, s in zip(messages, spans) if m["role"] == "assistant"],
                               im_end)
    with_block, at = _insert_block(ids, cfg, blocks, max_length, name)
    if multimodal:
        block = len(with_block) - len(ids) + 1
        labels = np.concatenate([labels[:at], np.full(block, IGNORE, np.int32), labels[at + 1:]])
    ids = with_block
    truncated = len(ids) > max_length
    ids, labels = ids[:max_length], labels[:max_length]
    if not np.any(labels != IGNORE):
        raise ExampleError("no_assistant_turn", f"{name}: no assistant token within max_length {max_length}")
    return TokenizedExample(ids, labels, truncated, multimodal)


def _insert_block(ids: np.ndarray, cfg: ml_collections.ConfigDict, blocks: tuple[str, ...], max_length: int,
                  name: str) -> tuple[np.ndarray, int]:
    """ids with their one marker (`<video>` / `<audio>`) replaced by the multimodal block of
    `blocks` (none: ids unchanged); also the marker's position. Checks that the text holds no
    other placeholder or modality token and that the block ends within max_length."""
    multimodal = bool(blocks)
    markers = [cfg[field] for field in MARKERS.values()]
    reserved = ids[np.isin(ids, [cfg[field] for field in RESERVED_FIELDS])].tolist()
    if len(reserved) != multimodal or (multimodal and reserved[0] not in markers):
        raise ExampleError("bad_conversation", f"{name}: the text holds placeholder or modality tokens {reserved}; "
                           f"expected {'only the one <video> or <audio>' if multimodal else 'none (text-only)'}")
    if not multimodal:
        return ids, -1
    at = int(np.flatnonzero(np.isin(ids, markers))[0])
    block = multimodal_prompt_ids(cfg, video="video" in blocks, audio="audio" in blocks)
    if at + len(block) > max_length:
        raise ExampleError("too_long", f"{name}: the multimodal block ends at token {at + len(block)}, "
                           f"beyond max_length {max_length}")
    return np.concatenate([ids[:at], block, ids[at + 1:]]), at


def tokenize_prompt(conversations: Any, tokenizer: Any, cfg: ml_collections.ConfigDict, max_length: int,
                    blocks: tuple[str, ...] = BLOCKS, name: str = "prompt") -> np.ndarray:
    """The turns up to a final human one, rendered with the chat template's generation prompt
    ("<|im_start|>assistant\\n"), with the multimodal block in place of the marker → input_ids
    [L ≤ max_length] int32: what generation continues. Raises ExampleError bad_conversation or
    too_long (a prompt is never cut: the answer would continue a different text)."""
    check_tokenizer(tokenizer, cfg)
    messages = _messages(conversations, bool(blocks), name, answered=False)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], np.int32)
    ids, _ = _insert_block(ids, cfg, blocks, max_length, name)
    if len(ids) > max_length:
        raise ExampleError("too_long", f"{name}: the prompt has {len(ids)} tokens, beyond max_length {max_length}")
    return ids


def _row(examples: Sequence[TokenizedExample], length: int, pad_id: int) -> dict[str, np.ndarray]:
    """Examples laid end to end in one row of `length`, then padding → input_ids, labels,
    attention_mask (segment ids 1, 2, …; 0 = padding), position_ids (from 0 per segment; 0 on
    padding): each [length] int32."""
    row = {"input_ids": np.full(length, pad_id, np.int32), "labels": np.full(length, IGNORE, np.int32),
           "attention_mask": np.zeros(length, np.int32), "position_ids": np.zeros(length, np.int32)}
    start = 0
    for segment, example in enumerate(examples, 1):
        end = start + len(example.input_ids)
        row["input_ids"][start:end] = example.input_ids
        row["labels"][start:end] = example.labels
        row["labels"][start] = IGNORE  # else it would be the previous segment's last target
        row["attention_mask"][start:end] = segment
        row["position_ids"][start:end] = np.arange(end - start)
        start = end
    return row


def pad_to_bucket(example: TokenizedExample, buckets: Sequence[int], pad_id: int) -> dict[str, np.ndarray]:
    """Pads to the smallest bucket ≥ the example's length (a few fixed lengths: few XLA shapes)
    → input_ids (pad_id on padding), labels (IGNORE on padding), attention_mask (1 / 0),
    position_ids: each [bucket] int32."""
    length = len(example.input_ids)
    fitting = [bucket for bucket in buckets if bucket >= length]
    if not fitting:
        raise ValueError(f"an example of {length} tokens exceeds the largest bucket {max(buckets)}: "
                         "tokenize with max_length at most the largest bucket")
    return _row([example], min(fitting), pad_id)


def pack_examples(examples: Sequence[TokenizedExample], length: int, pad_id: int) -> list[dict[str, np.ndarray]]:
    """Greedy first-fit packing of text-only examples (in order, each into the first row with
    room) into rows of `length`: input_ids, labels, attention_mask (segment ids 1, 2, … per
    example, 0 = padding), position_ids (restarting at 0 per example), each [length] int32."""
    rows: list[list[TokenizedExample]] = []
    room: list[int] = []
    for example in examples:
        size = len(example.input_ids)
        if example.multimodal or size > length:
            raise ValueError(f"only text-only examples of at most {length} tokens are packed; got "
                             f"{'a multimodal one' if example.multimodal else f'{size} tokens'}")
        row = next((i for i, free in enumerate(room) if free >= size), len(rows))
        if row == len(rows):
            rows.append([])
            room.append(length)
        rows[row].append(example)
        room[row] -= size
    return [_row(row, length, pad_id) for row in rows]

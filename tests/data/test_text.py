"""Conversations → ids and labels with Qwen2's chat template (against the rendered template and a
turn-by-turn oracle), the multimodal block, truncation, every skip reason, padding buckets,
packing under next-token targets, and the tokenization time of a full-size example."""

import numpy as np
import pytest

from omni_jax.configs import omni_emotion as omni_configs
from omni_jax.data.errors import ExampleError
from omni_jax.data.text import (
    BLOCKS,
    TokenizedExample,
    check_tokenizer,
    pack_examples,
    pad_to_bucket,
    tokenize_conversation,
)
from omni_jax.modality_tokens import IGNORE, add_special_tokens, multimodal_prompt_ids, placeholder_counts
from omni_jax.models.qwen2 import positions_from_mask
from omni_jax.train.loss import next_token_targets
from tests.tokenizer import byte_bpe_tokenizer, qwen2_test_tokenizer, word_tokenizer

CFG = omni_configs.get_config("tiny").model
TOKENIZER = qwen2_test_tokenizer(CFG)
ROLE = {"system": "system", "human": "user", "gpt": "assistant"}
PAD = TOKENIZER.pad_token_id


def words(first: int, count: int) -> str:
    return " ".join(f"w{i}" for i in range(first, first + count))


def conversation(*values: str) -> list[dict[str, str]]:
    """human, gpt, human, gpt, ... turns with these values."""
    return [{"from": ("human", "gpt")[i % 2], "value": v} for i, v in enumerate(values)]


MULTI_TURN = conversation(f"<video>\n{words(10, 5)} .", words(20, 7), words(30, 3), f"{words(40, 4)}\n{words(50, 2)}")


def block_text(cfg) -> str:
    counts = placeholder_counts(cfg)
    return f"<vi_start>{'<video>' * counts['video']}<vi_end><au_start>{'<audio>' * counts['audio']}<au_end>"


def oracle(conversations, cfg=CFG, tokenizer=TOKENIZER) -> tuple[list[int], list[int]]:
    """Qwen2's template written out turn by turn, each piece tokenized on its own: ids, and labels
    = the ids of assistant contents and their <|im_end|>."""
    ids, labels = [], []

    def add(piece, labelled: bool):
        piece = tokenizer(piece, add_special_tokens=False)["input_ids"] if isinstance(piece, str) else list(piece)
        ids.extend(piece)
        labels.extend(piece if labelled else [IGNORE] * len(piece))

    if conversations[0]["from"] != "system":
        add("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n", False)
    for turn in conversations:
        assistant = turn["from"] == "gpt"
        add(f"<|im_start|>{ROLE[turn['from']]}\n", False)
        before, video, after = turn["value"].partition("<video>")
        add(before, assistant)
        if video:
            add(multimodal_prompt_ids(cfg), False)
        add(after + "<|im_end|>", assistant)
        add("\n", False)
    return ids, labels


def test_test_tokenizer_has_qwen2_and_config_ids():
    ids = lambda tokenizer, tokens: tokenizer.convert_tokens_to_ids(tokens)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>", "<audio>", "<vi_start>",
                "<vi_end>", "<au_start>", "<au_end>"]
    assert ids(TOKENIZER, specials) == list(range(147, 157)) and len(TOKENIZER) == 157 <= CFG.text.vocab_size
    full = qwen2_test_tokenizer(omni_configs.get_config("7b").model)
    assert ids(full, specials) == list(range(151643, 151653))  # Qwen2's and llava-hf's real ids
    assert check_tokenizer(TOKENIZER, CFG) == 149
    with pytest.raises(ValueError, match="add_special_tokens"):
        check_tokenizer(word_tokenizer(147), CFG)


def test_ids_equal_the_rendered_template_and_labels_the_assistant_turns():
    example = tokenize_conversation(MULTI_TURN, TOKENIZER, CFG, max_length=512)
    messages = [{"role": ROLE[t["from"]], "content": t["value"]} for t in MULTI_TURN]
    text = TOKENIZER.apply_chat_template(messages, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<video>\n")
    rendered = TOKENIZER(text.replace("<video>", block_text(CFG)), add_special_tokens=False)["input_ids"]
    ids, labels = oracle(MULTI_TURN)
    assert example.input_ids.tolist() == rendered == ids
    assert example.labels.tolist() == labels
    assert example.input_ids.dtype == example.labels.dtype == np.int32
    assert not example.truncated and example.multimodal
    # Labelled: exactly both answers' words and one <|im_end|> each, nothing else.
    labelled = example.labels[example.labels != IGNORE].tolist()
    assert labelled == [*range(20, 27), 149, *range(40, 44), 1, 50, 51, 149]  # 1 = "\n" inside the answer
    counts = placeholder_counts(CFG)
    assert (example.input_ids == CFG.video_token_id).sum() == counts["video"] == 2 * (4 + 9) + 1
    assert (example.input_ids == CFG.audio_token_id).sum() == counts["audio"] == 2 * 10
    block = multimodal_prompt_ids(CFG)
    start = int(np.flatnonzero(example.input_ids == CFG.vi_start_token_id)[0])
    np.testing.assert_array_equal(example.input_ids[start:start + len(block)], block)


def test_byte_level_bpe_with_non_ascii_text():
    """Qwen2-like byte-level BPE: tokens that split a character (é, 😀) share its offsets, merges
    span words; ids and labels still equal the template's and the turn-by-turn oracle's."""
    conversations = conversation("Regarde <video>\nÇa va? 😀", " très bien 😀\n\nmerci.", "Pourquoi?",
                                 "Il sourit — 😀😀, voilà.")
    tokenizer = byte_bpe_tokenizer([t["value"] for t in conversations] + ["You are a helpful assistant."] * 3)
    cfg = omni_configs.get_config("tiny").model
    first = tokenizer.convert_tokens_to_ids("<image>")
    cfg.update(dict(zip(("image_token_id", "video_token_id", "audio_token_id", "vi_start_token_id",
                         "vi_end_token_id", "au_start_token_id", "au_end_token_id"), range(first, first + 7))))
    add_special_tokens(tokenizer, cfg)
    example = tokenize_conversation(conversations, tokenizer, cfg, max_length=512)
    messages = [{"role": ROLE[t["from"]], "content": t["value"]} for t in conversations]
    text = tokenizer.apply_chat_template(messages, tokenize=False).replace("<video>", block_text(cfg))
    ids, labels = oracle(conversations, cfg, tokenizer)
    assert example.input_ids.tolist() == tokenizer(text, add_special_tokens=False)["input_ids"] == ids
    assert example.labels.tolist() == labels
    answers = tokenizer.decode(example.labels[example.labels != IGNORE])
    assert answers == " très bien 😀\n\nmerci.<|im_end|>Il sourit — 😀😀, voilà.<|im_end|>"


def test_system_turn_replaces_the_default_and_video_may_follow_in_a_later_turn():
    conversations = [{"from": "system", "value": "w60 w61"}, *conversation(words(10, 2), words(20, 2),
                                                                            "w30 <video> w31", words(40, 3))]
    example = tokenize_conversation(conversations, TOKENIZER, CFG, max_length=512)
    ids, labels = oracle(conversations)
    assert example.input_ids.tolist() == ids and example.labels.tolist() == labels
    assert example.input_ids[:4].tolist() == [148, 3, 1, 60]  # <|im_start|>system\nw60, no default prompt


def test_text_only_example():
    conversations = conversation(words(10, 3), words(20, 4))
    example = tokenize_conversation(conversations, TOKENIZER, CFG, max_length=64, blocks=())
    ids, labels = oracle(conversations)
    assert example.input_ids.tolist() == ids and example.labels.tolist() == labels and not example.multimodal


def test_truncation_cuts_text_from_the_end_never_the_block():
    full = tokenize_conversation(MULTI_TURN, TOKENIZER, CFG, max_length=512)
    labelled = np.flatnonzero(full.labels != IGNORE)
    block_end = int(np.flatnonzero(full.input_ids == CFG.au_end_token_id)[0]) + 1
    assert not tokenize_conversation(MULTI_TURN, TOKENIZER, CFG, max_length=len(full.input_ids)).truncated
    for max_length in (len(full.input_ids) - 1, int(labelled[3]), int(labelled[0]) + 1):
        cut = tokenize_conversation(MULTI_TURN, TOKENIZER, CFG, max_length=max_length)
        assert cut.truncated and len(cut.input_ids) == max_length
        np.testing.assert_array_equal(cut.input_ids, full.input_ids[:max_length])
        np.testing.assert_array_equal(cut.labels, full.labels[:max_length])
        assert (cut.input_ids == CFG.video_token_id).sum() == placeholder_counts(CFG)["video"]
    for max_length in (int(labelled[0]), block_end):  # every assistant token cut
        with pytest.raises(ExampleError, match="no assistant token within max_length") as error:
            tokenize_conversation(MULTI_TURN, TOKENIZER, CFG, max_length=max_length)
        assert error.value.reason == "no_assistant_turn"
    with pytest.raises(ExampleError, match=f"ends at token {block_end}") as error:
        tokenize_conversation(MULTI_TURN, TOKENIZER, CFG, max_length=block_end - 1)
    assert error.value.reason == "too_long"


BAD = {  # case: (reason, message fragment, conversations, video)
    "not a list": ("bad_conversation", "non-empty list", {"from": "human", "value": "<video>"}, True),
    "empty": ("bad_conversation", "non-empty list", [], True),
    "missing value": ("bad_conversation", "turn 0 (human) has no text", [{"from": "human"}], True),
    "blank value": ("bad_conversation", "turn 1 (gpt) has no text", conversation("<video> w10", "  "), True),
    "unknown role": ("bad_conversation", "turn 0 is not", [{"from": "bot", "value": "<video>"}], True),
    "gpt first": ("bad_conversation", "must alternate", conversation("w10", "<video> w11")[::-1], True),
    "two humans": ("bad_conversation", "must alternate", [*conversation("<video>"), *conversation("w10", "w11")], True),
    "system later": (
        "bad_conversation",
        "must alternate",
        [*conversation("<video>", "w10"), {"from": "system", "value": "w11"}],
        True,
    ),
    "no video": (
        "bad_conversation",
        "expected one <video> or <audio> in a human turn, found markers in no turns",
        conversation("w10", "w11"),
        True,
    ),
    "two videos": (
        "bad_conversation",
        "found markers in ['user', 'user']",
        conversation("<video> w10 <video>", "w11"),
        True,
    ),
    "video in gpt turn": (
        "bad_conversation",
        "found markers in ['assistant']",
        conversation("w10", "<video> w11"),
        True,
    ),
    "video in text-only": (
        "bad_conversation",
        "expected no <video> or <audio>",
        conversation("<video> w10", "w11"),
        False,
    ),
    "two markers": (
        "bad_conversation",
        "found markers in ['user', 'user']",
        conversation("<video> <audio>", "w11"),
        True,
    ),
    "modality token beside the marker": (
        "bad_conversation",
        "tokens [151, 155]; expected only the one <video> or <audio>",
        conversation("<video> <au_start>", "w11"),
        True,
    ),
    "image token text": (
        "bad_conversation",
        "tokens [151, 150]; expected only",
        conversation("<video> w10", "<image>"),
        True,
    ),
    "modality token text": (
        "bad_conversation",
        "tokens [153]; expected none (text-only)",
        conversation("w10 <vi_start>", "w11"),
        False,
    ),
    "human only": ("no_assistant_turn", "no gpt turn", conversation("<video> w10"), True),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_conversations_raise_their_reason_naming_the_example(case):
    reason, message, conversations, video = BAD[case]
    with pytest.raises(ExampleError) as error:
        tokenize_conversation(conversations, TOKENIZER, CFG, max_length=512, blocks=BLOCKS if video else (),
                              name="clip-7 (a/b.mp4)")
    assert error.value.reason == reason
    assert str(error.value).startswith("clip-7 (a/b.mp4): ") and message in str(error.value)


def example(length: int, video: bool = False) -> TokenizedExample:
    """A tokenized example of exactly `length` tokens (the answer's length fills it)."""
    base = len(tokenize_conversation(conversation("w10", "w11"), TOKENIZER, CFG, 512, blocks=()).input_ids)
    tokens = tokenize_conversation(conversation("w10", words(11, length - base + 1)), TOKENIZER, CFG, 512,
                                   blocks=())
    assert len(tokens.input_ids) == length
    return TokenizedExample(tokens.input_ids, tokens.labels, False, video)


def assert_model_positions(row):
    """position_ids agree with what the model derives from attention_mask (on real tokens)."""
    real = row["attention_mask"] != 0
    derived = np.asarray(positions_from_mask(row["attention_mask"][None]))[0]
    np.testing.assert_array_equal(row["position_ids"][real], derived[real])


def test_pad_to_bucket():
    buckets = (32, 64, 128)
    for length, bucket in ((25, 32), (32, 32), (33, 64), (100, 128)):
        ex = example(length)
        row = pad_to_bucket(ex, buckets, PAD)
        assert {k: v.shape for k, v in row.items()} == dict.fromkeys(
            ("input_ids", "labels", "attention_mask", "position_ids"), (bucket,))
        np.testing.assert_array_equal(row["input_ids"], np.r_[ex.input_ids, [PAD] * (bucket - length)])
        np.testing.assert_array_equal(row["labels"], np.r_[ex.labels, [IGNORE] * (bucket - length)])
        np.testing.assert_array_equal(row["attention_mask"], np.r_[[1] * length, [0] * (bucket - length)])
        assert_model_positions(row)
    with pytest.raises(ValueError, match="exceeds the largest bucket 128"):
        pad_to_bucket(example(129), buckets, PAD)


def test_pack_examples_first_fit_with_segments_positions_and_no_cross_segment_targets():
    lengths = (40, 30, 25, 23, 64)
    examples = [example(n) for n in lengths]
    rows = pack_examples(examples, 64, PAD)
    # First fit: 40 | 30 (no room after 40) | 25 → with 30 (24 left after 40) | 23 → after 40 | 64 alone.
    layout = [[0, 3], [1, 2], [4]]
    assert len(rows) == len(layout)
    for row, members in zip(rows, layout):
        segments = np.concatenate([np.full(lengths[m], s, np.int32) for s, m in enumerate(members, 1)])
        pad = 64 - len(segments)
        np.testing.assert_array_equal(row["attention_mask"], np.r_[segments, np.zeros(pad, np.int32)])
        np.testing.assert_array_equal(row["position_ids"], np.concatenate(
            [np.arange(lengths[m]) for m in members] + [np.zeros(pad, np.int32)]))
        assert_model_positions(row)
        np.testing.assert_array_equal(row["input_ids"], np.concatenate(
            [examples[m].input_ids for m in members] + [np.full(pad, PAD, np.int32)]))
        # Next-token targets of the packed row = each example's own, then IGNORE on the padding.
        targets = np.asarray(next_token_targets(row["labels"][None]))[0]
        own = [np.asarray(next_token_targets(examples[m].labels[None]))[0] for m in members]
        np.testing.assert_array_equal(targets, np.concatenate(own + [np.full(pad, IGNORE)]))
        assert all(v.dtype == np.int32 for v in row.values())
    with pytest.raises(ValueError, match="text-only"):
        pack_examples([example(30, video=True)], 64, PAD)
    with pytest.raises(ValueError, match="65 tokens"):
        pack_examples([example(65)], 64, PAD)


def test_full_size_example_tokenizes_exactly():
    """7B config: 8 frames × (196 visual + 196 face) + 1 = 3137 video and 500 audio placeholders,
    a 100-word question and answer, Qwen2's real special-token ids. (Its speed is a benchmark's
    to measure: experiments/bench_data.py's "tokens" stage, not a timed test.)"""
    cfg = omni_configs.get_config("7b").model
    tokenizer = qwen2_test_tokenizer(cfg)
    conversations = conversation(f"<video>\n{words(1000, 50)} .", words(2000, 50))
    example = tokenize_conversation(conversations, tokenizer, cfg, max_length=4096)
    ids, labels = oracle(conversations, cfg, tokenizer)
    assert example.input_ids.tolist() == ids and example.labels.tolist() == labels
    assert (example.input_ids == cfg.video_token_id).sum() == 3137
    assert (example.input_ids == cfg.audio_token_id).sum() == 500

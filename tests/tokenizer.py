"""Tokenizers the tests build themselves (the `tokenizers` library, nothing downloaded) with
Qwen2-Instruct's special tokens and chat template, laid out like llava-hf's Qwen2 tokenizer."""
from __future__ import annotations

import functools

import ml_collections
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from omni_jax.modality_tokens import add_special_tokens
from omni_jax.synth import tokenizer as word_level
from omni_jax.synth.tokenizer import LLAVA_SPECIAL, QWEN2_SPECIAL, with_qwen2_specials

# Qwen2's tokenizer.json pre-tokenizer split (then byte-level, no regex of its own).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")


def word_tokenizer(words: int) -> PreTrainedTokenizerFast:
    """The package's word-level tokenizer with `words` entries named "w{i}" (after [UNK] and
    the template's words) before the special tokens: word i has id i."""
    return word_level.word_tokenizer((), words)


def byte_bpe_tokenizer(corpus: list[str], merges: int = 64) -> PreTrainedTokenizerFast:
    """A byte-level BPE like Qwen2's (NFC, Qwen2's split regex, byte-level alphabet): ids 0…255
    bytes, then up to `merges` merges learned from `corpus`, then with_qwen2_specials' tokens."""
    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_SPLIT), "isolated"),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256 + merges, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    backend.train_from_iterator(corpus, trainer)
    return with_qwen2_specials(backend)


@functools.cache
def _tokenizer(words: int, ids: tuple[tuple[str, int], ...]) -> PreTrainedTokenizerFast:
    tokenizer = word_tokenizer(words)
    add_special_tokens(tokenizer, ml_collections.ConfigDict(dict(ids)))
    return tokenizer


def qwen2_test_tokenizer(cfg: ml_collections.ConfigDict) -> PreTrainedTokenizerFast:
    """word_tokenizer with <image>, <video> at the config's image/video ids (words =
    image_token_id − 3) and Omni-Emotion's five tokens added (`add_special_tokens`), at the
    config's ids: tiny → 157 entries, 7b → 151653 (Qwen2's real special-token ids). Built once
    per config and shared: do not modify it."""
    fields = ("image_token_id", "video_token_id", "audio_token_id", "vi_start_token_id", "vi_end_token_id",
              "au_start_token_id", "au_end_token_id")
    tokenizer = _tokenizer(cfg.image_token_id - len(QWEN2_SPECIAL), tuple((f, cfg[f]) for f in fields))
    got = tokenizer.convert_tokens_to_ids(list(LLAVA_SPECIAL))
    if got != [cfg.image_token_id, cfg.video_token_id] or len(tokenizer) > cfg.text.vocab_size:
        raise ValueError(f"<image>, <video> got {got} (config: {cfg.image_token_id}, {cfg.video_token_id}); "
                         f"{len(tokenizer)} tokens for a vocabulary of {cfg.text.vocab_size}")
    return tokenizer

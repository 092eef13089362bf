"""Tokenizers the tests build themselves (the `tokenizers` library, nothing downloaded) with
Qwen2-Instruct's special tokens and chat template, laid out like llava-hf's Qwen2 tokenizer."""
from __future__ import annotations

import functools

import ml_collections
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from omni_jax.prompt import add_special_tokens

# Qwen2-7B-Instruct's tokenizer_config.json "chat_template", verbatim.
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# The words the template itself writes, so that rendered headers are not [UNK].
TEMPLATE_WORDS = ("\n", ".", "system", "user", "assistant", "You", "are", "a", "helpful")
QWEN2_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # Qwen2: 151643, 151644, 151645
LLAVA_SPECIAL = ("<image>", "<video>")  # llava-hf: 151646, 151647
# Qwen2's tokenizer.json pre-tokenizer split (then byte-level, no regex of its own).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")


def with_qwen2_specials(backend: Tokenizer, **kwargs) -> PreTrainedTokenizerFast:
    """`backend` wrapped for transformers, then <|endoftext|>, <|im_start|>, <|im_end|>, <image>,
    <video> appended (Qwen2's order) and Qwen2-Instruct's chat template, eos and pad tokens."""
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)
    tokenizer.add_tokens([*QWEN2_SPECIAL, *LLAVA_SPECIAL], special_tokens=True)
    tokenizer.eos_token, tokenizer.pad_token = "<|im_end|>", "<|endoftext|>"
    tokenizer.chat_template = QWEN2_CHAT_TEMPLATE
    return tokenizer


def word_tokenizer(words: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer of `words` entries: [UNK] = 0, TEMPLATE_WORDS = 1…9, "w{i}" = i for
    10 ≤ i < words; then <|endoftext|>, <|im_start|>, <|im_end|>, <image>, <video> at ids
    words … words + 4 (Qwen2's order), and Qwen2-Instruct's chat template.

    Pre-tokenization drops spaces and keeps "\\n" and punctuation as tokens, so the template's
    newlines are real tokens as in Qwen2's byte-level BPE."""
    vocab = {token: i for i, token in enumerate(("[UNK]", *TEMPLATE_WORDS))}
    vocab.update({f"w{i}": i for i in range(len(vocab), words)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(" ", "removed"), pre_tokenizers.Split("\n", "isolated"),
        pre_tokenizers.Punctuation("isolated")])
    return with_qwen2_specials(backend, unk_token="[UNK]")


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

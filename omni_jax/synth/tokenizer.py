"""Word-level tokenizers laid out like llava-hf's Qwen2 tokenizer (the `tokenizers` library,
nothing downloaded): for models trained from scratch on a small closed vocabulary (the demo's
synthetic data, the tests).

Ids: [UNK] = 0, the words Qwen2-Instruct's chat template writes, the given words, fillers up to
`size`; then <|endoftext|>, <|im_start|>, <|im_end|>, <image>, <video> (Qwen2's order) and the
template itself, so `apply_chat_template` renders prompts as the 7B's tokenizer does.
"""
from __future__ import annotations

from typing import Sequence

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from omni_jax.errors import InputError

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


def with_qwen2_specials(backend: Tokenizer, **kwargs) -> PreTrainedTokenizerFast:
    """`backend` wrapped for transformers, then <|endoftext|>, <|im_start|>, <|im_end|>, <image>,
    <video> appended (Qwen2's order) and Qwen2-Instruct's chat template, eos and pad tokens."""
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)
    tokenizer.add_tokens([*QWEN2_SPECIAL, *LLAVA_SPECIAL], special_tokens=True)
    tokenizer.eos_token, tokenizer.pad_token = "<|im_end|>", "<|endoftext|>"
    tokenizer.chat_template = QWEN2_CHAT_TEMPLATE
    return tokenizer


def word_tokenizer(words: Sequence[str], size: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer of `size` entries before the special tokens: [UNK] = 0,
    TEMPLATE_WORDS = 1…9, `words` (those not among them) next, then fillers "w{i}" = i up to
    `size`; <|endoftext|> … <video> at ids size … size + 4.

    Pre-tokenization drops spaces and keeps "\\n" and punctuation as tokens, so the template's
    newlines are real tokens as in Qwen2's byte-level BPE; unknown words decode as [UNK]."""
    vocab = {token: i for i, token in enumerate(("[UNK]", *TEMPLATE_WORDS))}
    for word in words:
        vocab.setdefault(word, len(vocab))
    if len(vocab) > size:
        raise InputError(f"{len(vocab)} words do not fit a vocabulary of {size} entries before the special tokens")
    vocab.update({f"w{i}": i for i in range(len(vocab), size)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(" ", "removed"), pre_tokenizers.Split("\n", "isolated"),
        pre_tokenizers.Punctuation("isolated")])
    return with_qwen2_specials(backend, unk_token="[UNK]")

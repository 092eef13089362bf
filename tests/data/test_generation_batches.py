"""Prompt batches for generation: every manifest line once over the processes (the last partial
batch included), equal batch counts, left padding, skips kept as rows, references split off."""
import json

import numpy as np
import pytest

from omni_jax.configs import omni_emotion
from omni_jax.data import generation_batches, text
from omni_jax.modality_tokens import placeholder_counts
from tests import media
from tests.tokenizer import qwen2_test_tokenizer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompts")
    media.write_clip(root / "a.mp4", seconds=0.6, fps=10, size=(64, 48), face=True)
    cfg = omni_emotion.get_config("tiny")
    cfg.data.workers = 0
    lines = [{"id": "clip", "video": "a.mp4", "label": "w20"},
             {"id": "asked", "conversations": [{"from": "human", "value": "w12 w13 ?"},
                                               {"from": "gpt", "value": "w30 ."}]},
             "{not json",
             {"id": "gone", "video": "missing.mp4", "label": "w21"}]
    lines += [{"id": f"t{i}", "conversations": [{"from": "human", "value": f"w1{i} ?"}]} for i in range(5)]
    manifest = root / "m.jsonl"
    manifest.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return cfg, qwen2_test_tokenizer(cfg.model), manifest, len(lines)


@pytest.mark.parametrize("processes,batch", [(1, 4), (2, 2), (3, 2)])
def test_every_line_once_over_the_processes(setup, processes, batch):
    cfg, tokenizer, manifest, count = setup
    seen, batches = [], []
    for index in range(processes):
        out = list(
            generation_batches.prompt_batches(
                manifest, tokenizer, cfg, batch, modalities="v,f", question="w15 ?", process=(index, processes)
            )
        )
        batches.append(len(out))
        for arrays, rows in out:
            assert arrays["input_ids"].shape[0] == len(rows) == batch
            seen += [row.line for row in rows if not row.padding]
    assert len(set(batches)) == 1 and batches[0] == generation_batches.batch_count(count, processes, batch)
    assert sorted(seen) == list(range(1, count + 1))


def test_rows_are_left_padded_prompts_with_their_references(setup):
    cfg, tokenizer, manifest, count = setup
    (arrays, rows), = generation_batches.prompt_batches(manifest, tokenizer, cfg, count + 1, modalities="v,f",
                                             question="w15 ?", process=(0, 1))
    by_id = {row.id: (i, row) for i, row in enumerate(rows) if not row.padding}
    mask, ids = arrays["attention_mask"], arrays["input_ids"]
    for i, row in by_id.values():
        real = mask[i].astype(bool)
        if row.skip:
            assert not real.any() and not arrays["has_video"][i]
            continue
        assert real[-1] and (np.diff(real.astype(int)) >= 0).all()  # padding only on the left
        header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        assert ids[i, -len(header):].tolist() == header
    assert {row.skip for _, row in by_id.values()} == {None, "malformed_json", "missing_file"}
    clip_row, clip = by_id["clip"]
    assert clip.question == "w15 ?" and clip.extra == {"label": "w20"} and clip.reference is None
    assert (ids[clip_row] == cfg.model.video_token_id).sum() == placeholder_counts(cfg.model)["video"]
    assert (ids[clip_row] == cfg.model.audio_token_id).sum() == 0  # v,f: no audio block
    assert arrays["has_video"][clip_row] and arrays["has_face"][clip_row] and "input_features" not in arrays
    _, asked = by_id["asked"]
    assert asked.question == "w12 w13 ?" and asked.reference == "w30 ."
    assert rows[-1].padding and not mask[-1].any()


def test_the_prompt_is_the_training_text_up_to_the_answer(setup):
    cfg, tokenizer, _, _ = setup
    conversation = [{"from": "human", "value": "<video>\nw12 ?"}, {"from": "gpt", "value": "w30 ."}]
    trained = text.tokenize_conversation(conversation, tokenizer, cfg.model, 192)
    prompt = text.tokenize_prompt(conversation[:1], tokenizer, cfg.model, 192)
    answer_start = int(np.flatnonzero(trained.labels != -100)[0])
    np.testing.assert_array_equal(prompt, trained.input_ids[:answer_start])
    with pytest.raises(text.ExampleError, match="ends with a human turn"):
        text.tokenize_prompt(conversation, tokenizer, cfg.model, 192)
    with pytest.raises(text.ExampleError, match="too_long|beyond"):
        text.tokenize_prompt(conversation[:1], tokenizer, cfg.model, 20)

"""The input pipeline on real media the tests write: shapes of the tiny model, order, sharding,
resume-exactness through worker processes, skips counted by reason, global arrays, data-check."""
import json
import logging

import grain
import numpy as np
import pytest
from etils import epath

from omni_jax import cli
from omni_jax.configs import omni_emotion
from omni_jax.data import audio, faces, pipeline, video
from omni_jax.modality_tokens import IGNORE, placeholder_counts
from omni_jax.sharding import make_mesh
from tests import media
from tests.tokenizer import qwen2_test_tokenizer

REASONS_WRITTEN = ("missing_file", "empty_file", "corrupt_video", "truncated_video", "no_video_stream",
                   "unreadable_audio", "malformed_json", "bad_conversation", "no_assistant_turn", "too_long")


def tiny(**data):
    cfg = omni_emotion.get_config("tiny")
    cfg.data.update({"batch_size": 4, "workers": 0, "epochs": 1, "min_examples": 1000, **data})
    return cfg


def turns(answer=20, question="w10 w11", video=True):
    return [{"from": "human", "value": ("<video>\n" if video else "") + question},
            {"from": "gpt", "value": answer if isinstance(answer, str) else f"w{answer}"}]


def write_manifest(path, entries):
    path.write_text("".join((e if isinstance(e, str) else json.dumps(e)) + "\n" for e in entries))
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    good = media.write_clip(root / "good.mp4", seconds=1.0, fps=10, size=(64, 48), faststart=True)
    return {"root": root, "good": good,
            "face": media.write_clip(root / "face.mp4", seconds=0.5, fps=8, size=(128, 192), face=True, audio=False),
            "silent": media.write_clip(root / "silent.mp4", seconds=0.6, fps=15, size=(48, 64), codec="mpeg4",
                                       audio=False),
            "empty": media.write_empty(root / "empty.mp4"),
            "corrupt": media.write_corrupt(root / "corrupt.mp4"),
            "truncated": media.write_truncated(root / "truncated.mp4", good, 0.2),
            "tone": media.write_audio(root / "tone.m4a", media.tone(440.0, 1.0, 16000), 16000),
            "noise": media.write_corrupt(root / "noise.wav", seed=1)}


@pytest.fixture(scope="module")
def bad_manifest(clips):
    """One example per skip reason, plus four good ones (one truncated, one silent, one text-only)."""
    words = " ".join(f"w{i}" for i in range(10, 160))
    return write_manifest(clips["root"] / "mixed.jsonl", [
        {"id": "ok", "video": "good.mp4", "conversations": turns()},
        {"id": "missing", "video": "absent.mp4", "conversations": turns()},
        {"id": "empty", "video": "empty.mp4", "conversations": turns()},
        {"id": "corrupt", "video": "corrupt.mp4", "conversations": turns()},
        {"id": "truncated", "video": "truncated.mp4", "conversations": turns()},
        {"id": "audio-only", "video": "tone.m4a", "conversations": turns()},
        {"id": "bad-audio", "video": "good.mp4", "audio": "noise.wav", "conversations": turns()},
        '{"id": "broken", "video": "good.mp4", "conversations": [',
        {"id": "no-placeholder", "video": "good.mp4", "conversations": turns(video=False)},
        {"id": "no-answer", "video": "good.mp4", "conversations": turns()[:1]},
        {"id": "too-long", "video": "good.mp4",  # the block would end beyond the largest bucket
         "conversations": [{"from": "human", "value": words + "\n<video>"}, {"from": "gpt", "value": "w20"}]},
        {"id": "long-answer", "video": "good.mp4", "conversations": turns(answer=words)},
        {"id": "silent", "video": "silent.mp4", "conversations": turns()},
        {"id": "text-only", "conversations": turns(video=False)},
    ])


def test_batches_have_the_tiny_model_shapes_and_contents(clips):
    cfg = tiny()
    tokenizer = qwen2_test_tokenizer(cfg.model)
    boxes = [[10, 4, 40, 30], None]
    manifest = write_manifest(clips["root"] / "e2e.jsonl", [
        {"id": "a", "video": "good.mp4", "faces": boxes, "conversations": turns(21)},
        {"id": "b", "video": str(clips["face"]), "faces": None, "conversations": turns(22)},
        {"id": "c", "video": "silent.mp4", "audio": None, "conversations": turns(23)},
        {"id": "d", "conversations": turns(24, video=False)},
    ])
    batches = iter(pipeline.make_pipeline(manifest, tokenizer, cfg, shuffle=False))
    batch = next(batches)
    shapes = {k: (v.shape, v.dtype.name) for k, v in batch.items()}
    assert shapes == {"input_ids": ((4, 96), "int32"), "labels": ((4, 96), "int32"),
                      "attention_mask": ((4, 96), "int32"), "position_ids": ((4, 96), "int32"),
                      "pixel_values_videos": ((4, 2, 56, 56, 3), "float32"),
                      "face_pixels": ((4, 2, 96, 96, 3), "float32"),
                      "input_features": ((4, 2, 80, 60), "float32"),
                      "has_video": ((4,), "bool"), "has_face": ((4,), "bool"), "has_audio": ((4,), "bool")}
    counts = placeholder_counts(cfg.model)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    for row in range(4):  # each clip's row holds the whole block; the text-only row (3) none
        assert (
            (ids[row] == cfg.model.video_token_id).sum()
            == (counts["video"] if row < 3 else 0)
            == (27 if row < 3 else 0)
        )
        assert (
            (ids[row] == cfg.model.audio_token_id).sum()
            == (counts["audio"] if row < 3 else 0)
            == (20 if row < 3 else 0)
        )
        for field in ("vi_start_token_id", "vi_end_token_id", "au_start_token_id", "au_end_token_id"):
            assert (ids[row] == cfg.model[field]).sum() == int(row < 3)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    labelled = [labels[row][labels[row] != IGNORE].tolist() for row in range(4)]
    assert labelled == [[21, im_end], [22, im_end], [23, im_end], [24, im_end]]  # the answer and its <|im_end|>
    assert np.all((labels == IGNORE) | (labels == ids)) and np.all(labels[mask == 0] == IGNORE)
    assert np.all(ids[mask == 0] == tokenizer.pad_token_id) and mask.sum(1).max() <= 96 < mask.sum(1).max() + 32
    assert batch["has_video"].tolist() == [True, True, True, False]
    assert batch["has_face"].tolist() == [True, True, True, False]
    assert batch["has_audio"].tolist() == [True, False, False, False]

    frames = video.load_frames(clips["good"], 2).frames  # row 0 is exactly the modules' composition
    np.testing.assert_array_equal(batch["pixel_values_videos"][0], video.preprocess_frames(frames, 56))
    np.testing.assert_array_equal(batch["face_pixels"][0], faces.face_crops(frames, boxes, 96).pixel_values)
    np.testing.assert_array_equal(batch["input_features"][0],
                                  audio.load_audio_features(clips["good"], 80, 2, 60).features)
    face_frames = video.load_frames(clips["face"], 2).frames  # row 1: boxes from the face detector
    detected = video.detect_faces(face_frames)
    assert all(box is not None for box in detected)
    np.testing.assert_array_equal(batch["face_pixels"][1], faces.face_crops(face_frames, detected, 96).pixel_values)
    assert not batch["input_features"][1:].any() and not batch["pixel_values_videos"][3].any()
    assert not batch["face_pixels"][3].any()
    assert batches.counts == {"seen": 4, "ok": 4, "skipped": {}, "truncated": 0, "face_fallback": 1,  # c: no face
                              "face_detected": 2,  # b and c: no boxes in the manifest
                              "audio_damaged": 0, "audio_empty": 0, "audio_cut": 0, "has_video": 3, "has_face": 3,
                              "has_audio": 1}

    arrays = pipeline.global_batch(batch, make_mesh(2, 2, 2), tokenizer.pad_token_id)
    for key, value in arrays.items():
        assert value.shape == batch[key].shape and value.sharding.spec[0] == ("data", "fsdp")
        for shard in value.addressable_shards:  # each (data, fsdp) coordinate holds one row
            assert shard.data.shape[0] == 1
            np.testing.assert_array_equal(np.asarray(shard.data), batch[key][shard.index])
        np.testing.assert_array_equal(pipeline.host_rows(value), batch[key])  # the rows back, replicas once


def test_every_bad_input_is_skipped_counted_and_logged_once(bad_manifest, caplog):
    cfg = tiny(batch_size=1, epochs=2)
    caplog.set_level(logging.WARNING, logger=pipeline.__name__)
    batches = iter(pipeline.make_pipeline(bad_manifest, qwen2_test_tokenizer(cfg.model), cfg, shuffle=False,
                                          drop_remainder=False))
    got = [int(b["labels"][b["labels"] != IGNORE][0]) for b in batches]
    assert len(got) == 2 * 4
    counts = batches.counts
    assert counts["skipped"] == {reason: 2 for reason in REASONS_WRITTEN}  # both epochs
    assert (counts["seen"], counts["ok"], counts["truncated"]) == (28, 8, 2)
    assert (counts["has_video"], counts["has_face"], counts["has_audio"]) == (6, 6, 4)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 10  # once per example, not once per epoch
    names = {"missing": "absent.mp4", "empty": "empty.mp4", "corrupt": "corrupt.mp4", "truncated": "truncated.mp4",
             "audio-only": "tone.m4a", "bad-audio": "noise.wav", "mixed.jsonl:8": "mixed.jsonl:8",
             "no-placeholder": "mixed.jsonl:9", "no-answer": "mixed.jsonl:10", "too-long": "mixed.jsonl:11"}
    for reason, (example, file) in zip(REASONS_WRITTEN, names.items()):  # the id, the reason and the file
        line = next(m for m in messages if f"({reason})" in m)
        assert line.startswith(f"skipped {example} ({reason}): ") and file in line, line


def test_too_many_skips_stop_the_run(bad_manifest):
    cfg = tiny(batch_size=1, min_examples=6, max_skip_fraction=0.5)
    batches = iter(pipeline.make_pipeline(bad_manifest, qwen2_test_tokenizer(cfg.model), cfg, shuffle=False))
    with pytest.raises(pipeline.TooManySkipsError, match=r"5 of 6 examples skipped \(83% > max_skip_fraction 50%\)"):
        list(batches)


def _text_manifest(path, count, extra=()):
    return write_manifest(path, [{"id": f"t{i}", "conversations": turns(30 + i, video=False)}
                                 for i in range(count)] + list(extra))


def _answers(batch):
    return [int(row[row != IGNORE][0]) - 30 for row in batch["labels"]]


def test_shards_are_disjoint_and_cover_the_manifest(tmp_path):
    cfg = tiny(batch_size=1)
    manifest, tokenizer = _text_manifest(tmp_path / "m.jsonl", 10), qwen2_test_tokenizer(cfg.model)

    def shard(index, drop):
        options = grain.sharding.ShardOptions(shard_index=index, shard_count=3, drop_remainder=drop)
        ds = pipeline.make_pipeline(manifest, tokenizer, cfg, shard=options)
        return [a for batch in ds for a in _answers(batch)]

    equal = [shard(i, True) for i in range(3)]
    assert [len(s) for s in equal] == [3, 3, 3]  # equal steps on every host
    assert len(set().union(*equal)) == 9 and set().union(*equal) <= set(range(10))
    uneven = [shard(i, False) for i in range(3)]
    assert sorted(a for s in uneven for a in s) == list(range(10))


def test_hosts_batches_together_are_the_single_process_batch(tmp_path):
    """3 hosts × batch 2 take, step by step, the examples one process takes in batches of 6
    (over 2 epochs), so a run's data does not depend on its host count."""
    manifest, tokenizer = _text_manifest(tmp_path / "m.jsonl", 10), qwen2_test_tokenizer(tiny().model)

    def steps(batch_size, index, count):
        cfg = tiny(batch_size=batch_size, epochs=2)
        options = grain.sharding.ShardOptions(shard_index=index, shard_count=count, drop_remainder=True)
        return [sorted(_answers(batch)) for batch in pipeline.make_pipeline(manifest, tokenizer, cfg, shard=options)]

    single = steps(6, 0, 1)
    hosts = [steps(2, index, 3) for index in range(3)]
    assert len(single) == 3 and all(len(h) == 3 for h in hosts)
    assert [sorted(sum((h[k] for h in hosts), [])) for k in range(3)] == single


def test_shuffle_is_seeded_and_new_each_epoch(tmp_path):
    manifest = _text_manifest(tmp_path / "m.jsonl", 10)

    def order(seed):
        cfg = tiny(batch_size=1, epochs=2, seed=seed)
        return [a for batch in pipeline.make_pipeline(manifest, qwen2_test_tokenizer(cfg.model), cfg) for a in
                _answers(batch)]

    first = order(0)
    assert sorted(first[:10]) == sorted(first[10:]) == list(range(10)) and first[:10] != first[10:]
    assert order(0) == first and order(1) != first


def test_resumed_iterator_sees_exactly_the_same_batches_through_workers(tmp_path):
    cfg = tiny(batch_size=2, epochs=2, workers=1, prefetch=2)
    manifest = _text_manifest(tmp_path / "m.jsonl", 9, extra=['{"id": "x", "conversations": ['])
    tokenizer = qwen2_test_tokenizer(cfg.model)
    first = iter(pipeline.make_pipeline(manifest, tokenizer, cfg))
    before = [next(first) for _ in range(2)]
    state = json.loads(json.dumps(first.get_state()))  # plain JSON: it checkpoints with the train state
    after = [next(first) for _ in range(4)]
    resumed = iter(pipeline.make_pipeline(manifest, tokenizer, cfg))
    resumed.set_state(state)
    again = [next(resumed) for _ in range(4)]
    for want, got in zip(after, again):
        assert want.keys() == got.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    assert resumed.counts == first.counts and first.counts["ok"] == 12  # 6 batches of 2
    assert first.counts["seen"] - 12 == first.counts["skipped"]["malformed_json"] >= 1  # epoch 1 was all read
    epoch_one = [a for b in before + after[:2] for a in _answers(b)]  # 8 of the 9 examples, shuffled
    assert len(set(epoch_one)) == 8 and set(epoch_one) < set(range(9)) and epoch_one != sorted(epoch_one)


def test_bucket_and_repad():
    assert [pipeline.bucket_length(n, (96, 128, 192)) for n in ([5, 90], [96], [97, 3], [192])] == [96, 96, 128, 192]
    with pytest.raises(ValueError, match="exceeds the largest bucket 192"):
        pipeline.bucket_length([193], (96, 128, 192))
    batch = {"input_ids": np.ones((2, 3), np.int32), "labels": np.ones((2, 3), np.int32),
             "attention_mask": np.ones((2, 3), np.int32), "has_video": np.ones(2, bool)}
    out = pipeline.repad(batch, 5, pad_id=7)
    assert out["input_ids"][:, 3:].tolist() == [[7, 7]] * 2 and out["labels"][:, 3:].tolist() == [[IGNORE] * 2] * 2
    assert out["attention_mask"][:, 3:].sum() == 0 and out["has_video"] is batch["has_video"]


def test_data_check_cli_counts_every_reason(bad_manifest, tmp_path, capsys):
    cfg = tiny()
    qwen2_test_tokenizer(cfg.model).save_pretrained(tmp_path / "tok")
    argv = ["--json", "data-check", "--manifest", str(bad_manifest), "--config", "omni_emotion:tiny",
            f"--config.data.tokenizer={tmp_path / 'tok'}", "--config.data.workers=0"]
    assert cli.main(argv) == 1  # 10 of 14 skipped: more than data.max_skip_fraction (0.1)
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # --json: JSON only
    assert report["ok"] is False and "10 of 14 lines would be skipped (" in report["error"]
    assert "more than data.max_skip_fraction=0.1 allows" in report["error"] and report["task"] == "train"
    # the counts as a data worker process reports them
    assert cli.main([*argv, "--config.check.max_skip_fraction=0.75", "--config.data.workers=1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["examples"] == 14 and report["usable"] == 4 and report["skipped"] == 10
    assert report["skipped_by_reason"] == {reason: 1 for reason in sorted(REASONS_WRITTEN)}
    assert (report["truncated"], report["has_video"], report["has_face"], report["has_audio"]) == (1, 3, 3, 2)
    assert report["token_length_histogram"] == {"<=96": 3, "<=128": 0, "<=192": 1}
    assert report["token_length_max"] == 192 and report["clips_per_second"] > 0
    assert cli.main(argv[1:] + ["--config.check.max_skip_fraction=0.75"]) == 0
    assert "skipped_by_reason" in capsys.readouterr().out  # the readable form without --json


def test_text_only_examples_pack_into_shared_rows(clips):
    """Clips keep a row each; short text-only examples share rows of the smallest bucket: segment
    ids 1, 2, … in attention_mask, positions from 0 per example, each example's labels intact."""
    cfg = tiny(batch_size=3, pack_text_only=True)
    tokenizer = qwen2_test_tokenizer(cfg.model)
    entries = [{"id": f"t{i}", "conversations": turns(30 + i, video=False)} for i in range(5)]
    entries[2:2] = [{"id": "clip", "video": "good.mp4", "conversations": turns(21)}]
    manifest = write_manifest(clips["root"] / "packed.jsonl", entries)
    batches = list(pipeline.make_pipeline(manifest, tokenizer, cfg, shuffle=False, drop_remainder=False))
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    answers, rows = [], 0
    for batch in batches:
        for ids, labels, mask, positions, has_video in zip(batch["input_ids"], batch["labels"],
                                                           batch["attention_mask"], batch["position_ids"],
                                                           batch["has_video"]):
            rows += 1
            segments = [s for s in np.unique(mask) if s > 0]
            assert segments == list(range(1, len(segments) + 1))
            assert has_video == (ids == cfg.model.video_token_id).any()
            assert len(segments) == 1 or not has_video  # clips are never packed
            for segment in segments:
                where = np.flatnonzero(mask == segment)
                assert (np.diff(where) == 1).all() and positions[where].tolist() == list(range(len(where)))
                labelled = labels[where][labels[where] != IGNORE].tolist()
                assert labelled[1:] == [im_end]
                answers.append(labelled[0])
    assert sorted(answers) == [21, 30, 31, 32, 33, 34] and rows < len(answers)
    assert [len(b["input_ids"]) for b in batches[:-1]] == [3] * (len(batches) - 1)
    assert max(int(b["attention_mask"].max()) for b in batches) >= 2  # some row holds two examples or more


def test_phase_modalities_decide_the_blocks_and_the_media(clips):
    """An audio-only line holds the audio block alone; phase 1 (a) batches carry log-mels and
    no pixels, phase 2 (v, f) pixels and no log-mel, and skip audio-only lines (counted)."""
    cfg = tiny(batch_size=2)
    tokenizer = qwen2_test_tokenizer(cfg.model)
    manifest = write_manifest(clips["root"] / "phases.jsonl", [
        {"id": "speech", "audio": "tone.m4a", "conversations": turns(21, "<audio>\nw12", video=False)},
        {"id": "clip", "video": "good.mp4", "conversations": turns(22)}])
    counts = placeholder_counts(cfg.model)
    ids = lambda batch, token: (batch["input_ids"] == cfg.model[token]).sum(axis=1).tolist()

    audio_phase = iter(pipeline.make_pipeline(manifest, tokenizer, cfg, shuffle=False, modalities="a"))
    batch = next(audio_phase)
    assert not {"pixel_values_videos", "face_pixels", "has_video", "has_face"} & set(batch)
    assert batch["has_audio"].tolist() == [True, True] and np.abs(batch["input_features"]).sum() > 0
    assert ids(batch, "audio_token_id") == [counts["audio"]] * 2 and ids(batch, "au_start_token_id") == [1, 1]
    assert ids(batch, "video_token_id") == [0, 0] and ids(batch, "vi_start_token_id") == [0, 0]

    every = next(iter(pipeline.make_pipeline(manifest, tokenizer, cfg, shuffle=False)))
    assert (
        ids(every, "video_token_id") == [0, counts["video"]] and ids(every, "audio_token_id") == [counts["audio"]] * 2
    )
    assert every["has_video"].tolist() == [False, True] and every["has_audio"].tolist() == [True, True]

    face_phase = iter(pipeline.make_pipeline(manifest, tokenizer, tiny(batch_size=1), shuffle=False,
                                             modalities="v,f"))
    batch = next(face_phase)
    assert "input_features" not in batch and "has_audio" not in batch
    assert ids(batch, "video_token_id") == [counts["video"]] and ids(batch, "audio_token_id") == [0]
    assert ids(batch, "au_start_token_id") == [0] and batch["has_face"].tolist() == [True]
    assert face_phase.counts["skipped"] == {"modality_excluded": 1}
    with pytest.raises(ValueError, match="unknown"):
        pipeline.make_pipeline(manifest, tokenizer, cfg, modalities="v,x")


def test_modality_dropout_leaves_audio_and_faces_out_of_some_prompts(clips):
    """data.modality_dropout: an example without audio has no audio block and zero log-mels
    flagged absent; one without faces keeps its video block with zero crops flagged absent (as
    eval's v,a prompts); the scene is never dropped; the draws follow the seed and the
    element's place (each epoch anew), not the host count."""
    cfg = tiny(batch_size=8, modality_dropout=0.5, epochs=2)
    tokenizer = qwen2_test_tokenizer(cfg.model)
    manifest = write_manifest(clips["root"] / "dropout.jsonl", [
        {"id": f"clip{i}", "video": "good.mp4", "conversations": turns(22)} for i in range(8)])
    counts = placeholder_counts(cfg.model)
    batches = list(pipeline.make_pipeline(manifest, tokenizer, cfg, shuffle=False))
    assert len(batches) == 2
    blocks = lambda batch, token: (batch["input_ids"] == cfg.model[token]).sum(axis=1)
    for batch in batches:
        audio = blocks(batch, "audio_token_id")
        assert set(audio.tolist()) <= {0, counts["audio"]}
        assert ((audio > 0) == batch["has_audio"]).all() and not batch["input_features"][~batch["has_audio"]].any()
        assert (blocks(batch, "video_token_id") == counts["video"]).all() and batch["has_video"].all()
        assert not batch["face_pixels"][~batch["has_face"]].any()
    flags = np.stack([np.concatenate([b["has_audio"], b["has_face"]]) for b in batches])
    assert 0 < flags.mean() < 1 and (flags[0] != flags[1]).any()  # some left out; epochs draw anew
    again = list(pipeline.make_pipeline(manifest, tokenizer, cfg, shuffle=False))
    for a, b in zip(batches, again):
        np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
    shares = [list(pipeline.make_pipeline(manifest, tokenizer, tiny(batch_size=4, modality_dropout=0.5, epochs=2),
                                          shuffle=False, shard=grain.sharding.ShardOptions(h, 2)))
              for h in range(2)]
    for step, batch in enumerate(batches):  # host h holds elements h, h + 2, ...: the same draws
        np.testing.assert_array_equal(batch["has_audio"][0::2], shares[0][step]["has_audio"])
        np.testing.assert_array_equal(batch["has_face"][1::2], shares[1][step]["has_face"])
    plain = next(iter(pipeline.make_pipeline(manifest, tokenizer, tiny(batch_size=8), shuffle=False)))
    assert plain["has_audio"].all() and plain["has_face"].all()
    speech = write_manifest(clips["root"] / "dropout_speech.jsonl", [  # never left without its only block
        {"id": f"speech{i}", "audio": "tone.m4a", "conversations": turns(21, "<audio>\nw12", video=False)}
        for i in range(4)])
    phase1 = iter(pipeline.make_pipeline(speech, tokenizer, tiny(modality_dropout=0.9), shuffle=False, modalities="a"))
    assert next(phase1)["has_audio"].all() and phase1.counts["skipped"] == {}


def test_faces_by_time_survive_a_change_of_frame_count(clips):
    """Boxes from a 25-fps tracker: each sampled frame takes the nearest in time, whatever
    num_frames is; frames with no box within the tolerance are detected; positional boxes
    hold only for the frame count they were made for."""
    from omni_jax.data.manifest import Record

    clip = video.load_frames(clips["face"], 3)
    tracked = [(i / 25, (i, i, 40 + i, 40 + i)) for i in range(8)]  # the first 0.28 s only
    record = Record("x", clips["face"], None, tuple(b for _, b in tracked), [], "m:1",
                    face_times=tuple(t for t, _ in tracked))
    boxes, detected = pipeline.frame_boxes(record, clip, tolerance=0.05)
    for t, box in zip(clip.timestamps, boxes):
        if t <= 7 / 25 + 0.05:
            assert box == min(tracked, key=lambda tb: abs(tb[0] - t))[1]
    late = [f for f, t in enumerate(clip.timestamps) if t > 7 / 25 + 0.05]
    assert late and [boxes[f] for f in late] == video.detect_faces(clip.frames[late]) and detected == len(late)
    cfg = tiny()
    tokenizer = qwen2_test_tokenizer(cfg.model)
    line = {"id": "f", "video": str(clips["face"]), "conversations": turns(),
            "faces": [{"t": t, "box": list(b)} for t, b in tracked]}
    for frames in (2, 4):  # one manifest, any frame count
        cfg.data.num_frames = frames
        example = pipeline.load_example(_record(line), tokenizer, cfg, ("v", "f"))
        assert example["face_pixels"].shape[0] == frames and example["has_face"]
        assert pipeline.media_used(example, frames) == {"faces": "manifest"}  # every frame within 0.5 s of a box
    positional = {**line, "faces": [[0, 0, 40, 40], [1, 1, 41, 41]]}
    cfg.data.num_frames = 3
    with pytest.raises(pipeline.ExampleError, match="or give them by time"):
        pipeline.load_example(_record(positional), tokenizer, cfg, ("v", "f"))


def _record(line):
    from omni_jax.data.manifest import ManifestLine, parse_record

    return parse_record(ManifestLine(1, json.dumps(line).encode()), epath.Path("/m.jsonl"))


def test_damaged_and_empty_audio_are_counted_apart(clips, tmp_path):
    """Damaged packets: the clip trains (what decodes) and counts as audio_damaged; a track with
    no samples: absent and audio_empty; a 0-byte file: skipped as empty_file. The counts are
    part of the iterator's state (a state saved before they existed restores them as 0)."""
    damaged = media.write_damaged_packets(tmp_path / "damaged.m4a", clips["tone"], packets=(3, 4))
    lines = [{"id": "damaged", "audio": str(damaged)},
             {"id": "silent", "audio": str(media.write_silent_track(tmp_path / "silent.wav"))},
             {"id": "empty", "audio": str(media.write_empty(tmp_path / "empty.m4a"))}]
    manifest = write_manifest(tmp_path / "audio.jsonl", [
        {**line, "conversations": [{"from": "human", "value": "<audio>\nw12"}, {"from": "gpt", "value": "w40"}]}
        for line in lines])
    cfg = tiny(batch_size=1)
    batches = iter(
        pipeline.make_pipeline(manifest, qwen2_test_tokenizer(cfg.model), cfg, shuffle=False, modalities="a")
    )
    flags = [bool(next(batches)["has_audio"][0]) for _ in range(2)]
    with pytest.raises(StopIteration):
        next(batches)
    counts = batches.counts
    assert flags == [True, False] and counts["skipped"] == {"empty_file": 1}
    assert (counts["audio_damaged"], counts["audio_empty"], counts["ok"]) == (1, 1, 2)
    old = batches.get_state()
    del old["counts"]["audio_damaged"], old["counts"]["audio_empty"]
    batches.set_state(old)
    assert batches.counts["audio_damaged"] == 0


def test_data_check_on_real_world_damage(tmp_path, capsys):
    """The media a crawled dataset holds: each decoded (damaged audio counted apart, a track
    without samples absent) or skipped by its reason; the good ones usable."""
    root = tmp_path
    good = media.write_clip(root / "good.mp4", 1.0, 10, (64, 48))
    first, second = (media.write_clip(root / f"{n}.ts", 1.0, 10, (64, 48), audio=False) for n in "ab")
    (root / "restart.ts").write_bytes(first.read_bytes() + second.read_bytes())
    files = {
        "damaged-audio": {"video": str(good), "audio": str(media.write_damaged_packets(
            root / "damaged.m4a", media.write_audio(root / "tone.m4a", media.tone(300.0, 2.0, 16000), 16000),
            packets=(3, 4)))},
        "damaged-video": {"video": str(media.write_damaged_packets(root / "dv.mp4", media.write_clip(
            root / "clean.mp4", 2.0, 10, (64, 48), audio=False, gop=5), packets=(7,), kind="video"))},
        "silent-track": {"video": str(good), "audio": str(media.write_silent_track(root / "silent.wav"))},
        "webm": {"video": str(media.write_clip(root / "c.webm", 1.0, 10, (64, 48), "libvpx-vp9",
                                               audio_codec="libopus"))},
        "mov": {"video": str(media.write_clip(root / "c.mov", 1.0, 10, (64, 48)))},
        "long-audio": {"video": str(media.write_clip(root / "long.mp4", 1.0, 10, (64, 48), audio_seconds=3.0))},
        "restart": {"video": str(root / "restart.ts")},
        "8k-mono": {"audio": str(media.write_audio(root / "8k.wav", media.tone(300.0, 1.0, 8000), 8000, "pcm_s16le"))},
        "5.1": {"audio": str(media.write_audio(root / "51.m4a", media.tone(300.0, 1.0, 48000, 6), 48000))},
        "empty-audio": {"video": str(good), "audio": str(media.write_empty(root / "empty.m4a"))},
    }
    lines = [{"id": name, **paths, "conversations": [
        {"from": "human", "value": ("<video>" if "video" in paths else "<audio>") + "\nw12"},
        {"from": "gpt", "value": "w40"}]} for name, paths in files.items()]
    manifest = write_manifest(root / "damaged.jsonl", lines)
    qwen2_test_tokenizer(tiny().model).save_pretrained(root / "tok")
    assert cli.main(["--json", "data-check", "--manifest", str(manifest), "--config", "omni_emotion:tiny",
                     f"--config.data.tokenizer={root / 'tok'}", "--config.data.workers=0"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["skipped_by_reason"] == {"empty_file": 1}
    assert report["usable"] == len(files) - 1
    assert (report["audio_damaged"], report["audio_empty"]) == (1, 1)


def test_what_a_clip_used_is_reported(clips, tmp_path):
    """Faces from the manifest, the detector or the centre-crop fallback; the seconds of audio
    heard out of the track's, counted when the windows hear less than the clip holds."""
    cfg = tiny()
    cfg.model.audio_windows = 1  # 30 s heard
    tokenizer = qwen2_test_tokenizer(cfg.model)
    long_voice = media.write_audio(tmp_path / "long.wav", media.tone(220.0, 31.0, 16000), 16000, codec="pcm_s16le")
    used = lambda line, modalities=("v", "a", "f"): pipeline.media_used(
        pipeline.load_example(_record(line), tokenizer, cfg, modalities), cfg.data.num_frames)
    assert used({"video": str(clips["good"]), "faces": [[10, 4, 40, 30], [10, 4, 40, 30]], "conversations": turns()}) \
        == {"faces": "manifest", "audio_seconds": 1.02, "audio_heard_seconds": 1.02}  # AAC's priming: 1.02 s decoded
    assert used({"video": str(clips["face"]), "conversations": turns()}) == {"faces": "detector"}
    assert used({"video": str(clips["silent"]), "conversations": turns()}) == {"faces": "fallback"}
    assert used({"video": str(clips["good"]), "audio": str(long_voice), "conversations": turns()}, ("v", "a")) == {
        "audio_seconds": 31.0, "audio_heard_seconds": 30.0}
    manifest = write_manifest(tmp_path / "long.jsonl", [
        {"id": "long", "video": str(clips["good"]), "audio": str(long_voice), "conversations": turns()}])
    cfg.data.update(batch_size=1)
    batches = iter(pipeline.make_pipeline(manifest, tokenizer, cfg, shuffle=False, drop_remainder=False))
    next(batches)
    assert batches.counts["audio_cut"] == 1

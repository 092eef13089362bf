"""`omni-jax annotate` end to end through the official `openai` client against the stub
OpenAI-compatible server on localhost, whose replies are scripted per request kind and per clip
(each clip is one flat colour and one tone, which the stub reads back from the images and the
sound it is sent): garbage, out-of-range values, 429/503 storms, timeouts, truncated bodies.
Then the review sheet and its import, and the manifests read by `omni-jax train` and `eval`."""
import csv
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from omni_jax import cli
from omni_jax.annotate import job, prompts, review
from omni_jax.configs import annotate as annotate_config
from omni_jax.configs import omni_emotion
from omni_jax.data.media_writer import write_media
from omni_jax.testing.openai_stub import Reply, Request, StubServer
from tests import media
from tests.tokenizer import qwen2_test_tokenizer

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 1.0  # seconds a request may take; a SLOW one takes longer
SECONDS, FPS = 2.0, 10
# clip → (label, source, what goes wrong in the first run); the last two: no sound, no face
CLIPS = [("happy", "dfew", None), ("sad", "dfew", "low_score"), ("angry", "mafw", "garbage_once"),
         ("fear", "mafw", "age_out_of_range"), ("surprise", "dfew", "slow_transcription"),
         ("happy", "mafw", "review_storm"), ("neutral", "dfew", "review_truncated"),
         ("disgust", "mafw", "uncertain"), ("sad", "dfew", "no_sound"), ("angry", "mafw", "no_face")]
FIXED_IN_SECOND_RUN = {"age_out_of_range", "slow_transcription", "review_storm", "review_truncated"}


def colour(i):
    return np.array([20 + 22 * i, 200 - 15 * i, 60 + 17 * i], np.float64)


def clip_of_image(image):
    return int(np.argmin([np.abs(image.reshape(-1, 3).mean(0) - colour(i)).sum() for i in range(len(CLIPS))]))


def clip_of_sound(data):
    samples, rate = soundfile.read(io.BytesIO(data))
    peak = np.argmax(np.abs(np.fft.rfft(samples))) * rate / len(samples)
    return int(round((peak - 300) / 100))


class Script:
    """The stub's replies: what each request is for (by the prompt it carries), for which clip
    (by its colour, its tone, or the clip=N the earlier replies put into the later prompts)."""

    def __init__(self):
        self.fixed = False  # the second run: the failures of FIXED_IN_SECOND_RUN are gone
        self.seen: dict[str, int] = {}

    def trouble(self, i):
        trouble = CLIPS[i][2]
        return None if self.fixed and trouble in FIXED_IN_SECOND_RUN else trouble

    def __call__(self, request: Request) -> Reply:
        key = digest(request)
        self.seen[key] = self.seen.get(key, 0) + 1
        if request.kind == "transcription":
            i = clip_of_sound(request.audio)
            delay = TIMEOUT * 1.5 if self.trouble(i) == "slow_transcription" else 0.0
            return Reply({"text": f"words of clip={i}", "language": "en", "duration": SECONDS}, delay=delay)
        text = request.text
        if "frames of a video clip" in text:
            i = clip_of_image(request.images()[0])
            if self.trouble(i) == "garbage_once" and self.seen[key] == 1:
                return Reply("GARBAGE: a pleasant scene, I think.")
            return Reply(json.dumps({"scene": f"a room, clip={i}", "people": "one person, seated"}))
        if "crops of one person's face" in text:
            i = clip_of_image(request.images()[0])
            age = 300 if self.trouble(i) == "age_out_of_range" else 30
            return Reply(f'Sure: {{"expressions": "smiles broadly, clip={i}", "age": {age}, "gender": "Female"}}')
        if "tone of voice" in text:
            return Reply(json.dumps({"tone": f"a warm voice, clip={clip_of_sound(request.audio_parts()[0])}"}))
        if text.startswith(prompts.ESTIMATE_AGE_GENDER[:40]):
            return Reply(json.dumps({"age": 41 + clip_of_image(request.images()[0]), "gender": "male"}))
        i = int(re.search(r"clip=(\d+)", text).group(1))
        if text.startswith(prompts.REVIEW.split("{")[0]):
            trouble = self.trouble(i)
            if trouble == "review_storm":
                return Reply(status=429 if self.seen[key] % 2 else 503)
            return Reply(json.dumps({"reason": f"She smiles broadly (clip={i}) and her words are warm.",
                                     "emotions": ["happy", "Relieved"], "intensity": 3,
                                     "uncertain": trouble == "uncertain"}), truncated=trouble == "review_truncated")
        assert text.startswith(prompts.SCORE.split("{")[0]), text
        return Reply(json.dumps({"score": 2 if CLIPS[i][2] == "low_score" else 8}))


def digest(request: Request) -> str:
    return hashlib.sha256(json.dumps([request.kind, request.body], sort_keys=True).encode()
                          + (request.audio or b"")).hexdigest()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """The clips (2 s, 64×48, one colour and one tone each) and their manifest, with three lines
    that cannot be used (no label, malformed, a missing file)."""
    root = tmp_path_factory.mktemp("annotate")
    (root / "clips").mkdir()
    lines = []
    for i, (label, source, trouble) in enumerate(CLIPS):
        frames = [np.broadcast_to(colour(i).astype(np.uint8), (48, 64, 3)).copy()] * int(SECONDS * FPS)
        sound = None if trouble == "no_sound" else media.tone(300 + 100 * i, SECONDS, 16000)
        write_media(root / "clips" / f"{i}.mp4", frames, sound, fps=FPS, rate=16000)
        box = None if trouble == "no_face" else [16, 12, 48, 40]
        faces = [{"t": t, "box": box} for t in np.arange(0, SECONDS, 0.5)]
        lines.append(json.dumps({"id": f"c{i}", "video": f"clips/{i}.mp4", "source": source, "label": label,
                                 "faces": faces}))
    lines += [json.dumps({"id": "unlabelled", "video": "clips/0.mp4", "source": "dfew"}), "{broken",
              json.dumps({"id": "gone", "video": "clips/none.mp4", "source": "dfew", "label": "sad"})]
    (root / "clips.jsonl").write_text("\n".join(lines) + "\n")
    return root


def overrides(server, **extra):
    sets = {"clips_in_flight": 4, **extra}
    for name in ("vision", "transcription", "reviewer"):
        sets.update({f"endpoints.{name}.base_url": server.url, f"endpoints.{name}.timeout": TIMEOUT,
                     f"endpoints.{name}.retries": 1, f"endpoints.{name}.concurrency": 4})
    return sets


def config(server, **extra):
    cfg = annotate_config.get_config()
    for dotted, value in overrides(server, **extra).items():
        *sections, name = dotted.split(".")
        section = cfg
        for part in sections:
            section = section[part]
        section[name] = value
    return cfg


def read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def annotated(clips, tmp_path_factory):
    """Two runs into one folder: the first meets every failure, the second (failures gone)."""
    script, out = Script(), tmp_path_factory.mktemp("annotated")
    with StubServer(script) as server:
        first = job.run(config(server), manifest=clips / "clips.jsonl", out=out)
        first_records, first_requests = read(out / "records.jsonl"), list(server.requests)
        script.fixed = True
        second = job.run(config(server), manifest=clips / "clips.jsonl", out=out)
        second_requests = server.requests[len(first_requests):]
    return dict(clips=clips, out=out, first=first, second=second, first_records=first_records,
                first_requests=first_requests, second_requests=second_requests)


def test_every_clip_is_counted_and_failures_cost_one_clip(annotated):
    first, records = annotated["first"], annotated["first_records"]
    assert (first["lines"], first["kept"]) == (13, 2)
    assert first["discarded"] == {"low_score": 1, "no_face": 1, "no_speech": 1, "uncertain": 1}
    assert first["failed"] == {"face": 1, "review": 2, "speech": 1}
    assert first["skipped"] == {"malformed_json": 1, "no_label": 1, "unreadable/missing_file": 1}
    assert first["by_source"]["dfew"]["lines"] + first["by_source"]["mafw"]["lines"] == 12  # + the malformed line
    status = {r.get("id"): r["status"] for r in records}
    assert [status[f"c{i}"] for i in range(10)] == ["kept", "discarded", "kept", "failed", "failed", "failed",
                                                   "failed", "discarded", "discarded", "discarded"]
    failures = {r["id"]: r["failure"]["message"] for r in records if r["status"] == "failed"}
    assert "timeout" in failures["c4"] and "age must be a number from 0 to 110" in failures["c3"]
    assert "HTTP 503" in failures["c5"] or "HTTP 429" in failures["c5"]
    assert "broke off" in failures["c6"] or "unreadable" in failures["c6"]
    kept = next(r for r in records if r.get("id") == "c0")
    assert kept["cues"]["face"] == {"expressions": "smiles broadly, clip=0", "age": 30.0, "gender": "female"}
    assert kept["cues"]["speech"] == {"text": "words of clip=0", "language": "en"}
    assert kept["review"]["emotions"] == ["happy", "relieved"] and kept["score"] == 8.0
    assert kept["prompts"] == prompts.VERSION and kept["models"]["vision"] == "Qwen/Qwen2-VL-72B-Instruct"
    # no request was sent for the clips without sound or face, nor for the unusable lines
    sent = {clip_of_image(r.images()[0]) for r in annotated["first_requests"] if r.images()}
    assert sent == set(range(8))


def test_nothing_is_recorded_from_a_reply_that_did_not_parse(annotated):
    text = (annotated["out"] / "records.jsonl").read_text() + json.dumps(annotated["first_records"])
    assert "GARBAGE" not in text and '"age": 300' not in text
    assert next(r for r in annotated["first_records"] if r.get("id") == "c2")["cues"]["scene"]["scene"] == \
        "a room, clip=2"  # asked again after the garbage


def test_a_rerun_sends_only_what_was_not_answered(annotated):
    second = annotated["second"]
    assert (second["kept"], second["failed"]) == (6, {})
    answered = {digest(r) for r in annotated["first_requests"]}
    again = [r for r in annotated["second_requests"] if digest(r) in answered]
    # only the failed ones are sent again: clip 3's face, clip 4's words, 5's and 6's reviews
    assert sorted(r.kind for r in again) == ["chat", "chat", "chat", "transcription"]
    clips = {clip_of_image(r.images()[0]) if r.images() else clip_of_sound(r.audio) if r.audio
             else int(re.search(r"clip=(\d+)", r.text).group(1)) for r in annotated["second_requests"]}
    assert clips == {3, 4, 5, 6}
    assert second["vision_requests"] == 1 and second["transcription_requests"] == 1


def test_manifests_and_counts(clips, annotated):
    out = annotated["out"]
    phase2, phase3 = read(out / "phase2_classification.jsonl"), read(out / "phase3_instructions.jsonl")
    assert [line["id"] for line in phase2] == ["c0", "c2", "c3", "c4", "c5", "c6"]
    question = omni_emotion.evals_config().mafw.question
    assert phase2[1]["conversations"][0]["value"] == "<video>\n" + question  # mafw's classes, as evals.mafw asks
    assert phase2[0]["conversations"][1] == {"from": "gpt", "value": "happy"}
    assert [line["id"] for line in phase3[:3]] == ["c0:classify", "c0:describe", "c0:open_vocabulary"]
    assert "label" not in phase2[0] and phase2[0]["source"] == "dfew"
    assert phase3[2]["conversations"][1]["value"] == "happy, relieved"
    assert (out / phase2[0]["video"]).resolve() == (clips / "clips" / "0.mp4").resolve()
    assert json.loads((out / "counts.json").read_text())["kept"] == 6
    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_optional_models_tone_of_voice_and_an_age_gender_estimator(clips, tmp_path):
    """With endpoints.audio and endpoints.age_gender set, the sound goes to the audio model as
    an input_audio part and one face crop to the estimator, whose age and gender the face cue
    takes (the vision model is not asked for them); the review hears about the tone."""
    lines = (clips / "clips.jsonl").read_text().splitlines()
    (tmp_path / "two.jsonl").write_text("\n".join([lines[0], lines[2]]).replace("clips/", f"{clips}/clips/") + "\n")
    script = Script()
    with StubServer(script) as server:
        cfg = config(server, **{f"endpoints.{name}.{key}": value for name in ("audio", "age_gender")
                                for key, value in (("base_url", server.url), ("model", f"{name}-model"))})
        summary = job.run(cfg, manifest=tmp_path / "two.jsonl", out=tmp_path / "out")
        texts = [r.text for r in server.requests]
    assert summary["kept"] == 2 and summary["audio_requests"] == 2 and summary["age_gender_requests"] == 2
    records = read(tmp_path / "out" / "records.jsonl")
    assert records[1]["cues"]["tone"] == {"tone": "a warm voice, clip=2"}
    assert records[1]["cues"]["face"] == {"expressions": "smiles broadly, clip=2", "age": 43.0, "gender": "male"}
    assert records[1]["models"]["age_gender"] == "age_gender-model"
    face_prompts = [t for t in texts if "crops of one person's face" in t]
    assert face_prompts and not any("apparent age" in t for t in face_prompts)
    assert any("Voice: a warm voice, clip=2" in t for t in texts)


def test_a_killed_run_resumes_to_the_same_records(clips, annotated, tmp_path):
    """SIGKILL in the middle of a run (a slow endpoint: one clip at a time), then the same
    command: the records equal the uninterrupted run's."""
    script = Script()
    script.fixed = True
    with StubServer(script, latency=0.1) as server:
        out = tmp_path / "killed"
        command = [sys.executable, "-m", "omni_jax.cli", "--json", "annotate", "--manifest",
                   str(clips / "clips.jsonl"), "--out", str(out),
                   *(f"--config.{k}={v}" for k, v in overrides(server, clips_in_flight=1).items())]
        run = subprocess.Popen(command, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        progress = out / ".records.progress-0-of-1"
        deadline = time.monotonic() + 120
        while not (progress.exists() and len(progress.read_text().splitlines()) >= 4):  # the key + 3 lines
            assert run.poll() is None, run.stdout.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        run.send_signal(signal.SIGKILL)
        run.wait()
        assert not (out / "records.jsonl").exists()
        assert cli.main(command[3:]) == 0
    strip = lambda records: [{k: v for k, v in r.items() if k != "human_review"} for r in records]
    assert read(out / "records.jsonl") == strip(read(annotated["out"] / "records.jsonl"))


def write_sheet(path, rows):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, review.COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def reviewed(annotated, tmp_path_factory):
    """The review sheet of one clip per source, filled in (a fix for each, an accept where
    there is a generated reason) and imported."""
    out, scratch = annotated["out"], tmp_path_factory.mktemp("review")
    drawn = review.write_sheet(out, out / "review.csv", per_source=1, seed=3)
    rows = list(csv.DictReader((out / "review.csv").open()))
    filled = [dict(row, decision="fix", fixed_reason="Her smile is forced; she is anxious.",
                   fixed_emotions="anxious; happy", fixed_intensity="2") for row in rows]
    filled[0].update(decision="accept")
    before = (out / "records.jsonl").read_text()
    with pytest.raises(Exception, match=r"bad.csv:2: decision must be one of") as refused:
        review.import_sheet(out, write_sheet(scratch / "bad.csv", [dict(rows[0], decision="maybe")]),
                            annotate_config.get_config())
    unchanged = (out / "records.jsonl").read_text() == before
    imported = review.import_sheet(out, write_sheet(scratch / "filled.csv", filled), annotate_config.get_config())
    files = {name: (out / name).read_text() for name in ("records.jsonl", "eval_emer.jsonl", "eval_emer_ov.jsonl",
                                                          "phase3_instructions.jsonl")}
    again = review.import_sheet(out, scratch / "filled.csv", annotate_config.get_config())
    script = Script()
    script.fixed = True
    with StubServer(script) as server:  # annotate once more: everything from the cache, the reviews kept
        rerun = job.run(config(server), manifest=annotated["clips"] / "clips.jsonl", out=out)
        rerun_requests = len(server.requests)
    return dict(drawn=drawn, rows=rows, refused=refused, unchanged=unchanged, imported=imported, again=again,
                files=files, scratch=scratch, rerun=rerun, rerun_requests=rerun_requests)


def test_the_review_sheet_and_its_import(annotated, reviewed):
    out = annotated["out"]
    assert reviewed["drawn"]["rows"] == 2 and reviewed["drawn"]["by_source"] == {"dfew": 1, "mafw": 1}
    review.write_sheet(out, reviewed["scratch"] / "again.csv", per_source=1, seed=3)
    assert (reviewed["scratch"] / "again.csv").read_text() == (out / "review.csv").read_text()  # seeded
    records = {r.get("id"): r for r in read(out / "records.jsonl")}
    assert not {r["id"] for r in reviewed["rows"]} & {i for i, r in records.items() if r["status"] == "kept"}
    assert all(Path(r["preview"]).read_bytes()[:4] == b"\x89PNG" for r in reviewed["rows"])
    assert reviewed["unchanged"]  # the malformed sheet changed nothing
    assert reviewed["imported"]["decisions"] == {"accept": 1, "fix": 1}
    assert reviewed["imported"]["manifests"]["eval_emer_ov.jsonl"] == 2
    assert {name: (out / name).read_text() for name in reviewed["files"]} == reviewed["files"]  # twice: no change
    accepted, fixed = (records[r["id"]]["human_review"] for r in reviewed["rows"])
    assert (
        accepted["decision"] == "accept"
        and accepted["reason"] == records[reviewed["rows"][0]["id"]]["review"]["reason"]
    )
    assert fixed == {"decision": "fix", "reason": "Her smile is forced; she is anxious.",
                     "emotions": ["anxious", "happy"], "intensity": 2, "note": ""}
    assert read(out / "eval_emer_ov.jsonl")[1]["labels"] == ["anxious", "happy"]
    # a rerun of the finished folder sends nothing and keeps the human reviews
    assert reviewed["rerun_requests"] == 0 and reviewed["rerun"]["human_reviewed"] == {"accept": 1, "fix": 1}
    assert (out / "eval_emer_ov.jsonl").read_text() == reviewed["files"]["eval_emer_ov.jsonl"]


def test_the_manifests_are_what_training_and_evaluation_read(annotated, reviewed, tmp_path, capsys):
    """`omni-jax data-check` reads phase 3's manifest as training does (the pipeline, every line
    usable) and the human-reviewed clips' open-vocabulary manifest as `omni-jax eval` does (its
    references checked, every prompt built)."""
    out, tiny = annotated["out"], "omni_emotion:tiny"
    qwen2_test_tokenizer(omni_emotion.get_config("tiny").model).save_pretrained(tmp_path / "tokenizer")
    for manifest, task in (("phase3_instructions.jsonl", "train"), ("eval_emer_ov.jsonl", "open_vocabulary")):
        lines = len(read(out / manifest))
        assert cli.main(["--json", "data-check", "--manifest", str(out / manifest), "--config", tiny,
                         f"--config.data.tokenizer={tmp_path / 'tokenizer'}", "--config.data.workers=0"]) == 0
        report = json.loads(capsys.readouterr().out.splitlines()[-1])
        assert (report["task"], report["examples"], report["usable"]) == (task, lines, lines), report

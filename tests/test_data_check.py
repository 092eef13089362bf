"""`omni-jax data-check` (omni_jax/data_check.py) on each kind of manifest: the task told from the
config or the lines, each line checked for what its reader needs, what needs the detector, audio
longer than the windows, target words the tokenizer cannot spell, and the exit status."""
import json

import pytest

from omni_jax import cli
from omni_jax.configs import omni_emotion
from omni_jax.data_check import check_manifest, task_of
from omni_jax.runs import load_tokenizer
from tests import media
from tests.tokenizer import qwen2_test_tokenizer


def write_lines(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("check")
    media.write_clip(root / "face.mp4", seconds=0.6, fps=10, size=(128, 96), face=True)
    media.write_clip(root / "plain.mp4", seconds=0.6, fps=10, size=(64, 48), audio=False)
    media.write_audio(root / "long.wav", media.tone(220.0, 61.0, 16000), 16000, codec="pcm_s16le")  # tiny: 2 × 30 s
    qwen2_test_tokenizer(omni_emotion.get_config("tiny").model).save_pretrained(root / "tok")
    return root


def tiny(root):
    cfg = omni_emotion.get_config("tiny")
    cfg.data.update(tokenizer=str(root / "tok"), workers=0)
    return cfg


def test_a_classification_manifest_is_checked_as_eval_reads_it(root):
    """Evaluation lines need no conversation: the evaluator's question is asked; references are
    checked; the missing clip is skipped; boxes in the line need no detection."""
    manifest = write_lines(root / "dfew.jsonl", [
        {"id": "a", "video": "face.mp4", "label": "happy"},
        {"id": "b", "video": "plain.mp4", "faces": [{"t": 0.0, "box": [4, 4, 40, 40]}], "label": "sad"},
        {"id": "c", "video": "face.mp4", "audio": "long.wav", "label": "fear"},
        {"id": "gone", "video": "absent.mp4", "label": "angry"}])
    cfg = tiny(root)
    assert task_of(str(manifest), cfg) == ("emotion_classification", "the lines' 'label' field", "dfew")
    report = check_manifest(str(manifest), load_tokenizer(cfg, None), cfg, max_skip_fraction=0.5)
    assert (report["task"], report["examples"], report["usable"], report["skipped_by_reason"]) == (
        "emotion_classification", 4, 3, {"missing_file": 1})
    assert (report["face_detected"], report["audio_cut"]) == (2, 1)  # a and c detected; c's voice is 61 s
    assert (report["target_words"], report["unknown_words"], report["unknown_examples"]) == (
        4, 4, ["angry", "fear", "happy", "sad"])  # the test tokenizer spells w0…w139 only
    assert "error" not in report
    assert "1 of 4 lines would be skipped (missing_file 1), more than eval.max_skip_fraction=0.1" in check_manifest(
        str(manifest), load_tokenizer(cfg, None), cfg)["error"]
    cfg.evals.dfew.manifest = str(manifest)
    assert task_of(str(manifest), cfg)[1] == "the config's evaluator 'dfew' reads this manifest"
    wrong = write_lines(root / "wrong.jsonl", [{"id": "x", "video": "face.mp4", "label": "bored"}])
    with pytest.raises(ValueError, match=r"wrong.jsonl:1: label 'bored' is not in the class list"):
        check_manifest(str(wrong), load_tokenizer(cfg, None), cfg)


def test_training_lines_count_unknown_target_words_and_detection(root, capsys):
    manifest = write_lines(root / "train.jsonl", [
        {"id": "t1", "video": "face.mp4", "conversations": [{"from": "human", "value": "<video>\nw12"},
                                                            {"from": "gpt", "value": "w40 zebra w41"}]},
        {"id": "t2", "audio": "long.wav", "conversations": [{"from": "human", "value": "<audio>\nw12"},
                                                           {"from": "gpt", "value": "w42"}]}])
    argv = ["--json", "data-check", "--manifest", str(manifest), "--config", "omni_emotion:tiny",
            f"--config.data.tokenizer={root / 'tok'}", "--config.data.workers=0"]
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["task"], report["task_from"]) == ("train", "the lines' conversations (no reference field)")
    assert (report["usable"], report["face_detected"], report["audio_cut"]) == (2, 1, 1)
    assert (report["target_words"], report["unknown_words"], report["unknown_examples"]) == (4, 1, ["zebra"])
    assert report["unknown_token_share"] == 0.25  # 1 of the targets' 4 tokens
    assert cli.main([*argv, "--config.check.task=open_vocabulary"]) == 1  # what an open-vocabulary evaluator would need
    assert "no 'labels'" in capsys.readouterr().err


def test_a_run_with_workers_prints_no_noise(root):
    """As a user runs it (no JAX_PLATFORMS, data workers): neither JAX's TPU probe nor the
    resource tracker's leaked shared memory at exit reaches the terminal."""
    import os
    import subprocess
    import sys

    manifest = write_lines(root / "quiet.jsonl", [{"id": "a", "video": "face.mp4", "conversations": [
        {"from": "human", "value": "<video>\nw12"}, {"from": "gpt", "value": "w40"}]}])
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    done = subprocess.run([sys.executable, "-m", "omni_jax.cli", "data-check", "--manifest", str(manifest),
                           "--config", "omni_emotion:tiny", f"--config.data.tokenizer={root / 'tok'}",
                           "--config.data.workers=1"], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "train" in done.stdout
    assert "Unable to initialize backend" not in done.stderr and "leaked shared_memory" not in done.stderr, done.stderr


def test_sigterm_to_the_process_group_stops_at_once_and_leaves_no_worker(root):
    """A command that does not stop between items (data-check), its process group sent SIGTERM
    mid-pass: one line, exit 143, and no data worker left behind (they ignore SIGTERM)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    line = {"id": "a", "video": "face.mp4", "conversations": [{"from": "human", "value": "<video>\nw12"},
                                                              {"from": "gpt", "value": "w40"}]}
    manifest = write_lines(root / "many.jsonl", [line] * 400)
    running = subprocess.Popen([sys.executable, "-m", "omni_jax.cli", "data-check", "--manifest", str(manifest),
                                "--config", "omni_emotion:tiny", f"--config.data.tokenizer={root / 'tok'}",
                                "--config.data.workers=1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    time.sleep(8)  # JAX imported, the worker decoding
    assert running.poll() is None
    os.killpg(running.pid, signal.SIGTERM)
    output = running.communicate(timeout=60)[0]
    assert running.returncode == 143 and "omni-jax data-check: stopped (SIGTERM)" in output, output[-2000:]
    assert "Traceback" not in output
    deadline = time.monotonic() + 10
    while True:  # the whole group gone: the worker too
        try:
            os.killpg(running.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "a process of the group outlived the run"
        time.sleep(0.1)

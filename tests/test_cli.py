"""The command line itself: --json anywhere, every input path checked before anything runs, user
errors as one line and bugs with their traceback."""
import json

import pytest

from omni_jax import cli


def test_json_is_accepted_after_the_subcommand(tmp_path, capsys):
    predictions = tmp_path / "p.jsonl"
    predictions.write_text(json.dumps({"id": "a", "answer": "Happy.", "label": "happy"}) + "\n")
    for argv in (["--json", "score", "--task", "emotion_classification", "--predictions", str(predictions)],
                 ["score", "--task", "emotion_classification", "--predictions", str(predictions), "--json"]):
        assert cli.main(argv) == 0
        assert json.loads(capsys.readouterr().out.splitlines()[-1])["war"] == 1.0


@pytest.mark.parametrize("argv", [
    ["data-check", "--manifest", "{tmp}/m.jsonl", "--tokenizer", "{tmp}/no_tokenizer"],
    ["convert", "--src", "{tmp}/no_checkpoint", "--dst", "{tmp}/out"],
    ["eval", "--config", "omni_emotion:tiny", "--checkpoint", "{tmp}/nothing", "--workdir", "{tmp}/w"],
    ["infer", "--checkpoint", "{tmp}/m.jsonl", "--video", "{tmp}/no_clip.mp4"],
    ["train", "--config", "omni_emotion:tiny", "--workdir", "{tmp}/w", "--init", "{tmp}/no_checkpoint"],
])
def test_a_missing_input_path_is_one_line_naming_it(tmp_path, capsys, argv):
    (tmp_path / "m.jsonl").write_text("")
    argv = [a.format(tmp=tmp_path) for a in argv]
    missing = next(a for a in argv if "no_" in a or "nothing" in a)
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"{missing}: no such file or directory")
    assert not (tmp_path / "out").exists() and not (tmp_path / "w").exists()


def _predictions(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "a", "answer": "Happy.", "label": "happy"}) + "\n")
    return ["score", "--task", "emotion_classification", "--predictions", str(path)]


def test_a_bug_inside_a_subcommand_keeps_its_traceback(tmp_path, capsys, monkeypatch):
    from omni_jax.eval import run

    def broken_score(*args, **kwargs):
        return {"uar": {}["uar"]}  # a KeyError inside the package, as a bug would raise it

    monkeypatch.setattr(run, "score", broken_score)
    assert cli.main(["--json", *_predictions(tmp_path)]) == cli.BUG_EXIT == 70
    captured = capsys.readouterr()
    assert "Traceback (most recent call last)" in captured.err and "in broken_score" in captured.err
    assert "KeyError: 'uar'" in captured.err and "this is a bug in omni_jax" in captured.err.splitlines()[-1]
    assert json.loads(captured.out.splitlines()[-1]) == {"ok": False, "error": "KeyError: 'uar'", "bug": True}


def test_a_user_error_is_one_line_and_debug_shows_its_traceback(tmp_path, capsys):
    (tmp_path / "p.jsonl").write_text(json.dumps({"id": "a", "label": "happy"}) + "\n")  # no answer
    argv = ["score", "--task", "emotion_classification", "--predictions", str(tmp_path / "p.jsonl")]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "lines without 'answer'" in err and "Traceback" not in err
    assert cli.main([*argv, "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.splitlines()[-1].startswith("error: ")


def test_model_overrides_reach_the_run(tmp_path, monkeypatch):
    """The `--config.model.*` fields typed are what runs.run_config checks against the checkpoint."""
    from omni_jax.eval import run

    seen = {}
    monkeypatch.setattr(run, "infer", lambda *args, **kwargs: seen.update(kwargs) or [])
    clip = tmp_path / "c.mp4"
    clip.write_bytes(b"")
    assert cli.main(["infer", "--checkpoint", str(tmp_path), "--video", str(clip), "--config.model.text.rope_theta=5.0",
                     "--config.eval.max_new_tokens=3", "--config.model.loss_chunk_size=8"]) == 0
    assert seen["model_overrides"] == ["text.rope_theta", "loss_chunk_size"]


def test_score_reads_as_eval_does(tmp_path, capsys):
    """The config's evaluator's classes and synonyms (joyful is happy, as eval maps it); reference
    labels normalised as answers are ("Angry " is angry); an unknown one refused with the nearest."""
    path = tmp_path / "p.jsonl"
    lines = [{"id": "a", "answer": "Joyful.", "label": "happy"}, {"id": "b", "answer": "angry", "label": "Angry "},
             {"id": "c", "answer": "sad", "label": "fear"}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert cli.main(["--json", "score", "--task", "emotion_classification", "--predictions", str(path)]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert (scored["evaluator"], scored["war"], scored["unmapped"]) == ("dfew", 2 / 3, 0)
    assert scored["recall"] == {"happy": 1.0, "surprise": None, "neutral": None, "angry": 1.0, "disgust": None,
                                "sad": None, "fear": 0.0}
    path.write_text(json.dumps({"id": "d", "answer": "angry", "label": "angy"}) + "\n")
    assert cli.main(["score", "--task", "emotion_classification", "--predictions", str(path)]) == 1
    assert "references ['angy'] are not in the class list: label 'angy' is not in the class list ['happy', " \
           "'surprise', 'neutral', 'angry', 'disgust', 'sad', 'fear'] (did you mean 'angry'?)" in capsys.readouterr().err
    assert cli.main(["score", "--task", "emotion_classification", "--predictions", str(path),
                     "--evaluator", "emer_ov"]) == 1
    assert "no emotion_classification evaluator of that name" in capsys.readouterr().err


def test_jaxs_tpu_probe_is_not_shown(tmp_path):
    """On a machine without a TPU (no JAX_PLATFORMS set, as users run it), starting JAX's backend
    after the command line has set up logging logs no "Unable to initialize backend 'tpu'"."""
    import os
    import subprocess
    import sys

    argv = _predictions(tmp_path)
    script = f"from omni_jax import cli; cli.main({argv!r}); import jax; print(jax.devices())"
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert "CpuDevice" in done.stdout, done.stderr[-2000:]
    assert "Unable to initialize backend" not in done.stderr, done.stderr


@pytest.mark.parametrize("error,code", [(OSError(28, "No space left on device"), 1),  # the machine's: one line
                                        (FileNotFoundError(2, "No such file", "/internal/path"), 70)])  # a bug's
def test_only_the_machines_os_errors_are_one_line(tmp_path, capsys, monkeypatch, error, code):
    from omni_jax.eval import run

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(run, "score", failing)
    assert cli.main(_predictions(tmp_path)) == code
    assert ("Traceback" in capsys.readouterr().err) == (code == 70)


def test_multi_process_flags_go_together(tmp_path, capsys):
    argv = ["--num-processes", "2", "eval", "--config", "omni_emotion:tiny", "--checkpoint", str(tmp_path),
            "--workdir", str(tmp_path / "w")]
    assert cli.main(argv) == 1
    assert "takes --coordinator HOST:PORT, --num-processes N and --process-id I together" in capsys.readouterr().err

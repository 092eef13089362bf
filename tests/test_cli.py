"""The command line and the edges every job shares, each run through every job it concerns: an
existing output refused (or resumed, where the job resumes: their own tests), a folder where a
file is expected and the reverse, a missing, unreadable or oddly named path, config values out
of range, every item failed; usage errors, --json anywhere, user errors as one line, bugs with
their traceback, the machine's errors."""
import json
import os
import pwd

import pytest

from omni_jax import cli
from omni_jax.configs import omni_emotion
from omni_jax.jobs import BUG_EXIT, USAGE
from tests.conftest import random_checkpoint
from tests.tokenizer import qwen2_test_tokenizer

# Every path flag of every job, by what it must be: an input file, folder or either, an output
# file or folder that must be new, an output folder that is created or reused (resumed).
PATHS = {
    "convert": {"--src": "folder", "--dst": "new folder"},
    "export": {"--src": "folder", "--dst": "new folder"},
    "convert-facexformer": {"--src": "file", "--dst": "new folder"},
    "convert-retinaface": {"--src": "file", "--dst": "new folder"},
    "assemble": {"--llava": "folder", "--whisper": "folder", "--face": "folder", "--dst": "new folder"},
    "plan": {},
    "data-check": {"--manifest": "file"},
    "train": {"--workdir": "folder out", "--init": "folder"},
    "eval": {"--checkpoint": "folder", "--workdir": "folder out"},
    "infer": {"--checkpoint": "folder", "--video": "any", "--audio": "file"},
    "score": {"--predictions": "file"},
    "faces": {"--manifest": "file", "--out": "new file", "--preview": "folder out"},
    "manifest": {"--labels": "any", "--media": "folder", "--out": "new file"},
    "annotate": {"--manifest": "file", "--out": "folder out", "--review-sheet": "new file",
                 "--import-review": "file"},
    "synth": {"--out": "new folder", "--parts": "new folder"},
}
# what each command needs besides its path flags
EXTRA = {"train": ["--config", "omni_emotion:tiny"], "eval": ["--config", "omni_emotion:tiny"],
         "manifest": ["--format", "dfew"]}
FLAGS = [(command, flag) for command, flags in PATHS.items() for flag in flags]


def test_every_subcommand_is_here():
    assert sorted(PATHS) == sorted(command.job.name for command in cli.COMMANDS)


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """A file, a non-empty folder, an empty one; a name with spaces and non-ASCII letters."""
    root = tmp_path_factory.mktemp("edges")
    (root / "a file.txt").write_text("kept\n")
    (root / "a folder").mkdir()
    (root / "a folder" / "inside.txt").write_text("kept\n")
    (root / "empty").mkdir()
    return root


def valid(place, kind: str) -> str:
    """A path `kind` accepts."""
    return str({"file": place / "a file.txt", "folder": place / "a folder", "any": place / "a folder",
                "new file": place / "new" / "out.jsonl", "new folder": place / "new" / "folder",
                "folder out": place / "new" / "workdir"}[kind])


def argv(place, command: str, flag: str, value: str) -> list[str]:
    """`command` with `flag` set to `value`, its other path flags valid."""
    others = [item for other, kind in PATHS[command].items() if other != flag for item in (other, valid(place, kind))]
    return [command, *EXTRA.get(command, []), *others, flag, value]


def usage_error(capsys, args: list[str]) -> str:
    assert cli.main(args) == USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.mark.parametrize("command,flag", [(c, f) for c, f in FLAGS if PATHS[c][f].startswith("new")])
def test_an_existing_output_is_refused_and_left_as_it_was(place, capsys, command, flag):
    existing = place / ("a file.txt" if PATHS[command][flag] == "new file" else "a folder")
    line = usage_error(capsys, argv(place, command, flag, str(existing)))
    assert line.endswith(f"argument {flag}: {existing}: " + (
        "exists; choose a new output file (nothing is overwritten)" if existing.is_file() else
        "exists and is not empty; choose a new folder (nothing is overwritten)"))
    assert (place / "a file.txt").read_text() == (place / "a folder" / "inside.txt").read_text() == "kept\n"
    assert not (place / "new").exists()


@pytest.mark.parametrize("command,flag", [(c, f) for c, f in FLAGS if PATHS[c][f] in ("file", "new file")])
def test_a_folder_where_a_file_is_expected(place, capsys, command, flag):
    line = usage_error(capsys, argv(place, command, flag, str(place / "empty")))
    expected = "a folder, where a file is " + ("expected" if PATHS[command][flag] == "file" else "to be written")
    assert line.endswith(f"argument {flag}: {place / 'empty'}: {expected}")


@pytest.mark.parametrize("command,flag", [(c, f) for c, f in FLAGS if "folder" in PATHS[c][f]])
def test_a_file_where_a_folder_is_expected(place, capsys, command, flag):
    line = usage_error(capsys, argv(place, command, flag, str(place / "a file.txt")))
    expected = "expected" if PATHS[command][flag] == "folder" else "to be written"
    assert line.endswith(f"argument {flag}: {place / 'a file.txt'}: a file, where a folder is {expected}")


@pytest.mark.parametrize("command,flag", [(c, f) for c, f in FLAGS if PATHS[c][f] in ("file", "folder", "any")])
def test_a_missing_input_named_with_spaces_and_accents_is_one_line(place, capsys, command, flag):
    missing = place / "my clips — été" / "ça va ✓.jsonl"
    line = usage_error(capsys, argv(place, command, flag, str(missing)))
    assert line.endswith(f"argument {flag}: {missing}: no such file or directory")


def as_nobody(function):
    """`function()` in a child process that runs as the user nobody (root reads every file),
    or here when this is not root; returns what it returned."""
    if os.geteuid() != 0:
        return function()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no JAX, no threads of its own are used before it exits
        os.close(read)
        try:
            os.setuid(pwd.getpwnam("nobody").pw_uid)
            os.write(write, json.dumps(function()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        result = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(result)


@pytest.mark.parametrize("command,flag", [(c, f) for c, f in FLAGS if PATHS[c][f] in ("file", "any")])
def test_an_unreadable_input_is_one_line(command, flag):
    """A file only its owner may read, given by another user (as root reads every file, the
    command runs as the user nobody there)."""
    import tempfile
    from pathlib import Path

    root = Path(tempfile.mkdtemp(prefix="unreadable "))
    root.chmod(0o777)  # the other flags' outputs may be written there
    (root / "a folder").mkdir()
    (root / "a folder" / "inside.txt").write_text("kept\n")
    (root / "a file.txt").write_text("kept\n")
    secret = root / "secret é.jsonl"
    secret.write_text("{}\n")
    secret.chmod(0o600 if os.geteuid() == 0 else 0o000)

    def run() -> list:
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            status = cli.main(argv(root, command, flag, str(secret)))
        return [status, err.getvalue().strip().splitlines()[-1]]

    status, line = as_nobody(run)
    assert status == USAGE and line.endswith(f"argument {flag}: {secret}: not readable (permission denied)")


def test_usage_errors_exit_2_and_say_so_in_json(capsys):
    assert cli.main(["plan", "--no-such-flag"]) == USAGE
    assert capsys.readouterr().err.strip().endswith("omni-jax plan: unrecognized arguments: --no-such-flag")
    assert cli.main(["--json", "score"]) == USAGE
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["usage"] is True and "--predictions" in out["error"]
    assert cli.main(["no-such-command"]) == USAGE


# A config value out of range per job, refused in one line (exit 1) before the job reads anything.
OUT_OF_RANGE = {
    "convert": ("--config.convert.dtype=int8", "expected one of '', 'float32', 'bfloat16', 'float16'"),
    "export": ("--config.convert.dtype=int8", "expected one of"),
    "convert-facexformer": ("--config.convert.dtype=int8", "expected one of"),
    "convert-retinaface": ("--config.convert.dtype=int8", "expected one of"),
    "assemble": ("--config.model.fusion=sum", "expected one of 'video_concat', 'frame_concat'"),
    "plan": ("--config.plan.seq_len=0", "is out of range: allowed [1, ∞)"),
    "data-check": ("--config.check.max_skip_fraction=1.5", "is out of range: allowed [0, 1] or None"),
    "train": ("--config.train.steps=-3", "is out of range: allowed [0, ∞)"),
    "eval": ("--config.eval.batch_size=0", "is out of range: allowed [1, ∞)"),
    "infer": ("--config.eval.top_p=0.0", "is out of range: allowed (0, 1]"),
    "score": ("--config.score.evaluator=nope", "the config has no such evaluator"),
    "faces": ("--config.faces.rate=0.0", "is out of range: allowed (0, ∞)"),
    "manifest": ("--config.manifest.fold=9", "is out of range: allowed [0, 5]"),
    "annotate": ("--config.max_failure_fraction=2.0", "is out of range: allowed [0, 1]"),
    "synth": ("--config.synth.clips=0", "is out of range: allowed [1, ∞)"),
}


def test_every_subcommand_checks_its_config_values():
    assert sorted(OUT_OF_RANGE) == sorted(PATHS)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """What the jobs read when they get that far: a tiny random checkpoint with its tokenizer,
    predictions, manifests of clips that are not there, a labels folder."""
    root = tmp_path_factory.mktemp("inputs")
    model = omni_emotion.get_config("tiny").model
    tokenizer = qwen2_test_tokenizer(model)
    random_checkpoint(root / "ckpt", "omni_emotion", model, tokenizer=tokenizer)
    (root / "predictions.jsonl").write_text(json.dumps({"id": "a", "answer": "happy", "label": "happy"}) + "\n")
    (root / "gone.jsonl").write_text("".join(json.dumps({"id": f"c{i}", "video": f"gone{i}.mp4", "label": "happy",
                                                         "source": "dfew"}) + "\n" for i in range(2)))
    (root / "empty.mp4").write_bytes(b"")
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    (root / "bad.jsonl").write_text("".join(json.dumps({"id": name, "video": f"{name}.mp4", "label": "happy",
                                                        "conversations": [{"from": "human", "value": "<video>\nw1"},
                                                                          {"from": "gpt", "value": "w2"}]}) + "\n"
                                            for name in ("empty", "broken")))
    return root


def command_line(inputs, command: str) -> list[str]:
    """A command line of `command` whose inputs are there (its outputs under inputs/out-…)."""
    out = inputs / f"out-{command}"
    ckpt, gone = str(inputs / "ckpt"), str(inputs / "gone.jsonl")
    return {
        "convert": ["convert", "--src", ckpt, "--dst", str(out)],
        "export": ["export", "--src", ckpt, "--dst", str(out)],
        "convert-facexformer": ["convert-facexformer", "--src", gone, "--dst", str(out), "--config",
                                "omni_emotion:tiny"],
        "convert-retinaface": ["convert-retinaface", "--dst", str(out)],
        "assemble": ["assemble", "--llava", ckpt, "--whisper", ckpt, "--face", ckpt, "--dst", str(out)],
        "plan": ["plan", "--config", "omni_emotion:tiny"],
        "data-check": ["data-check", "--manifest", gone, "--config", "omni_emotion:tiny",
                       f"--config.data.tokenizer={ckpt}", "--config.data.workers=0"],
        "train": ["train", "--config", "omni_emotion:tiny", "--workdir", str(out), "--init", ckpt],
        "eval": ["eval", "--config", "omni_emotion:tiny", "--checkpoint", ckpt, "--workdir", str(out),
                 f"--config.evals.dfew.manifest={gone}"],
        "infer": ["infer", "--config", "omni_emotion:tiny", "--checkpoint", ckpt, "--video", gone],
        "score": ["score", "--predictions", str(inputs / "predictions.jsonl")],
        "faces": ["faces", "--manifest", str(inputs / "bad.jsonl"), "--out", str(out)],
        "manifest": ["manifest", "--format", "dfew", "--labels", gone, "--media", str(inputs), "--out", str(out)],
        "annotate": ["annotate", "--manifest", gone, "--out", str(out)],
        "synth": ["synth", "--out", str(out)],
    }[command]


@pytest.mark.parametrize("command", sorted(OUT_OF_RANGE))
def test_a_config_value_out_of_range_is_one_line_naming_it(inputs, capsys, command):
    override, message = OUT_OF_RANGE[command]
    assert cli.main(["--json", *command_line(inputs, command), override]) == 1
    captured = capsys.readouterr()
    error = json.loads(captured.out.splitlines()[-1])["error"]
    assert error.startswith(override.split("=")[0]) and message in error, error
    assert captured.err.strip().splitlines()[-1] == f"error: {error}" and "Traceback" not in captured.err
    assert not list(inputs.glob(f"out-{command}*"))


# Jobs whose items can fail: every item failed exits 1 naming the counts and the first reasons.
ALL_FAILED = {
    "faces": "2 of 2 clips cannot be used (corrupt_video 1, empty_file 1): first",
    "infer": "2 of 2 clips cannot be used (missing_file 2): first",
    "annotate": "2 of 2 lines cannot be used (unreadable/missing_file 2): first",
    "data-check": "2 of 2 lines would be skipped (missing_file 2), more than eval.max_skip_fraction=0.1 allows",
    "eval": "2 of 2 lines cannot be used (missing_file 2): first",
}


@pytest.mark.parametrize("command", sorted(ALL_FAILED))
def test_a_job_whose_every_item_failed_exits_1_naming_why(inputs, capsys, command):
    assert cli.main(command_line(inputs, command)) == 1
    err = capsys.readouterr().err
    assert ALL_FAILED[command] in err.strip().splitlines()[-1] and "Traceback" not in err
    if command != "data-check":  # the first files named (data-check's report counts the lines by reason)
        assert ("broken.mp4" if command == "faces" else "gone0.mp4") in err.strip().splitlines()[-1]


def test_a_workdir_that_holds_something_else_is_refused(inputs, place, capsys):
    """A training or evaluation workdir must be the job's own to resume: one holding other files
    is refused, not written into."""
    for command in ("train", "eval"):
        args = command_line(inputs, command)
        args[args.index("--workdir") + 1] = str(place / "a folder")
        assert cli.main(args) == 1
        assert "holds files but no" in capsys.readouterr().err
    assert sorted(p.name for p in (place / "a folder").iterdir()) == ["inside.txt"]


def test_json_is_accepted_after_the_subcommand(inputs, capsys):
    for args in (["--json", "score", "--predictions", str(inputs / "predictions.jsonl")],
                 ["score", "--predictions", str(inputs / "predictions.jsonl"), "--json"]):
        assert cli.main(args) == 0
        assert json.loads(capsys.readouterr().out.splitlines()[-1])["war"] == 1.0


def test_a_bug_inside_a_job_keeps_its_traceback(inputs, capsys, monkeypatch):
    from omni_jax.eval import job

    def broken_score(*args, **kwargs):
        return {"uar": {}["uar"]}  # a KeyError inside the package, as a bug would raise it

    monkeypatch.setattr(job, "score", broken_score)
    assert cli.main(["--json", "score", "--predictions", str(inputs / "predictions.jsonl")]) == BUG_EXIT == 70
    captured = capsys.readouterr()
    assert "Traceback (most recent call last)" in captured.err and "in broken_score" in captured.err
    assert "KeyError: 'uar'" in captured.err and "this is a bug in omni_jax" in captured.err.splitlines()[-1]
    assert json.loads(captured.out.splitlines()[-1]) == {"ok": False, "error": "KeyError: 'uar'", "bug": True}


def test_a_user_error_is_one_line_and_debug_shows_its_traceback(tmp_path, capsys):
    (tmp_path / "p.jsonl").write_text(json.dumps({"id": "a", "label": "happy"}) + "\n")  # no answer
    args = ["score", "--predictions", str(tmp_path / "p.jsonl")]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "lines without 'answer'" in err and "Traceback" not in err
    assert cli.main([*args, "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.splitlines()[-1].startswith("error: ")


def test_model_overrides_reach_the_job(inputs, monkeypatch):
    """The `--config.model.*` fields typed are what runs.run_config checks against the checkpoint."""
    from omni_jax.eval import job

    seen = {}
    monkeypatch.setattr(job, "infer", lambda cfg, **kwargs: seen.update(kwargs) or {"clips": 0})
    assert cli.main(["infer", "--checkpoint", str(inputs / "ckpt"), "--video", str(inputs / "empty.mp4"),
                     "--config.model.text.rope_theta=5.0", "--config.eval.max_new_tokens=3",
                     "--config.model.loss_chunk_size=8"]) == 0
    assert seen["model_overrides"] == ["text.rope_theta", "loss_chunk_size"]


def test_score_reads_as_eval_does(tmp_path, capsys):
    """The config's evaluator's classes and synonyms (joyful is happy, as eval maps it); reference
    labels normalised as answers are ("Angry " is angry); an unknown one refused with the nearest."""
    path = tmp_path / "p.jsonl"
    lines = [{"id": "a", "answer": "Joyful.", "label": "happy"}, {"id": "b", "answer": "angry", "label": "Angry "},
             {"id": "c", "answer": "sad", "label": "fear"}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert cli.main(["--json", "score", "--predictions", str(path)]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert (scored["evaluator"], scored["war"], scored["unmapped"]) == ("dfew", 2 / 3, 0)
    assert scored["recall"] == {"happy": 1.0, "surprise": None, "neutral": None, "angry": 1.0, "disgust": None,
                                "sad": None, "fear": 0.0}
    path.write_text(json.dumps({"id": "d", "answer": "angry", "label": "angy"}) + "\n")
    assert cli.main(["score", "--predictions", str(path)]) == 1
    assert (
        "references ['angy'] are not in the class list: label 'angy' is not in the class list ['happy', "
        "'surprise', 'neutral', 'angry', 'disgust', 'sad', 'fear'] (did you mean 'angry'?)" in capsys.readouterr().err
    )
    assert cli.main(["score", "--predictions", str(path), "--config.score.evaluator=emer"]) == 1
    assert "evaluator 'emer' (reasoning_judge) needs its judge" in capsys.readouterr().err


def test_jaxs_tpu_probe_is_not_shown(inputs):
    """On a machine without a TPU (no JAX_PLATFORMS set, as users run it), starting JAX's backend
    after the command line has set up logging logs no "Unable to initialize backend 'tpu'"."""
    import subprocess
    import sys

    args = ["score", "--predictions", str(inputs / "predictions.jsonl")]
    script = f"from omni_jax import cli; cli.main({args!r}); import jax; print(jax.devices())"
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert "CpuDevice" in done.stdout, done.stderr[-2000:]
    assert "Unable to initialize backend" not in done.stderr, done.stderr


@pytest.mark.parametrize("error,code", [
    (OSError(28, "No space left on device"), 1),  # the machine's: one line
    (FileNotFoundError(2, "No such file or directory", "{inputs}/predictions.jsonl"), 1),  # under a path given
    (FileNotFoundError(2, "No such file or directory", "/internal/path"), 70)])  # a bug's
def test_only_the_machines_and_the_users_os_errors_are_one_line(inputs, capsys, monkeypatch, error, code):
    from omni_jax.eval import job

    if error.filename:
        error.filename = error.filename.format(inputs=inputs)

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(job, "score", failing)
    assert cli.main(["score", "--predictions", str(inputs / "predictions.jsonl")]) == code
    err = capsys.readouterr().err
    assert ("Traceback" in err) == (code == 70)
    if error.filename and code == 1:
        assert err.strip().splitlines()[-1] == f"error: --predictions: No such file or directory: {error.filename}"


def test_multi_process_flags_go_together(inputs, tmp_path, capsys):
    args = ["--num-processes", "2", "eval", "--config", "omni_emotion:tiny", "--checkpoint", str(inputs / "ckpt"),
            "--workdir", str(tmp_path / "w")]
    assert cli.main(args) == 1
    assert "takes --coordinator HOST:PORT, --num-processes N and --process-id I together" in capsys.readouterr().err

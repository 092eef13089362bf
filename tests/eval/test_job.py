"""`omni-jax eval`, `infer` and `score` on real clips the tests write and a tiny random
checkpoint: files written, sharded = one device = two processes, ablation, a workdir holding one
evaluation, stop and resume, errors."""
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from omni_jax import cli
from omni_jax.config_flags import load_config
from omni_jax.configs import omni_emotion
from omni_jax.errors import CheckpointRefused, Stopped
from omni_jax.eval import job, scoring
from omni_jax.eval.predict import Predictor
from omni_jax.pretrained import load_pretrained
from omni_jax.runs import load_tokenizer, run_config
from omni_jax.sharding import make_mesh
from tests import media
from tests.conftest import random_checkpoint
from tests.processes import Processes
from tests.tokenizer import qwen2_test_tokenizer

REPO = Path(__file__).resolve().parents[2]
CLASSES = "w20,w21,w22"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny random Omni-Emotion checkpoint with its tokenizer; 5 clips (faces, every other one
    with a voice) and a missing one; classification and open-vocabulary manifests."""
    root = tmp_path_factory.mktemp("eval")
    cfg = omni_emotion.get_config("tiny")
    random_checkpoint(root / "ckpt", "omni_emotion", cfg.model, seed=1, tokenizer=qwen2_test_tokenizer(cfg.model))
    for i in range(5):
        media.write_clip(root / f"c{i}.mp4", seconds=0.6, fps=10, size=(64, 48), face=True, audio=i % 2 == 0)
    lines = [{"id": f"c{i}", "video": f"c{i}.mp4", "label": f"w2{i % 3}"} for i in range(5)]
    lines.insert(2, {"id": "gone", "video": "missing.mp4", "label": "w20"})
    (root / "dfew.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    ov = [{"id": f"c{i}", "video": f"c{i}.mp4", "labels": [["happy", "joyful"], ["sad"], ["angry", "worried"]][i % 3]}
          for i in range(3)]
    (root / "ov.jsonl").write_text("".join(json.dumps(x) + "\n" for x in ov))
    return root


def eval_args(root: Path, workdir: Path, *extra: str) -> list[str]:
    return ["eval", "--config", "omni_emotion:tiny", "--checkpoint", str(root / "ckpt"),
            "--workdir", str(workdir), f"--config.evals.dfew.manifest={root / 'dfew.jsonl'}",
            f"--config.evals.dfew.classes={CLASSES}", "--config.data.workers=0",
            "--config.eval.max_skip_fraction=0.2", *extra]  # 1 of the 6 lines is missing


def predictions(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def evaluated(setup, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("evaluated")
    assert cli.main(eval_args(setup, workdir, f"--config.evals.emer_ov.manifest={setup / 'ov.jsonl'}")) == 0
    return workdir


def test_eval_writes_predictions_metrics_and_a_confusion_matrix(setup, evaluated):
    lines = predictions(evaluated / "predictions" / "dfew.jsonl")
    assert [p["id"] for p in lines] == ["c0", "c1", "gone", "c2", "c3", "c4"]  # manifest order, every line
    assert lines[2]["skip"] == "missing_file" and "answer" not in lines[2]
    assert lines[0]["faces"] == "fallback" and 0.5 < lines[0]["audio_heard_seconds"] == lines[0]["audio_seconds"] < 1
    assert "audio_seconds" not in lines[1]  # c1 has no audio track
    answered = [p for p in lines if "skip" not in p]
    assert all(isinstance(p["answer"], str) and p["correct"] == (p["predicted"] == p["label"]) for p in answered)
    result = json.loads((evaluated / "metrics.json").read_text())
    assert result["modalities"] == ["v", "a", "f"]
    expected = scoring.classification_scores([p["answer"] for p in answered], [p["label"] for p in answered],
                                             CLASSES.split(","))
    for key in ("uar", "war", "unmapped", "strict_uar", "strict_war"):
        assert result["dfew"][key] == pytest.approx(expected[key])
    assert (result["dfew"]["clips"], result["dfew"]["skipped"], result["dfew"]["skipped/missing_file"]) == (5, 1, 1)
    assert (result["dfew"]["faces/fallback"], result["dfew"]["audio_cut"]) == (5, 0)  # 64×48: no face found
    assert (evaluated / "dfew_confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ov = predictions(evaluated / "predictions" / "emer_ov.jsonl")
    assert result["emer_ov"]["precision"] == pytest.approx(np.mean([p["precision"] for p in ov]))
    assert result["emer_ov"]["avg"] == pytest.approx((result["emer_ov"]["precision"] + result["emer_ov"]["recall"]) / 2)
    assert not list((evaluated / "predictions").glob("*part*")) and not list(evaluated.glob(".*tmp"))


def test_score_recomputes_the_metrics_of_a_predictions_file(evaluated, capsys):
    assert cli.main(["--json", "score", f"--config.score.classes={CLASSES}",
                     "--predictions", str(evaluated / "predictions" / "dfew.jsonl")]) == 0
    scored = json.loads(capsys.readouterr().out.splitlines()[-1])
    result = json.loads((evaluated / "metrics.json").read_text())["dfew"]
    assert {k: scored[k] for k in ("uar", "war", "clips", "skipped")} == {k: result[k] for k in
                                                                          ("uar", "war", "clips", "skipped")}
    assert scored["evaluator"] == "dfew"  # the file's "label" lines: the first classification evaluator's
    # every input path is checked when the command line is read
    assert cli.main(["score", "--predictions", str(evaluated / "nothing.jsonl")]) == 2
    assert "nothing.jsonl: no such file or directory" in capsys.readouterr().err.splitlines()[-1]


def test_one_device_gives_the_sharded_predictions(setup, evaluated):
    """The 8-device eval's answers again on a single device, batch 3 (other padding rows)."""
    cfg = omni_emotion.get_config("tiny")
    cfg.data.workers, cfg.eval.batch_size = 0, 3
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    model, params = load_pretrained(setup / "ckpt", mesh=mesh)
    predict = Predictor(model, params, load_tokenizer(cfg, setup / "ckpt"), cfg, mesh)
    single = predict(setup / "dfew.jsonl", cfg.evals.dfew.question)
    sharded = predictions(evaluated / "predictions" / "dfew.jsonl")
    assert [p.get("answer") for p in single] == [p.get("answer") for p in sharded]


def test_generation_unrolls_the_language_model_unless_told(setup):
    """eval.scan_layers=False (the default; the eval above ran so) loads the LM's layers
    unrolled, as the single-device run above did not: their answers agree."""
    cfg = omni_emotion.get_config("tiny")
    for scan_layers, layout in ((False, "layers_0"), (True, "layers")):
        cfg.eval.scan_layers = scan_layers
        predict = job.load_predictor(run_config(cfg, setup / "ckpt"), setup / "ckpt")
        assert layout in predict.params["language_model"]["model"]


def test_two_processes_give_the_one_process_predictions(setup, evaluated, tmp_path):
    """2 processes × 4 devices, batch 4 per process: 3 of the 6 lines each and a padding row;
    the merged file equals the single-process one."""
    workdir = tmp_path / "run"
    Processes(eval_args(setup, workdir, "--config.eval.batch_size=4"), tmp_path / "logs", cwd=REPO).wait()
    ours = predictions(workdir / "predictions" / "dfew.jsonl")
    assert ours == predictions(evaluated / "predictions" / "dfew.jsonl")


def test_modality_ablation_flag(setup, tmp_path):
    assert cli.main(eval_args(setup, tmp_path, "--config.eval.modalities=v")) == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["modalities"] == ["v"]
    assert len(predictions(tmp_path / "predictions" / "dfew.jsonl")) == 6


def test_infer_answers_a_clip_a_folder_and_a_manifest(setup, evaluated, capsys):
    question = omni_emotion.get_config("tiny").evals.dfew.question
    base = ["--json", "infer", "--checkpoint", str(setup / "ckpt"), "--config",
            "omni_emotion:tiny", f"--config.infer.question={question}", "--config.data.workers=0"]
    assert cli.main([*base, "--video", str(setup / "c1.mp4")]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]  # --json: JSON only
    evaluated_c1 = next(p for p in predictions(evaluated / "predictions" / "dfew.jsonl") if p["id"] == "c1")
    assert out[0]["id"] == "c1" and out[0]["answer"] == evaluated_c1["answer"] and out[0]["faces"] == "fallback"
    assert out[-1]["clips"] == 1 and out[-1]["faces/fallback"] == 1 and out[-1]["audio_cut"] == 0
    assert cli.main([*base, "--video", str(setup), "--config.eval.max_new_tokens=2"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["clips"] == 5
    assert cli.main([*base, "--video", str(setup / "dfew.jsonl"), "--config.eval.max_skip_fraction=0.2"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (summary["clips"], summary["skipped"]) == (6, 1) and "answers" not in summary  # each printed as it came


def test_bad_input_is_a_clear_error_and_writes_nothing(setup, tmp_path, qwen2_tied, capsys):
    def error(*args):
        assert cli.main(list(args)) == 1
        return capsys.readouterr().err

    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"id": "x", "video": "c0.mp4", "label": "w29"}) + "\n")
    assert "'w29' is not in the class list" in error(*eval_args(setup, tmp_path / "a",
                                                                f"--config.evals.dfew.manifest={wrong}"))
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text(json.dumps({"id": "x", "video": "c0.mp4"}) + "\n")
    assert "no 'label'" in error(*eval_args(setup, tmp_path / "a", f"--config.evals.dfew.manifest={unlabelled}"))
    assert "no such file" in error(*eval_args(setup, tmp_path / "a", "--config.evals.dfew.manifest=/nope.jsonl"))
    assert "no evaluator has a manifest" in error(*eval_args(setup, tmp_path / "a", "--config.evals.dfew.manifest="))
    _, other = qwen2_tied
    args = eval_args(setup, tmp_path / "a")
    args[args.index("--checkpoint") + 1] = str(other / "ox")
    assert "a qwen2 checkpoint" in error(*args)
    assert not (tmp_path / "a").exists()


def test_an_evaluation_that_cannot_read_enough_fails_naming_why(setup, tmp_path, capsys, monkeypatch):
    """Above eval.max_skip_fraction (default 0.1; here 1 of 6 lines): an error with the reasons
    counted and the files named. When the files alone tell (missing, empty), before the model
    loads; when decoding tells (corrupt clips), before any predictions file is written."""
    def error(*args):
        capsys.readouterr()
        assert cli.main(list(args)) == 1
        return capsys.readouterr().err.splitlines()[-1]

    loaded = []
    real_load = job.load_predictor
    monkeypatch.setattr(job, "load_predictor", lambda *a, **k: loaded.append(1) or real_load(*a, **k))
    default = [a for a in eval_args(setup, tmp_path / "a") if "max_skip_fraction" not in a]
    message = error(*default)
    assert "1 of 6 lines cannot be used (missing_file 1): first" in message and "missing.mp4: no such file" in message
    assert "eval.max_skip_fraction is 0.1" in message
    (tmp_path / "empty.mp4").write_bytes(b"")
    nothing = tmp_path / "nothing.jsonl"
    nothing.write_text(
        "".join(json.dumps({"id": n, "video": f"{n}.mp4", "label": "w20"}) + "\n" for n in ("gone", "empty"))
    )
    message = error(*eval_args(setup, tmp_path / "a", f"--config.evals.dfew.manifest={nothing}"))
    assert "2 of 2 lines cannot be used (empty_file 1, missing_file 1)" in message and "empty.mp4" in message
    assert not loaded and not (tmp_path / "a").exists()  # before the model loaded; nothing written

    for name in ("bad1", "bad2"):
        (tmp_path / f"{name}.mp4").write_bytes(b"not a video at all" * 64)
    shutil.copy(setup / "c0.mp4", tmp_path / "good.mp4")
    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text("".join(json.dumps({"id": n, "video": f"{n}.mp4", "label": "w20"}) + "\n"
                               for n in ("good", "bad1", "bad2")))
    message = error(*eval_args(setup, tmp_path / "b", f"--config.evals.dfew.manifest={corrupt}"))
    assert "2 of 3 lines cannot be used (corrupt_video 2)" in message and "bad1.mp4" in message
    assert loaded and not (tmp_path / "b" / "predictions" / "dfew.jsonl").exists()


class StopAfter:
    """A stop request reached after `batches` batches (what SIGTERM sets; the signal's own path
    is train's and data-check's subprocess tests)."""

    interrupted = False

    def __init__(self, batches: int):
        self.calls, self.batches = 0, batches

    def reached(self) -> bool:
        self.calls += 1
        return self.calls >= self.batches


def test_a_stopped_evaluation_resumes_after_its_last_batch(setup, evaluated, tmp_path, caplog):
    """Stopped after its first batch (its answers kept, nothing merged), the same call resumes
    after that batch, and the predictions are those of a run never stopped."""
    lines = [{**line, "video": str(setup / line["video"])} for line in predictions(setup / "dfew.jsonl")
             if line["id"] != "gone"] * 4  # 20 lines: batches of 8, 8, 4
    manifest = tmp_path / "long.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    cfg = load_config("omni_emotion:tiny")
    cfg.evals.dfew.update(manifest=str(manifest), classes=tuple(CLASSES.split(",")))
    cfg.data.workers = 0
    call = dict(checkpoint=setup / "ckpt", workdir=tmp_path / "w")
    with pytest.raises(Stopped, match="stopped after batch 1 of 3"):
        job.evaluate(cfg, **call, stop=StopAfter(1))
    progress = tmp_path / "w" / "predictions" / ".dfew.progress-0-of-1"
    assert len(progress.read_text().splitlines()) == 2  # the key and one batch
    assert not (tmp_path / "w" / "predictions" / "dfew.jsonl").exists()
    caplog.set_level("INFO")
    job.evaluate(cfg, **call)
    assert "resuming after batch 1 of 3" in caplog.text
    answers = {p["id"]: p["answer"] for p in predictions(evaluated / "predictions" / "dfew.jsonl") if "answer" in p}
    got = predictions(tmp_path / "w" / "predictions" / "dfew.jsonl")
    assert [p["answer"] for p in got] == [answers[p["id"]] for p in got] and len(got) == 20
    assert not list((tmp_path / "w" / "predictions").glob(".dfew.progress*"))  # removed once the evaluation ended


def test_a_workdir_holds_one_evaluation_and_evaluators_add_to_it(setup, evaluated, tmp_path, capsys):
    """A second evaluator adds its results beside the first's; the first, asked again, is kept
    as it was (not generated again); another checkpoint, other generation settings or the same
    evaluator on another manifest are refused before the model loads, the workdir untouched."""
    workdir = tmp_path / "w"
    base = eval_args(setup, workdir)
    assert cli.main(base) == 0
    dfew = (workdir / "predictions" / "dfew.jsonl").read_text()
    ov = f"--config.evals.emer_ov.manifest={setup / 'ov.jsonl'}"
    assert cli.main(["--json", *base, ov]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["kept_from_before"] == ["dfew"] and {"dfew", "emer_ov"} <= set(summary)
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert {"dfew", "emer_ov"} <= set(metrics) and (workdir / "predictions" / "dfew.jsonl").read_text() == dfew
    assert metrics == json.loads((evaluated / "metrics.json").read_text())  # as one run of both
    record = (workdir / "evaluation.json").read_text()
    other = tmp_path / "other.jsonl"
    other.write_text("".join((setup / "dfew.jsonl").read_text().splitlines(keepends=True)[:2]).replace(
        '"c', f'"{setup}/c'))
    for extra, message in ((["--config.eval.max_new_tokens=3"], "with other eval"),
                           ([f"--config.evals.dfew.manifest={other}"], "holds evaluator 'dfew'")):
        capsys.readouterr()
        assert cli.main([*base, *extra]) == 1
        assert message in capsys.readouterr().err
    cfg = load_config("omni_emotion:tiny")
    cfg.evals.dfew.update(manifest=str(other), classes=tuple(CLASSES.split(",")))
    with pytest.raises(CheckpointRefused, match="holds files but no evaluation"):
        job.evaluate(cfg, checkpoint=setup / "ckpt", workdir=setup)
    assert (workdir / "evaluation.json").read_text() == record


def test_a_progress_file_is_resumed_only_for_the_same_run(tmp_path):
    """What would change an answer (a model field a fine-tune may set, the manifest, the
    question) makes another key; what would not (the workers, the skip limit) keeps it."""
    from omni_jax.eval.predict import resume_key

    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a"}\n')
    cfg = omni_emotion.get_config("tiny")
    key = resume_key(cfg, manifest, "Q?", checkpoint="ckpt")
    cfg.data.workers, cfg.eval.max_skip_fraction = 7, 0.9
    assert resume_key(cfg, manifest, "Q?", checkpoint="ckpt") == key
    cfg.model.audio_windows = 1
    assert resume_key(cfg, manifest, "Q?", checkpoint="ckpt") != key
    cfg.model.audio_windows = 2
    assert resume_key(cfg, manifest, "Other?", checkpoint="ckpt") != key
    manifest.write_text('{"id": "a"}\n{"id": "b"}\n')
    assert resume_key(cfg, manifest, "Q?", checkpoint="ckpt") != key


def test_a_label_named_in_another_case_is_correct(tmp_path):
    from omni_jax.eval.evaluators import EmotionClassification

    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "video": "a.mp4", "label": "Angry "}) + "\n")
    evaluator = EmotionClassification("dfew", str(manifest), ["happy", "angry"], "Which?")
    answered = [{"answer": "angry", "label": "Angry "}]
    assert evaluator.score(answered)["war"] == 1.0 and answered[0]["correct"] is True

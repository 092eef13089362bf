"""`omni-jax train` end to end on real clips the tests write, 8 simulated devices: a run to the
end (metrics, TensorBoard, final checkpoint that loads and exports), one run stopped by
SIGKILL, Ctrl-C and two Ctrl-Cs and resumed giving exactly the uninterrupted run, two processes
(one preempted by SIGTERM, resumed) giving the one-process run, restore onto another mesh, and
the errors a user meets (overrides, missing files, another run's workdir)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import omni_jax
from omni_jax import cli
from omni_jax.configs import omni_emotion
from omni_jax.runs import RUN_FILE
from omni_jax.sharding import make_mesh
from omni_jax.train.checkpoint import Checkpoints
from omni_jax.train.step import make_trainer, training_model_config
from omni_jax.train.train import check_workdir
from tests import media
from tests.conftest import random_checkpoint
from tests.processes import Processes
from tests.tokenizer import qwen2_test_tokenizer

REPO = Path(__file__).resolve().parents[2]
STEPS = 8


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 clips (faces drawn, every other one with audio) and 2 audio-only lines; a tokenizer."""
    root = tmp_path_factory.mktemp("train_data")
    model = omni_emotion.get_config("tiny").model
    qwen2_test_tokenizer(model).save_pretrained(root / "tokenizer")
    random_checkpoint(root / "init", "omni_emotion", model, seed=3, tokenizer=qwen2_test_tokenizer(model))
    lines = []
    for i in range(8):
        media.write_clip(root / f"c{i}.mp4", seconds=0.8, fps=10, size=(64, 48), face=True, audio=i % 2 == 0)
        lines.append(
            {
                "id": f"c{i}",
                "video": f"c{i}.mp4",
                "conversations": [
                    {"from": "human", "value": "<video>\nw10 w11 ."},
                    {"from": "gpt", "value": f"w{20 + i % 4} w{30 + i % 3} ."},
                ],
            }
        )
    for i in range(2):
        media.write_audio(root / f"a{i}.m4a", media.tone(300.0 + 200 * i, 0.8, 16000), 16000)
        lines.append({"id": f"a{i}", "audio": f"a{i}.m4a", "conversations": [
            {"from": "human", "value": "<audio>\nw12 ."}, {"from": "gpt", "value": f"w{40 + i} ."}]})
    (root / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (root / "eval.jsonl").write_text("".join(json.dumps({"id": f"c{i}", "video": f"c{i}.mp4", "label": f"w2{i % 2}"})
                                             + "\n" for i in range(3)))
    return root


def args(data: Path, workdir: Path, *extra: str) -> list[str]:
    """The run's command line. Faces are found by OpenCV's cascade: RetinaFace in the data path
    (tests/faces/test_finder.py, tests/data/test_pipeline.py) would cost each run's process a
    detector to load and run, and what is tested here is the loop."""
    return ["train", "--config", "omni_emotion:tiny", "--workdir", str(workdir), "--init", str(data / "init"),
            f"--config.data.manifest={data / 'train.jsonl'}", f"--config.data.tokenizer={data / 'tokenizer'}",
            f"--config.train.steps={STEPS}", "--config.train.checkpoint_every=2", "--config.data.workers=0",
            "--config.train.learning_rate=1e-3", "--config.data.face_detector.kind=haar", *extra]


def metrics(workdir: Path) -> dict[int, dict]:
    """Each step's last metrics line (a resumed run rewrites the steps after its checkpoint)."""
    return {line["step"]: line for line in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    """The run of reference; it also evaluates every 4 steps (evaluation changes no state)."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    evaluation = ("--config.train.eval_every=4", f"--config.evals.dfew.manifest={data / 'eval.jsonl'}",
                  "--config.evals.dfew.classes=w20,w21", "--config.eval.max_new_tokens=4")
    assert cli.main(["--json", *args(data, workdir, *evaluation)]) == 0
    return workdir


def test_a_run_writes_metrics_events_checkpoints_and_a_final_checkpoint(uninterrupted, tmp_path):
    lines = metrics(uninterrupted)
    assert sorted(lines) == list(range(1, STEPS + 1))
    for line in lines.values():
        assert {"step", "loss", "learning_rate", "grad_norm", "tokens_per_s", "clips_per_s", "mfu"} <= set(line)
        assert np.isfinite(line["loss"]) and line["tokens_per_s"] > 0 and line["finite"]
    assert lines[STEPS]["loss"] < lines[1]["loss"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(uninterrupted / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == list(range(1, STEPS + 1))
    assert events.Scalars("loss")[-1].value == pytest.approx(lines[STEPS]["loss"])
    assert Checkpoints(uninterrupted / "checkpoints", keep=3).all_steps() == [4, 6, 8]
    run = json.loads((uninterrupted / "config.json").read_text())
    assert run["config"]["train"]["phase"] == "instruction_tuning" and run["config"]["data"]["batch_size"] == 8

    model, params = omni_jax.load_pretrained(uninterrupted / "final")
    assert model.config.num_frames == 2 and jax.tree.leaves(params)
    meta = json.loads((uninterrupted / "final" / "omni_jax.json").read_text())
    assert meta["trained"]["phase"] == "instruction_tuning" and meta["trained"]["steps"] == STEPS
    assert (uninterrupted / "final" / "tokenizer.json").exists()
    assert cli.main(["export", "--src", str(uninterrupted / "final"), "--dst", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "config.json").exists()


def test_the_configured_evaluators_run_during_training(uninterrupted):
    evaluations = [json.loads(line) for line in (uninterrupted / "eval" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evaluations] == [4, 8]
    assert all({"uar", "war", "unmapped"} <= set(e["dfew"]) and e["dfew"]["clips"] == 3 for e in evaluations)
    predicted = (uninterrupted / "eval" / "step_8" / "predictions" / "dfew.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in predicted] == ["c0", "c1", "c2"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(uninterrupted / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("eval/dfew/war")] == [4, 8]


WORKER = "--config.data.workers=1"  # a data worker process: signals to the process group reach it too


def _launch(data: Path, workdir: Path) -> subprocess.Popen:
    """A run with a data worker, in a process group of its own (as a scheduler starts it)."""
    # XLA_FLAGS and the session's compilation cache as conftest set them (8 devices, long
    # timeouts; the step the in-process run of reference compiled is loaded, not compiled again).
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-m", "omni_jax.cli", "--json", *args(data, workdir, WORKER)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait_for(condition, running: subprocess.Popen | Processes, what: str, timeout: float = 300) -> None:
    """Until `condition()`; fails if the run ends first (showing its output) or after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if isinstance(running, Processes):
            output = running.ended()
        else:
            output = running.stdout.read() if running.poll() is not None else None
        if output is not None:
            raise AssertionError(f"the run ended before {what}:\n{output[-3000:]}")
        if time.monotonic() > deadline:
            running.kill()
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.02)


def logged_steps(workdir: Path) -> int:
    return len((workdir / "metrics.jsonl").read_text().splitlines()) if (workdir / "metrics.jsonl").exists() else 0


def assert_equals_the_uninterrupted_run(workdir: Path, uninterrupted: Path, exact: bool) -> None:
    """Every step's metrics once (the lines written after a restored step are dropped) and the
    final parameters: `exact`ly the uninterrupted run's, or within float32 summation order (the
    loss and gradient norms, the whole and each trained subtree's, per step: a gradient scaled or
    reduced wrongly across processes, which Adam's update would hide, changes them)."""
    expected, got = metrics(uninterrupted), metrics(workdir)
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(expected)
    norms = sorted(k for k in expected[1] if k.startswith("grad_norm/"))
    assert "grad_norm/language_model" in norms and "grad_norm/audio_projector" in norms
    for key in ("loss", "grad_norm", "assistant_tokens", *norms):
        got_values, expected_values = [got[k][key] for k in steps], [expected[k][key] for k in steps]
        if exact:
            assert got_values == expected_values, key
        else:
            np.testing.assert_allclose(got_values, expected_values, rtol=1e-5, err_msg=key)
    _, final = omni_jax.load_pretrained(workdir / "final")
    _, reference = omni_jax.load_pretrained(uninterrupted / "final")
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(reference)):
        if exact:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        else:
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=5e-5)


def ctrl_c(running: subprocess.Popen, times: int) -> str:
    """Ctrl-C `times` (SIGINT to the process group, the data worker included, as a terminal
    sends it); the run's output once it has ended with 130 printing no traceback."""
    for i in range(times):
        time.sleep(0.2 * bool(i))
        os.killpg(running.pid, signal.SIGINT)
    output = running.communicate(timeout=300)[0]
    assert running.returncode == 130, output[-3000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    assert "terminated unexpectedly" not in output, output[-3000:]
    return output


def test_sigkill_ctrl_c_and_two_ctrl_cs_then_resume_equal_the_uninterrupted_run(data, uninterrupted, tmp_path):
    """One run, stopped every way a single process is, each time rerun: killed (SIGKILL) once
    its first checkpoint is committed; a Ctrl-C saves at the next step and exits 130 in one
    line; two Ctrl-Cs stop at once (130, nothing saved); the last rerun goes to the end. Every
    step after a restore has the uninterrupted run's loss exactly, metrics.jsonl holds each
    step once, and the final parameters are the same. (SIGTERM, which sets what a first Ctrl-C
    sets, is the two-process test's.)"""
    workdir = tmp_path / "run"
    killed = _launch(data, workdir)
    _wait_for(lambda: (workdir / "checkpoints" / "2" / "commit_success.txt").exists(), killed, "checkpoint 2")
    killed.send_signal(signal.SIGKILL)
    killed.wait()

    interrupted = _launch(data, workdir)
    written = logged_steps(workdir)
    _wait_for(lambda: logged_steps(workdir) >= written + 1, interrupted, "a step of the rerun")
    output = ctrl_c(interrupted, 1)
    summary = json.loads(output.splitlines()[-1])
    assert summary["stopped"] == "interrupted" and summary["resumed_from"] == 2
    assert summary["step"] in summary["checkpoints"] and summary["step"] < STEPS
    assert (workdir / "checkpoints" / str(summary["step"]) / "commit_success.txt").exists()
    assert f"interrupted (Ctrl-C) and saved at step {summary['step']}" in output

    again = _launch(data, workdir)
    _wait_for(lambda: logged_steps(workdir) >= summary["step"] + 1, again, "a step of the second rerun")
    assert "omni-jax train: stopped (Ctrl-C)" in ctrl_c(again, 2)
    assert not (workdir / "final").exists()

    assert cli.main(["--json", *args(data, workdir, WORKER)]) == 0
    assert_equals_the_uninterrupted_run(workdir, uninterrupted, exact=True)


def test_two_processes_preempted_and_resumed_equal_one_process(data, uninterrupted, tmp_path):
    """A 2-process run (4 + 4 devices, 4 clips per host per step), SIGTERM to one of its
    processes once two steps are logged (a preempted host: jax's preemption service tells the
    other): both save at the same step and exit 0; rerun to the end, the losses of every step
    and the final parameters equal the single-process run's (the hosts' batches together are
    its batches)."""
    workdir = tmp_path / "run"
    # one mesh of 8 devices spanning both processes, each host reading its share
    first = Processes(args(data, workdir), tmp_path / "first", cwd=REPO)
    _wait_for(lambda: logged_steps(workdir) >= 2, first, "two steps")
    first.processes[1].send_signal(signal.SIGTERM)
    summaries = [json.loads(output.splitlines()[-1]) for output in first.wait()]
    assert [s["stopped"] for s in summaries] == ["preempted"] * 2, summaries
    step = summaries[0]["step"]
    assert summaries[1]["step"] == step < STEPS and step in summaries[0]["checkpoints"]
    assert not (workdir / "final").exists()
    outputs = Processes(args(data, workdir), tmp_path / "second", cwd=REPO).wait()
    summary = json.loads(outputs[0].splitlines()[-1])
    assert summary["resumed_from"] == step and summary["stopped"] == "finished"
    assert_equals_the_uninterrupted_run(workdir, uninterrupted, exact=False)


def test_a_checkpoint_restores_onto_another_mesh(data, uninterrupted):
    """Saved on fsdp=8, restored on data 2 × fsdp 2 × tensor 2: the same values, each leaf in
    its new shards."""
    run = json.loads((uninterrupted / "config.json").read_text())["config"]
    cfg = omni_emotion.get_config("tiny")
    cfg.train.update(run["train"])
    values = []
    for mesh in (make_mesh(1, 8, 1), make_mesh(2, 2, 2)):
        trainer = make_trainer(training_model_config(cfg), mesh, cfg.train, STEPS)
        checkpoints = Checkpoints(uninterrupted / "checkpoints", keep=3)
        state = checkpoints.restore(STEPS, trainer.abstract_state)
        checkpoints.close()
        for leaf, spec in zip(jax.tree.leaves(state), jax.tree.leaves(trainer.abstract_state)):
            assert leaf.sharding == spec.sharding
        values.append(jax.tree.map(np.asarray, state))
    assert int(values[1]["step"]) == STEPS
    for a, b in zip(jax.tree.leaves(values[0]), jax.tree.leaves(values[1])):
        np.testing.assert_array_equal(a, b)


def test_user_errors_are_clear_and_leave_nothing_half_done(data, uninterrupted, tmp_path, capsys):
    def error(*argv: str) -> str:
        capsys.readouterr()
        assert cli.main(list(argv)) == 1
        return capsys.readouterr().err

    base = args(data, tmp_path / "new")
    assert "train has no field 'learning_rat'" in error(*base, "--config.train.learning_rat=1")
    assert "expected an integer" in error(*base, "--config.train.steps=many")
    assert "expected true or false" in error(*base, "--config.train.allow_config_change=maybe")
    assert "--config.train.steps=-3 is out of range: allowed [0, ∞)" in error(*base, "--config.train.steps=-3")
    # --config paths are checked when the command line is read, as path flags are
    assert f"--config.data.manifest={tmp_path / 'absent.jsonl'}: no such file or directory" in error(
        *[a for a in base if "manifest" not in a], f"--config.data.manifest={tmp_path / 'absent.jsonl'}")
    assert f"--config.data.tokenizer={tmp_path / 'nothing'}: no such file or directory" in error(
        *base, f"--config.data.tokenizer={tmp_path / 'nothing'}")
    (tmp_path / "empty").mkdir()
    assert "empty: no tokenizer in this folder (expected one of tokenizer.json" in error(
        *base, f"--config.data.tokenizer={tmp_path / 'empty'}")
    assert "'w20' is not in the class list" in error(*base, "--config.train.eval_every=2", "--config.evals.dfew."
                                                     f"manifest={data / 'eval.jsonl'}")
    assert not (tmp_path / "new").exists()
    message = error(*args(data, uninterrupted, "--config.train.learning_rate=5e-4"))
    assert "holds a run with another config" in message and "train.learning_rate" in message


def test_a_disk_that_fills_during_a_save_keeps_the_committed_checkpoints(data, tmp_path, capsys):
    """The checkpoints folder on a 3 MiB tmpfs: checkpoint 2 (~2 MiB) fits, checkpoint 4 does
    not. The run stops with an error naming the committed checkpoints, and checkpoint 2 still
    restores."""
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(workdir / "checkpoints")], check=True)
    try:
        assert cli.main(args(data, workdir)) == 1
        message = capsys.readouterr().err
        assert "failed" in message and "the committed checkpoints [2] are intact" in message, message[-2000:]
        checkpoints = Checkpoints(workdir / "checkpoints", keep=3)
        assert checkpoints.latest_step() == 2
        cfg = omni_emotion.get_config("tiny")
        trainer = make_trainer(training_model_config(cfg), make_mesh(1, 8, 1), cfg.train, STEPS)
        assert int(checkpoints.restore(2, trainer.abstract_state)["step"]) == 2
        checkpoints.close()
    finally:
        subprocess.run(["umount", str(workdir / "checkpoints")], check=True)


def test_the_run_record_is_replaced_whole(tmp_path, monkeypatch):
    """The other hosts of a resumed run read config.json while process 0 rewrites it: written
    beside it and renamed into place, it is never seen cut open (an empty file would stop the
    resume of a run on several hosts)."""
    written = []
    write_text = Path.write_text
    monkeypatch.setattr(Path, "write_text",
                        lambda self, *a, **k: (written.append(self.name), write_text(self, *a, **k))[1])
    cfg = omni_emotion.get_config("tiny")
    for _ in range(2):  # a new run, then its resume
        check_workdir(tmp_path, cfg, None)
    assert written and RUN_FILE not in written
    assert json.loads((tmp_path / RUN_FILE).read_text())["config"]["train"]["phase"] == cfg.train.phase


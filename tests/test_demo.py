"""`make demo`'s pipeline end to end on a handful of clips, two steps a phase, through `--seeds`
(one seed, not 0): synth → convert → assemble → the three phases, each from the previous one's
workdir → eval (all modalities, and with the voices silenced in the same run) → infer → export → the summary and
its images, then the table over the seeds (~2.5 min on 2 cores: ten `omni-jax` processes,
each importing JAX and compiling). The table's figures over several seeds are checked below on
distinct ones; that another seed draws other data, in tests/synth/test_clips.py."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def check_run(out: Path) -> None:
    """One seed's run in `out`: every stage's outputs, each phase from the previous one's workdir."""
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["rows"]) == {"v+a+f", "v+a+f, voice silenced"}
    for row in summary["rows"].values():
        assert 0 <= row["uar"] <= 1 and 0 <= row["voice_pairs"] <= 1
    assert "eval_0000" in summary["infer"]
    assert sorted(p.name for p in (out / "eval").iterdir()) == ["vaf"]  # the silenced clips asked in v+a+f's run
    assert {"dfew", "dfew_silenced", "emer_ov"} <= set(json.loads((out / "eval" / "vaf" / "metrics.json").read_text()))
    for phase, init in (("audio_alignment", out / "start"), ("face_alignment", out / "runs" / "audio_alignment"),
                        ("instruction_tuning", out / "runs" / "face_alignment")):
        workdir = out / "runs" / phase
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in lines] == [1, 2]
        # the commands ran in `out` with relative paths; what they record is absolute
        assert json.loads((workdir / "config.json").read_text())["init"] in (str(init.absolute()),
                                                                           str((init / "final").absolute()))
        assert (workdir / "final" / "omni_jax.json").exists()
    assert (out / "exported" / "config.json").exists() and list((out / "exported").glob("*.safetensors"))
    for image in ("loss.png", "confusion.png", "ablation.png"):
        assert (out / image).read_bytes()[:4] == b"\x89PNG"


def test_the_demo_runs_every_stage_through_the_commands(tmp_path):
    """`--seeds 3`: the whole run with its seed in OUT/seed_3/ (its data, initialisations and
    phases, every command run in that folder with relative paths), then the table over the seeds,
    printed and in seeds.md / seeds.json, each figure's first seed, mean and min–max equal to the
    seed's summary.json figure. (`make demo` is the same run for one seed into OUT.)"""
    out = tmp_path / "demo"
    (out / "stale").mkdir(parents=True)  # a previous run's leftovers are replaced
    done = subprocess.run([sys.executable, str(REPO / "experiments" / "demo.py"), "--out", str(out), "--clips", "7",
                           "--steps", "2", "--tower-steps", "3", "--subsets", "v+a+f", "--devices", "1",
                           "--seeds", "3"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not (out / "stale").exists() and "| v+a+f |" in done.stdout
    summary = json.loads((out / "seed_3" / "summary.json").read_text())
    check_run(out / "seed_3")
    assert summary["seed"] == 3
    run = json.loads((out / "seed_3" / "runs" / "instruction_tuning" / "config.json").read_text())
    assert run["config"]["train"]["seed"] == run["config"]["data"]["seed"] == 3
    assert (out / "cache").is_dir() and not (out / "seed_3" / "cache").exists()  # only compiled programs shared

    table = json.loads((out / "seeds.json").read_text())
    assert table["seeds"] == [3] and set(table["rows"]) == {"v+a+f", "v+a+f, voice silenced"}
    markdown = (out / "seeds.md").read_text()
    assert markdown.strip() in done.stdout
    for name, row in table["rows"].items():
        for key in ("uar", "war", "emer_ov", "voice_pairs", "face_pairs"):
            value = summary["rows"][name][key]
            assert row[key] is None if value is None else row[key] == dict(first=value, mean=value, min=value,
                                                                           max=value, seeds={"3": value})


def test_the_table_over_seeds_is_each_figures_first_mean_and_range():
    """The smoke runs' figures all come out alike (one held-out clip): distinct ones here."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo", REPO / "experiments" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    figures = lambda uar, emer, pairs: dict(
        uar=uar, war=uar + 0.1, emer_ov=emer, voice_pairs=pairs, face_pairs=1 - pairs
    )
    summaries = {2: {"rows": {"v": figures(0.131, 0.179, 0.54), "silenced": figures(0.369, None, 0.51)}},
                 0: {"rows": {"v": figures(0.310, 0.2, 0.6), "silenced": figures(0.143, None, 0.55)}},
                 1: {"rows": {"v": figures(0.298, 0.1, 0.5), "silenced": figures(0.274, None, 0.49)}}}
    rows = demo.over_seeds(summaries)
    assert rows["v"]["uar"].pop("seeds") == {2: 0.131, 0: 0.310, 1: 0.298}
    assert rows["v"]["uar"] == pytest.approx(dict(first=0.131, mean=0.739 / 3, min=0.131, max=0.310))
    assert rows["silenced"]["face_pairs"]["mean"] == pytest.approx(1 - 1.55 / 3) and rows["silenced"]["emer_ov"] is None
    assert demo.table(rows, demo.over_seeds_cell).splitlines()[2:] == [
        "| v | 0.131 · 0.246 (0.131–0.310) | 0.231 · 0.346 (0.231–0.410) | 0.179 · 0.160 (0.100–0.200) "
        "| 0.54 · 0.55 (0.50–0.60) | 0.46 · 0.45 (0.40–0.50) |",
        "| silenced | 0.369 · 0.262 (0.143–0.369) | 0.469 · 0.362 (0.243–0.469) | — "
        "| 0.51 · 0.52 (0.49–0.55) | 0.49 · 0.48 (0.45–0.51) |"]

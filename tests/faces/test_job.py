"""`omni-jax faces` on clips the tests write from a real photograph: the main face at every time
it is visible, no box where none is, never the bystander; every line kept; resume after a kill;
two processes give the one-process manifest; previews; bad input counted, not fatal."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from omni_jax import cli
from omni_jax.testing import face_scenes
from tests.processes import Processes, devices_env

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    directory = tmp_path_factory.mktemp("scenes")
    return directory, face_scenes.write_scenes(directory)


def faces_command(*argv: str, json_summary: bool = False) -> list[str]:
    return [sys.executable, "-m", "omni_jax.cli", *["--json"] * json_summary, "faces", *argv]


def faces(*argv: str, json_summary: bool = False) -> subprocess.CompletedProcess:
    """`omni-jax faces ARGV` in a process whose code is optimised: the detector over a 1280×720
    scene's 17 frames runs ~10× slower in the suite's compile-fast code (a test's 30 s → 10 s,
    the process's start included; after the tracking fixture's run, its programs come cached)."""
    return subprocess.run(faces_command(*argv, json_summary=json_summary), cwd=REPO,
                          env=devices_env(1, optimized=True), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def tracked(scenes):
    """The scenes' manifest, `omni-jax faces`' output for it and its summary: one process, its
    code optimised (the detector over every frame runs more than it compiles)."""
    directory, written = scenes
    manifest = directory / "scenes.jsonl"
    manifest.write_text("".join(json.dumps({"id": s.name, "video": f"{s.name}.mp4"}) + "\n" for s in written))
    out = directory / "scenes_faces.jsonl"
    done = faces("--manifest", str(manifest), "--out", str(out), json_summary=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return manifest, out, json.loads(done.stdout.splitlines()[-1])


def test_the_main_face_whenever_it_is_visible_and_no_box_where_none_is(scenes, tracked):
    _, written = scenes
    _, out, summary = tracked
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    total = face_scenes.Hits(0, 0, 0, 0, 0)
    for scene, line in zip(written, lines):
        hits = face_scenes.score(scene, line["faces"])
        assert hits.hit_rate >= 0.98 and hits.false_boxes == 0 and hits.bystander == 0, (scene.name, hits)
        total += hits
    assert total.visible > 100 and total.no_face >= 17  # every scene counted, `empty` and the occlusion too
    assert summary["clips"] == 8 and summary["clips_without_face"] == 1  # `empty`
    assert summary["faces_per_clip"] == 1.0  # the cut's two tracks, `empty`'s none; the bystander's is never given


def test_faces_by_time_cover_the_rate_and_the_sampled_frames(scenes, tracked):
    _, out, _ = tracked
    moving = json.loads(out.read_text().splitlines()[0])
    times = [f["t"] for f in moving["faces"]]
    assert times == sorted(times) and len(times) == 17  # 4 a second over 2.9 s and the 8 sampled frames
    assert {0.0, 0.4, 0.8, 2.9} <= {round(t, 3) for t in times}
    face = moving["faces"][0]
    assert set(face) == {"t", "box", "score", "track"} and face["score"] > 0.9 and face["track"] == 0


def clip_manifest(directory: Path, scenes: list, copies: int) -> Path:
    """Lines of every kind: clips without boxes (`copies` times), one with boxes, one without a
    video, an unreadable clip, a missing one, a malformed line."""
    (directory / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    lines = [json.dumps({"id": f"{s.name}-{k}", "video": str(s.path)}) for k in range(copies) for s in scenes]
    lines += [json.dumps({"id": "given", "video": str(scenes[0].path), "faces": [{"t": 0.0, "box": [1, 2, 30, 40]}]}),
              json.dumps({"id": "text-only", "conversations": []}),
              json.dumps({"id": "broken", "video": "broken.mp4"}),
              json.dumps({"id": "gone", "video": "gone.mp4"}),
              '{"id": "cut off", "video": ']
    manifest = directory / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_every_line_is_kept_and_bad_ones_are_counted(scenes, tracked, tmp_path):
    _, written = scenes
    manifest = clip_manifest(tmp_path, written[:2], copies=1)
    out = tmp_path / "out.jsonl"
    # two of the four clips cannot be read: within a skip fraction of a half, more than its default
    argv = ["--manifest", str(manifest), "--out", str(out), "--preview", str(tmp_path / "p")]
    done = faces(*argv, "--config.faces.max_skip_fraction=0.5")
    assert done.returncode == 0, done.stderr[-3000:]
    given, got = manifest.read_text().splitlines(), out.read_text().splitlines()
    assert len(got) == len(given) == 7
    assert got[2:] == given[2:]  # boxes kept, no video, unreadable, missing, malformed: byte for byte
    assert all(f["box"] for f in json.loads(got[0])["faces"])
    sheets = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert sheets == ["000001-moving-0.png", "000002-turned-0.png"]
    sheet = cv2.imread(str(tmp_path / "p" / sheets[0]))
    assert sheet.shape[1] == 4 * 320 and (sheet[..., 1] > 200).sum() > 100  # four columns, green boxes drawn
    assert cli.main(["faces", "--manifest", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert cli.main(["faces", "--manifest", str(manifest), "--out", str(out)]) == 2  # exists: nothing overwritten


def test_summary_and_redo(scenes, tracked, tmp_path):
    _, written = scenes
    manifest = clip_manifest(tmp_path, [written[0], written[7]], copies=1)  # moving, empty
    out = tmp_path / "out.jsonl"
    done = faces("--manifest", str(manifest), "--out", str(out), "--config.faces.redo=true",
                 "--config.faces.max_skip_fraction=0.5", json_summary=True)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["clips"] == 3 and summary["clips_without_face"] == 1 and summary["boxes_kept"] == 0
    assert summary["times_with_face"] == 0.6667  # the mean share over the clips: 1, 1, 0
    assert summary["faces_per_clip"] == 0.6667  # one track, one, none
    assert summary["unreadable"] == {"corrupt_video": 1, "missing_file": 1}
    assert summary["malformed"] == 1 and summary["without_video"] == 1
    redone = json.loads(out.read_text().splitlines()[2])
    assert redone["id"] == "given" and len(redone["faces"]) == 17  # --redo: detected, the given box replaced


def test_a_killed_run_resumes_with_no_line_lost_or_doubled(tracked, tmp_path):
    """SIGKILL after two of four scenes' lines; the same command resumes and writes the
    manifest a run never killed writes."""
    manifest, single, _ = tracked
    four = manifest.parent / f"four-{tmp_path.name}.jsonl"  # beside the clips its lines name
    four.write_text("".join(manifest.read_text().splitlines(keepends=True)[:4]))
    out = tmp_path / "out.jsonl"
    killed = subprocess.Popen(faces_command("--manifest", str(four), "--out", str(out)), cwd=REPO,
                              env=devices_env(1, optimized=True), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    progress = tmp_path / ".out.jsonl.progress-0-of-1"
    deadline = time.monotonic() + 300
    while not (progress.exists() and len(progress.read_text().splitlines()) >= 3):  # the key and two lines
        assert killed.poll() is None and time.monotonic() < deadline, killed.communicate()[0][-3000:]
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    done = len(progress.read_text().splitlines()) - 1
    assert not out.exists() and 2 <= done < 4
    resumed = faces("--manifest", str(four), "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming after round {done} of 4" in resumed.stderr
    assert out.read_text() == "".join(single.read_text().splitlines(keepends=True)[:4])
    assert not progress.exists()


def test_two_processes_give_the_one_process_manifest(tracked, tmp_path):
    """Two processes take three scenes' lines (one each, then one more and a round with none)."""
    manifest, single, _ = tracked
    three = manifest.parent / f"three-{tmp_path.name}.jsonl"  # beside the clips its lines name
    three.write_text("".join(manifest.read_text().splitlines(keepends=True)[:3]))
    out = tmp_path / "out.jsonl"
    Processes(["faces", "--manifest", str(three), "--out", str(out)], tmp_path / "logs", devices=1,
              cwd=manifest.parent, optimized=True).wait()
    assert out.read_text() == "".join(single.read_text().splitlines(keepends=True)[:3])


def test_a_checkpoint_of_another_model_is_one_line(tmp_path, capsys):
    from omni_jax.checkpoint_dir import CONFIG_FILE

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / CONFIG_FILE).write_text(json.dumps({"model_type": "whisper", "config": {}}))
    (tmp_path / "m.jsonl").write_text('{"id": "a", "video": "a.mp4"}\n')
    assert cli.main(["faces", "--manifest", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "o.jsonl"),
                     f"--config.faces.detector.weights={tmp_path / 'ckpt'}"]) == 1
    err = capsys.readouterr().err
    assert "'whisper' checkpoint, not a face detector" in err and "Traceback" not in err
    assert not (tmp_path / "o.jsonl").exists()


def test_convert_retinaface_writes_a_checkpoint_the_job_reads(scenes, tracked, tmp_path):
    _, written = scenes
    assert cli.main(["convert-retinaface", "--dst", str(tmp_path / "det")]) == 0
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "far", "video": str(written[3].path)}) + "\n")
    done = faces("--manifest", str(manifest), "--out", str(tmp_path / "o.jsonl"),
                 f"--config.faces.detector.weights={tmp_path / 'det'}")
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads((tmp_path / "o.jsonl").read_text())["faces"]
    assert face_scenes.score(written[3], found).hit_rate >= 0.98
    assert np.isfinite([f["score"] for f in found]).all()

"""How often the faces fed to the face encoder are the main person's, on clips made from a real
photograph (omni_jax.testing.face_scenes: moving, turned, dim, far, bystander, cut, occluded, empty):
`omni-jax faces` (RetinaFace with the bundled weights + the tracker) against OpenCV's Haar
cascade (the pipeline's detector before it) on the very same frames.

Counted at every detected time (4 per second plus the 8 sampled frames): hit = a box with IoU ≥
0.5 against the main face where it is visible; bystander = the box is the second face's; false
= a box where no face is. Prints a table per scene and the totals (docs/faces.md records them).

    python experiments/face_hit_rate.py [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from omni_jax import xla_cpu

xla_cpu.configure()

from omni_jax.data import video  # noqa: E402
from omni_jax.faces import job  # noqa: E402
from omni_jax.faces.finder import tracked_faces  # noqa: E402
from omni_jax.testing import face_scenes  # noqa: E402


def haar_by_time(scene: face_scenes.Scene, times: list[float]) -> list[dict]:
    """Haar's largest frontal face on the frames shown at `times` (as omni-jax faces decodes them)."""
    clip = video.load_frames(scene.path, video.NUM_FRAMES, rate=job.RATE)
    assert [round(t, 6) for t in clip.timestamps] == [round(t, 6) for t in times]
    return [{"t": t, "box": None if box is None else list(box)} for t, box in
            zip(times, video.detect_faces(clip.frames))]


def measure(directory: Path) -> dict[str, dict[str, face_scenes.Hits]]:
    scenes = face_scenes.write_scenes(directory / "clips")
    manifest = directory / "scenes.jsonl"
    manifest.write_text("".join(json.dumps({"id": s.name, "video": str(s.path)}) + "\n" for s in scenes))
    out = directory / "scenes_faces.jsonl"
    out.unlink(missing_ok=True)
    job.run(manifest, out, tracked_faces("retinaface"), preview_dir=directory / "preview", progress=False)
    results = {}
    for scene, line in zip(scenes, out.read_text().splitlines()):
        faces = json.loads(line)["faces"]
        results[scene.name] = {"retinaface": face_scenes.score(scene, faces),
                               "haar": face_scenes.score(scene, haar_by_time(scene, [f["t"] for f in faces]))}
    return results


def table(results: dict[str, dict[str, face_scenes.Hits]]) -> str:
    rows = ["| scene | times visible | RetinaFace + tracks: hits | bystander | false boxes | Haar: hits | bystander "
            "| false boxes |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    total = {k: face_scenes.Hits(0, 0, 0, 0, 0) for k in ("retinaface", "haar")}
    for name, hits in [*results.items(), ("**all**", None)]:
        if hits is None:
            hits = total
        else:
            total = {k: total[k] + hits[k] for k in total}
        ours, haar = hits["retinaface"], hits["haar"]
        rows.append(f"| {name} | {ours.visible} | {ours.hits} ({ours.hit_rate:.1%}) | {ours.bystander} | "
                    f"{ours.false_boxes} of {ours.no_face} | {haar.hits} ({haar.hit_rate:.1%}) | {haar.bystander} | "
                    f"{haar.false_boxes} of {haar.no_face} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="keep the clips, manifests and previews here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.out or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        print(table(measure(directory)))


if __name__ == "__main__":
    main()

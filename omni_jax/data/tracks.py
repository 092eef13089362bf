"""Face tracks from per-frame detections, and the clip's principal face by time.

A face detector's boxes, one `FrameDetections` per detected frame, become tracks (`track`), and
the tracks become the manifest's boxes by time (`principal_faces`): at each requested time the
main person's face, or the most likely other face where the main person is not seen, or None
where no face is.

Association (ByteTrack's, without its Kalman filter), frame by frame:
  - a shot cut (`FrameDetections.cut`, e.g. from `shot_cuts`) ends every live track first;
  - each live track predicts its box at the frame's time with constant velocity in box centre
    and size, from its last two observations (a track seen once predicts its last box);
  - first pass: the high-score detections (score ≥ high_score) against all live tracks by IoU;
    second pass: the low-score ones (low_score ≤ score < high_score) against the tracks still
    unmatched. Each pass is one Hungarian assignment that maximises the summed IoU in excess of
    `match_iou` (ByteTrack's assignment at cost 1 − IoU with cost limit 1 − match_iou: a pair
    under match_iou is never matched, and no good pair is given up to force a poor one);
  - unmatched high-score detections start tracks; unmatched low-score ones are dropped (a
    low-score box only continues a face already seen clearly);
  - a track unmatched for more than `max_gap` consecutive detected frames ends at its last
    observation; matched again within `max_gap`, its missed frames get boxes linear in time
    between the two observations (observed False, score 0.0: nothing was detected there);
  - at the end, tracks observed in fewer than `min_hits` frames are dropped (spurious
    detections), unless the clip has fewer detected frames than that; the kept tracks are
    numbered 0, 1, 2, … in order of creation (frame, then detection order).

Principal face: tracks rank by

    rank = observed frames × mean observed box area (px²) × mean observed score

so the person there most of the clip outranks a bystander seen briefly even when the
bystander's box is larger. At each time the highest-ranked track covering it gives the box:
the principal where it is, else the most likely other track. A track covers the times from its
first to its last widened by `tolerance` at both ends, except where its nearest time is in a
bridged gap: the gap keeps the person's identity across an occlusion or a missed detection,
but no box is given where no face was seen; the box is the one at its nearest time. Output,
one dict per requested time (docs/data.md's boxes by time):
`{"t": t, "box": [x0, y0, x1, y1], "score": s, "track": id}` (box rounded to 0.1 px, score to 4 decimals)
or `{"t": t, "box": None}`.

Shot cuts: the Bhattacharyya distance between hue–saturation histograms of consecutive frames
(downscaled to 64×64). Hue and saturation do not change when the light scales every channel
alike, so dimming, and moving content (a face, the camera), leave the histogram nearly as it
was, while a different scene changes it; a cut between scenes of the same colours (e.g.
greyscale footage) goes unnoticed.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Sequence

import cv2
import numpy as np
import scipy.optimize

# Seconds a track's coverage extends past its first and last times: half the 0.25 s interval
# of detection at 4 fps (and a little more), so a time between two detected frames belongs to
# the tracks on either side of it at that rate or faster.
TIME_TOLERANCE = 0.13
CUT_SIZE = 64                 # frames are downscaled to CUT_SIZE² pixels before their histograms
CUT_BINS = (18, 16)           # hue (OpenCV's 0–180: 10 units a bin), saturation (0–256)
# Bhattacharyya distance (OpenCV's: sqrt(1 − Σ sqrt(p·q)), 0 same histogram, 1 disjoint) above
# which consecutive frames are a cut. On synthetic scenes different scenes measure 0.67–0.92, a
# face moving or new sensor noise 0.05–0.11 (sampling noise of 64² pixels in 288 bins), the light
# halved 0.05. Content of new colours covering a fraction f of the frame measures
# sqrt(1 − sqrt(1 − f)): 0.4 is f = 29 %, so an object entering must fill about a third of the
# frame between two detected frames to read as a cut.
CUT_THRESHOLD = 0.4


@dataclasses.dataclass(frozen=True)
class FrameDetections:
    """One detected frame: its time and the faces found in it."""
    t: float                 # seconds (presentation time)
    boxes: np.ndarray        # [n, 4] float32 pixels x0, y0, x1, y1 (x1/y1 exclusive)
    scores: np.ndarray       # [n] float32 in [0, 1]
    cut: bool = False        # a shot cut lies between the previous detected frame and this one


@dataclasses.dataclass(frozen=True)
class TrackerConfig:
    """ByteTrack's thresholds, for boxes every detected frame (e.g. 4 fps)."""
    high_score: float = 0.6     # detections that start and first-match tracks
    low_score: float = 0.3      # ByteTrack's second pass: lower-score boxes only continue existing tracks
    match_iou: float = 0.3      # minimum IoU (against the constant-velocity prediction) to associate
    max_gap: int = 3            # detected frames a track may go unseen and still continue (bridged by interpolation)
    min_hits: int = 2           # tracks seen in fewer frames are dropped (spurious), unless the clip has fewer frames


@dataclasses.dataclass(frozen=True)
class Track:
    """One face through consecutive detected frames."""
    id: int
    times: np.ndarray        # [m] float64 seconds, increasing: every detected frame from its first to its last
    boxes: np.ndarray        # [m, 4] float32
    scores: np.ndarray       # [m] float32: the detection's score; 0.0 at interpolated frames
    observed: np.ndarray     # [m] bool: detected at that time (False: bridged by interpolation)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a: [n, 4], b: [m, 4] boxes x0, y0, x1, y1 → [n, m] intersection over union (0 where both are empty)."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def box_area(boxes: np.ndarray) -> np.ndarray:
    """[n, 4] → [n] areas (0 for inverted boxes)."""
    return np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=-1)


def assign(overlap: np.ndarray, min_iou: float) -> list[tuple[int, int]]:
    """overlap: [tracks, detections] IoU → the (track, detection) pairs of the assignment that
    maximises the summed IoU in excess of `min_iou`, pairs under `min_iou` left out."""
    gain = np.where(overlap >= min_iou, overlap - min_iou, 0.0)  # 0: as good as leaving both unmatched
    rows, cols = scipy.optimize.linear_sum_assignment(gain, maximize=True)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if overlap[r, c] >= min_iou]


def _centre_size(box: np.ndarray) -> np.ndarray:
    return np.concatenate([(box[:2] + box[2:]) / 2, box[2:] - box[:2]])


def _corners(centre_size: np.ndarray) -> np.ndarray:
    centre, size = centre_size[:2], np.maximum(centre_size[2:], 0.0)  # a shrinking box stops at nothing
    return np.concatenate([centre - size / 2, centre + size / 2])


def predict(times: Sequence[float], boxes: Sequence[np.ndarray], t: float) -> np.ndarray:
    """The box at time `t` moving with constant velocity (centre and size) from the last two
    observations (`times`, `boxes`: the observed ones, oldest first); the last box if only one."""
    if len(times) < 2:
        return np.asarray(boxes[-1], np.float64)
    before, last = _centre_size(np.asarray(boxes[-2], np.float64)), _centre_size(np.asarray(boxes[-1], np.float64))
    velocity = (last - before) / (times[-1] - times[-2])
    return _corners(last + velocity * (t - times[-1]))


def interpolate(t0: float, box0: np.ndarray, t1: float, box1: np.ndarray, times: Sequence[float]) -> np.ndarray:
    """[len(times), 4]: the boxes linear in time between box0 at t0 and box1 at t1."""
    w = (np.asarray(times, np.float64)[:, None] - t0) / (t1 - t0)
    return (1 - w) * np.asarray(box0, np.float64) + w * np.asarray(box1, np.float64)


@dataclasses.dataclass
class _Growing:
    """A live track: its rows so far, and the times of the detected frames it has missed since
    its last observation (filled in if it is seen again)."""
    order: int
    times: list[float]
    boxes: list[np.ndarray]
    scores: list[float]
    observed: list[bool]
    missed: list[float] = dataclasses.field(default_factory=list)

    def predict(self, t: float) -> np.ndarray:
        seen = [i for i, o in enumerate(self.observed) if o][-2:]
        return predict([self.times[i] for i in seen], [self.boxes[i] for i in seen], t)

    def observe(self, t: float, box: np.ndarray, score: float) -> None:
        if self.missed:
            bridged = interpolate(self.times[-1], self.boxes[-1], t, box, self.missed)
            self.times += self.missed
            self.boxes += list(bridged)
            self.scores += [0.0] * len(self.missed)
            self.observed += [False] * len(self.missed)
            self.missed = []
        self.times.append(t)
        self.boxes.append(np.asarray(box, np.float64))
        self.scores.append(float(score))
        self.observed.append(True)

    def finish(self, id: int) -> Track:
        boxes = np.array(self.boxes, np.float32).reshape(-1, 4)
        return Track(id=id, times=np.array(self.times, np.float64), boxes=boxes,
                     scores=np.array(self.scores, np.float32), observed=np.array(self.observed, bool))


def _checked(frame: FrameDetections, previous_t: float) -> tuple[np.ndarray, np.ndarray]:
    boxes = np.asarray(frame.boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(frame.scores, np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"frame at t={frame.t}: {len(boxes)} boxes but {len(scores)} scores")
    if not frame.t > previous_t:
        raise ValueError(f"detected frames must have increasing times, got {frame.t} after {previous_t}")
    return boxes, scores


def _associate(live: list[_Growing], boxes: np.ndarray, scores: np.ndarray, t: float,
               config: TrackerConfig) -> tuple[list[tuple[int, int]], np.ndarray]:
    """ByteTrack's two passes → ((live index, detection index) pairs, the unmatched
    high-score detections' indices)."""
    predicted = np.array([growing.predict(t) for growing in live]).reshape(-1, 4)
    high = np.flatnonzero(scores >= config.high_score)
    low = np.flatnonzero((scores >= config.low_score) & (scores < config.high_score))
    first = [(k, int(high[d])) for k, d in assign(iou(predicted, boxes[high]), config.match_iou)]
    rest = np.setdiff1d(np.arange(len(live)), [k for k, _ in first])
    second = [(int(rest[k]), int(low[d])) for k, d in assign(iou(predicted[rest], boxes[low]), config.match_iou)]
    return first + second, np.setdiff1d(high, [d for _, d in first])


def track(frames: Sequence[FrameDetections], config: TrackerConfig = TrackerConfig()) -> list[Track]:
    """frames: the detected frames of one clip in time order → its tracks, by id (the module
    docstring gives the association)."""
    live: list[_Growing] = []
    ended: list[_Growing] = []
    created = itertools.count()
    previous_t = -np.inf
    for frame in frames:
        boxes, scores = _checked(frame, previous_t)
        previous_t = frame.t
        if frame.cut:
            ended += live
            live = []
        pairs, new = _associate(live, boxes, scores, frame.t, config)
        detection = dict(pairs)
        for k, growing in enumerate(live):
            if k in detection:
                growing.observe(frame.t, boxes[detection[k]], scores[detection[k]])
            else:
                growing.missed.append(frame.t)
        ended += [growing for growing in live if len(growing.missed) > config.max_gap]
        live = [growing for growing in live if len(growing.missed) <= config.max_gap]
        for d in new:
            live.append(_Growing(next(created), [], [], [], []))
            live[-1].observe(frame.t, boxes[d], scores[d])
    min_hits = min(config.min_hits, len(frames))
    kept = sorted((g for g in ended + live if sum(g.observed) >= min_hits), key=lambda g: g.order)
    return [growing.finish(id) for id, growing in enumerate(kept)]


def rank(track: Track) -> float:
    """observed frames × mean observed box area × mean observed score."""
    seen = track.observed
    return float(seen.sum() * box_area(track.boxes[seen].astype(np.float64)).mean() * track.scores[seen].mean())


def face_at(ranked: Sequence[Track], t: float, tolerance: float) -> dict:
    """The box at time `t` of the first track in `ranked` covering it, in the manifest's form."""
    for candidate in ranked:
        if candidate.times[0] - tolerance <= t <= candidate.times[-1] + tolerance:
            i = int(np.argmin(np.abs(candidate.times - t)))  # the earlier on a tie
            if not candidate.observed[i]:  # a bridged gap: the face was not seen there (occluded, missed)
                continue
            return {"t": t, "box": [round(float(v), 1) for v in candidate.boxes[i]],
                    "score": round(float(candidate.scores[i]), 4), "track": candidate.id}
    return {"t": t, "box": None}


def principal_faces(tracks: Sequence[Track], times: Sequence[float], tolerance: float = TIME_TOLERANCE) -> list[dict]:
    """One box-by-time dict per requested time (seconds): the highest-ranked track covering it
    (the principal, else the most likely other), or `{"t": t, "box": None}` where none does."""
    ranked = sorted(tracks, key=lambda k: (-rank(k), k.id))
    return [face_at(ranked, float(t), tolerance) for t in times]


def _histogram(frame: np.ndarray) -> np.ndarray:
    small = cv2.resize(frame, (CUT_SIZE, CUT_SIZE), interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    return cv2.calcHist([hsv], [0, 1], None, list(CUT_BINS), [0, 180, 0, 256])


def histogram_distances(frames: np.ndarray) -> np.ndarray:
    """frames: [N, H, W, 3] uint8 RGB → [N − 1] Bhattacharyya distances between the hue–saturation
    histograms of consecutive frames."""
    hists = [_histogram(np.ascontiguousarray(frame)) for frame in frames]
    return np.array([cv2.compareHist(a, b, cv2.HISTCMP_BHATTACHARYYA) for a, b in zip(hists, hists[1:])])


def shot_cuts(frames: np.ndarray, threshold: float = CUT_THRESHOLD) -> np.ndarray:
    """frames: [N, H, W, 3] uint8 RGB, consecutive detected frames of a clip → [N] bool, True where
    frame i starts a new shot (frame 0: False)."""
    cuts = np.zeros(len(frames), bool)
    cuts[1:] = histogram_distances(frames) > threshold
    return cuts

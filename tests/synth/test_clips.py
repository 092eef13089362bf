"""The synthetic emotion clips (omni_jax.synth.clips): deterministic, and each class carries the
face and the voice it is meant to — measured on the written files (decoded frames inside the
manifest's face boxes, decoded audio), not read from the generator's parameters."""
import json

import numpy as np
import pytest

from omni_jax.data import audio, video
from omni_jax.eval import scoring
from omni_jax.synth import clips as synth

CLIPS_PER_CLASS = 2


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    manifests = synth.synthesize(out, clips=7, eval_clips=7 * CLIPS_PER_CLASS, seed=5)
    return out, manifests


def read(path):
    return [json.loads(line) for line in path.open()]


def face_measures(folder, line) -> dict[str, float]:
    """Mouth aspect (height / width of the mouth's pixels: ~1 open, thin when closed), mouth
    curve (centre row below the corners' rows, per face height: > 0 smiling) and brow slope
    (dark pixels above the eyes: their row against the distance from the face's middle; > 0
    when the inner ends are higher, as in sadness) of the clip's first sampled frame."""
    clip = video.load_frames(folder / line["video"], 2)
    box = min(line["faces"], key=lambda b: abs(b["t"] - clip.timestamps[0]))["box"]
    x0, y0, x1, y1 = box
    crop = clip.frames[0, y0:y1, x0:x1].astype(np.float32)
    h, w = crop.shape[:2]
    rows, cols = np.mgrid[:h, :w]
    inside = ((cols - w / 2) / (w / 2)) ** 2 + ((rows - h / 2) / (h / 2)) ** 2 < 0.8  # the head, not the scene
    red, green, blue = np.moveaxis(crop, -1, 0)
    mouth = inside & (rows > h / 2) & (red > 1.8 * green + 10) & (green < 110)
    ys, xs = np.nonzero(mouth)
    aspect = (ys.max() - ys.min() + 1) / (xs.max() - xs.min() + 1)
    off_centre = np.abs(xs - w / 2)
    curve = (ys[off_centre < 0.08 * w].mean() - ys[off_centre > 0.12 * w].mean()) / h if aspect < 0.6 else 0.0
    brightness = (red + green + blue)[h // 2, w // 2]
    brows = inside & (rows > 0.15 * h) & (rows < 0.42 * h) & (red + green + blue < 0.45 * brightness) \
        & (red < 1.8 * green + 10)
    ys, xs = np.nonzero(brows)
    distance = np.abs(xs - w / 2) / w
    slope = np.polyfit(distance[distance > 0.04], ys[distance > 0.04] / h, 1)[0]
    return {"aspect": aspect, "curve": curve, "brow_slope": slope}


def median_pitch(path) -> float:
    """Hz: the median over loud 40-ms frames of the autocorrelation peak between 70 and 450 Hz."""
    samples, rate, size = audio.decode_audio(path).samples, audio.SAMPLE_RATE, 640
    frames = np.stack([samples[i:i + size] for i in range(0, samples.size - size, size // 2)])
    loud = frames[frames.std(1) > 0.3 * frames.std(1).max()]
    pitches = []
    for frame in loud - loud.mean(1, keepdims=True):
        correlation = np.correlate(frame, frame, "full")[size - 1:]
        lo, hi = rate // 450, rate // 70
        pitches.append(rate / (lo + np.argmax(correlation[lo:hi])))
    return float(np.median(pitches))


def test_the_same_seed_writes_the_same_data(written, tmp_path):
    out, manifests = written
    again = synth.synthesize(tmp_path, clips=7, eval_clips=7 * CLIPS_PER_CLASS, seed=5)
    for name in synth.MANIFESTS:
        assert again[name].read_text() == manifests[name].read_text()
    for line in read(manifests["instructions"])[:3] + read(manifests["audio_captions"])[:3]:
        media = line.get("video") or line["audio"]
        assert (tmp_path / media).read_bytes() == (out / media).read_bytes()
    other = synth.synthesize(tmp_path / "other", clips=7, eval_clips=0, seed=6)
    assert other["instructions"].read_text() != manifests["instructions"].read_text()


def test_each_class_shows_its_face_and_speaks_with_its_voice(written):
    out, manifests = written
    measured: dict[str, list[tuple[dict[str, float], float]]] = {}
    for line in read(manifests["eval_classification"]):
        measured.setdefault(line["label"], []).append((face_measures(out, line), median_pitch(out / line["video"])))
    assert sorted(measured) == sorted(synth.CLASSES) and all(len(m) == CLIPS_PER_CLASS for m in measured.values())
    for label, clips in measured.items():
        for face, pitch in clips:
            expression, voice = synth.CUES[label]
            # the face: an open mouth only for the open expression; smiles curve up, drooping
            # mouths down; sad brows rise at the inner ends, scowling ones fall
            assert (face["aspect"] > 0.6) == (expression == "open"), (label, face)
            assert face["curve"] > 0.02 if expression == "smile" else face["curve"] < 0.02, (label, face)
            if expression == "droop":
                assert face["curve"] < -0.02 and face["brow_slope"] > 0.1, (label, face)
            if expression == "scowl":
                assert face["brow_slope"] < -0.15, (label, face)
            if expression in ("smile", "relaxed"):
                assert abs(face["brow_slope"]) < 0.1, (label, face)
            # the voice's pitch, within the speaker's range around the voice's own
            low, high = {"low": (70, 125), "even": (125, 185), "loud": (150, 235), "bright": (195, 285),
                         "shaky": (295, 420)}[voice]
            assert low < pitch < high, (label, voice, pitch)
    # the pairs only the voice tells apart are far apart in pitch; the face-only pairs in the face
    pitches = {label: [p for _, p in clips] for label, clips in measured.items()}
    assert min(pitches["fear"]) > 1.05 * max(pitches["surprise"])
    assert min(pitches["angry"]) > 1.4 * max(pitches["disgust"])
    assert min(f["aspect"] for f, _ in measured["surprise"]) > 2 * max(f["aspect"] for f, _ in measured["happy"])
    assert min(f["brow_slope"] for f, _ in measured["sad"]) > max(f["brow_slope"] for f, _ in measured["disgust"]) + 0.3


def test_manifests_serve_every_phase_and_the_evaluators(written):
    out, manifests = written
    captions = read(manifests["audio_captions"])
    assert all("video" not in line and (out / line["audio"]).exists() for line in captions)
    assert {line["conversations"][1]["value"] for line in captions} <= set(synth.CAPTIONS.values())
    for line in read(manifests["face_classification"]):
        assert line["conversations"][0]["value"] == "<video>\n" + synth.QUESTIONS["classify"]
        assert line["conversations"][1]["value"] in synth.CLASSES
        assert len(line["faces"]) == synth.FPS * synth.SECONDS
    kinds = {line["conversations"][0]["value"] for line in read(manifests["instructions"])}
    assert kinds == {"<video>\n" + synth.QUESTIONS[k] for k in ("classify", "open_vocabulary", "describe")}
    table = scoring.word_groups()
    for line in read(manifests["eval_open_vocabulary"]):
        label = line["id"]  # the references are other words of the class's group than the trained answers
        trained = synth.instruction(synth.CLASSES[int(label.split("_")[1]) % 7], "open_vocabulary")[1]
        assert not set(line["labels"]) & set(trained.split(" , "))
        assert {table[w] for w in line["labels"]} == {table[w] for w in trained.split(" , ")}
    silenced = read(manifests["eval_classification_silenced"])
    assert [line["id"] for line in silenced] == [line["id"] for line in read(manifests["eval_classification"])]
    assert not audio.decode_audio(out / silenced[0]["audio"]).samples.any()
    vocabulary = set(synth.vocabulary())
    for name in ("audio_captions", "face_classification", "instructions"):
        for line in read(manifests[name]):
            for turn in line["conversations"]:
                words = turn["value"].split("\n")[-1].replace(",", " , ").replace(".", " . ").split()
                assert set(words) <= vocabulary, (name, turn)

"""Synthetic emotion clips: real MP4 files (H.264 + AAC) of a drawn face in a scene, speaking.

Each of the seven classes is a face and a voice (`CLASSES`). Some classes share a face and
differ only in the voice (surprise / fear, angry / disgust), others share a voice and differ
only in the face (happy / surprise, sad / disgust): no single modality can tell all seven apart,
both together can. The scene (background colour and objects) is a weak cue: the class's colour
in a third of the clips, any colour otherwise. In the whole frame the face is small (its
expression is a few pixels); its crop (manifest boxes) shows it in detail.

    synthesize(out, clips=336, seed=0)   # = omni-jax synth --out DIR --config.synth.clips=N

writes `clips/` (MP4), `voices/` (M4A for phase 1) and one manifest per use (`MANIFESTS`), each
line a manifest line (docs/data.md): faces by time (the boxes the generator drew), the human turn and
the answer. Every file is a function of (seed, index): the same seed writes the same data.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import scipy.signal

from omni_jax.data.manifest import turns
from omni_jax.data.media_writer import write_media
from omni_jax.progress import QUIET, Progress

CLASSES = ("happy", "surprise", "neutral", "angry", "disgust", "sad", "fear")  # DFEW's seven
# The face and the voice of each class.
CUES = {"happy": ("smile", "bright"), "surprise": ("open", "bright"), "fear": ("open", "shaky"),
        "neutral": ("relaxed", "even"), "sad": ("droop", "low"), "disgust": ("scowl", "low"),
        "angry": ("scowl", "loud")}
# Expressions: mouth curve (+1 corners up), mouth opening, brow height, inner-brow tilt (+1
# inner ends up, as in sadness), eye opening (1 = relaxed).
FACES = {
    "smile": dict(curve=1.0, opening=0.0, brow=0.0, tilt=0.0, eyes=0.7),
    "open": dict(curve=0.0, opening=1.0, brow=1.0, tilt=0.0, eyes=1.4),
    "relaxed": dict(curve=0.0, opening=0.0, brow=0.0, tilt=0.0, eyes=1.0),
    "droop": dict(curve=-1.0, opening=0.0, brow=0.3, tilt=1.0, eyes=0.6),
    "scowl": dict(curve=-0.4, opening=0.0, brow=-1.0, tilt=-1.0, eyes=0.5),
}
# Voices: mean pitch (Hz), pitch contour, syllables per second, loudness (peak amplitude),
# spectral tilt (the glottal source's one-pole smoothing: lower is harsher), breath noise.
VOICES = {
    "bright": dict(pitch=230.0, contour="bounce", tempo=4.5, loudness=0.5, tilt=0.85, breath=0.02),
    "shaky": dict(pitch=340.0, contour="tremble", tempo=6.5, loudness=0.22, tilt=0.9, breath=0.08),
    "even": dict(pitch=150.0, contour="flat", tempo=3.5, loudness=0.35, tilt=0.9, breath=0.02),
    "low": dict(pitch=105.0, contour="fall", tempo=2.2, loudness=0.22, tilt=0.95, breath=0.04),
    "loud": dict(pitch=175.0, contour="stress", tempo=6.0, loudness=0.9, tilt=0.6, breath=0.05),
}
# What the answers say of each cue (phase 3) and of each voice (phase 1 captions).
FACE_WORDS = {"smile": "the face smiles", "open": "the eyes are wide and the mouth is open",
              "relaxed": "the face is relaxed", "droop": "the mouth turns down under raised inner brows",
              "scowl": "the brows are lowered and the eyes narrow"}
VOICE_WORDS = {"bright": "the voice is high and lively", "shaky": "the voice is high , fast and shaky",
               "even": "the voice is even and steady", "low": "the voice is low , slow and falling",
               "loud": "the voice is loud , fast and sharp"}
CAPTIONS = {"bright": "a high lively voice with a bouncing pitch .", "shaky": "a high shaky voice , fast and quiet .",
            "even": "an even voice with a steady pitch .", "low": "a low slow voice with a falling pitch .",
            "loud": "a loud fast voice with sharp falls ."}
# Open-vocabulary answers (training) and references (evaluation): other words of each class's
# group (eval.emotion_words), so that scoring them needs the grouping.
ANSWER_SYNONYMS = {"happy": "joyful", "surprise": "surprised", "neutral": "calm", "angry": "furious",
                   "disgust": "disgusted", "sad": "unhappy", "fear": "scared"}
REFERENCE_SYNONYMS = {"happy": ("glad", "cheerful"), "surprise": ("amazed", "astonished"),
                      "neutral": ("composed", "relaxed"), "angry": ("mad", "irritated"),
                      "disgust": ("repulsed", "revolted"), "sad": ("sorrowful", "gloomy"),
                      "fear": ("afraid", "frightened")}
QUESTIONS = {
    "classify": "Which emotion does the person show ? Options : " + " , ".join(CLASSES) + " . Answer with one word .",
    "open_vocabulary": "Which emotions does the person show ? Answer with emotion words separated by commas .",
    "describe": "What is the person feeling , and why ?",
    "caption": "Describe the voice .",
}
SCENE_COLOURS = ((235, 200, 60), (120, 200, 230), (170, 170, 170), (200, 60, 50), (110, 150, 60), (60, 80, 160),
                 (90, 60, 110))  # one per class, in CLASSES order
SCENE_CUE = 1 / 3  # the fraction of clips whose background is their class's colour
WIDTH, HEIGHT, FPS, SECONDS, RATE = 256, 192, 10, 2.0, 16000
SILENCE = "voices/silence.m4a"
X264_OPTIONS = {"crf": "20", "threads": "1"}  # one thread: the same bytes every run
# One manifest per use: phase 1 (audio only, captions), phase 2 (classification on what is
# seen), phase 3 (classification, open vocabulary and explained answers), held-out evaluation.
# `eval_classification_silenced`: the held-out clips with a silent track in place of their own
# (what is left when the voice is gone); `infer`: one held-out clip asked to explain itself.
MANIFESTS = ("audio_captions", "face_classification", "instructions", "eval_classification",
             "eval_open_vocabulary", "eval_classification_silenced", "infer")


def clip_cues(label: str, rng: np.random.Generator, frame: tuple[int, int] = (WIDTH, HEIGHT)) -> dict[str, Any]:
    """One clip's drawn parameters: the class's face and voice with per-clip jitter, speaker
    pitch, head position and size, lighting, and the scene, in a frame of `frame` (width,
    height) pixels (the head's size follows the height)."""
    face_name, voice_name = CUES[label]
    face = {k: v + rng.normal(0, 0.12) for k, v in FACES[face_name].items()}
    scene = CLASSES.index(label) if rng.random() < SCENE_CUE else int(rng.integers(len(CLASSES)))
    width, height = frame
    scale = height / HEIGHT
    return dict(
        label=label, face_name=face_name, voice_name=voice_name, face=face, frame=frame,
        speaker=rng.uniform(0.88, 1.14), voice_seed=int(rng.integers(2**31)),
        centre=(rng.uniform(0.3, 0.7) * width, rng.uniform(0.38, 0.62) * height), size=rng.uniform(44, 60) * scale,
        drift=rng.normal(0, 4 * scale, 2), light=rng.uniform(0.75, 1.15), skin=rng.uniform(0.85, 1.1),
        scene=scene, objects=[(int(rng.integers(3)), rng.uniform(0, width), rng.uniform(0, height),
                               rng.uniform(8, 30) * scale, tuple(int(c) for c in rng.integers(0, 256, 3)))
                              for _ in range(int(rng.integers(2, 5)))])


def face_box(cues: dict[str, Any], t: float) -> list[int]:
    """[x0, y0, x1, y1] of the head at time t (the head drifts linearly over the clip)."""
    cx, cy = np.asarray(cues["centre"]) + cues["drift"] * t / SECONDS
    w, h = cues["size"] / 2, cues["size"] * 0.62
    return [int(cx - w), int(cy - h), int(math.ceil(cx + w)), int(math.ceil(cy + h))]


def draw_frame(cues: dict[str, Any], t: float) -> np.ndarray:
    """[height, width, 3] uint8 RGB: the scene, then the face at time t."""
    width, height = cues["frame"]
    image = np.empty((height, width, 3), np.float32)
    image[:] = SCENE_COLOURS[cues["scene"]]
    image *= np.linspace(1.1, 0.85, height)[:, None, None]  # light from above
    for kind, x, y, r, colour in cues["objects"]:
        if kind == 0:
            cv2.circle(image, (int(x), int(y)), int(r), colour, -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(image, (int(x - r), int(y - r / 2)), (int(x + r), int(y + r / 2)), colour, -1)
        else:
            cv2.line(image, (int(x - r), int(y)), (int(x + r), int(y + r)), colour, 3, cv2.LINE_AA)
    x0, y0, x1, y1 = face_box(cues, t)
    draw_face(image, ((x0 + x1) / 2, (y0 + y1) / 2), cues["size"], cues["face"], cues["skin"])
    return np.clip(image * cues["light"], 0, 255).astype(np.uint8)


def draw_face(image: np.ndarray, centre: tuple[float, float], size: float, face: dict[str, float],
              skin: float) -> None:
    """Draws a face `size` pixels wide at `centre` in place: head, brows, eyes, mouth."""
    u = size / 100  # the face's unit: 100 u across
    cx, cy = centre
    at = lambda dx, dy: (int(round(cx + dx * u)), int(round(cy + dy * u)))
    stroke = max(2, int(round(6 * u)))  # bold strokes: the expression must survive a 96-px crop
    cv2.ellipse(image, at(0, 0), (int(50 * u), int(62 * u)), 0, 0, 360, tuple(c * skin for c in (225, 180, 150)),
                -1, cv2.LINE_AA)
    brow_y = -26 - 7 * face["brow"]
    for side in (-1, 1):
        inner, outer = at(side * 7, brow_y - 10 * face["tilt"]), at(side * 31, brow_y + 3 * face["tilt"])
        cv2.line(image, inner, outer, (60, 40, 30), stroke, cv2.LINE_AA)
        opening = max(1, int(5 * u * max(face["eyes"], 0.15)))
        cv2.ellipse(image, at(side * 19, -12), (int(9 * u), opening), 0, 0, 360, (250, 250, 250), -1, cv2.LINE_AA)
        cv2.circle(image, at(side * 19, -12), max(1, min(opening, int(3.5 * u))), (40, 30, 20), -1, cv2.LINE_AA)
    if face["opening"] > 0.5:
        cv2.ellipse(image, at(0, 30), (int(12 * u), int(13 * u * face["opening"])), 0, 0, 360, (70, 20, 30), -1,
                    cv2.LINE_AA)
    else:  # a curve: the centre lies below the corners when smiling, above when frowning
        xs = np.linspace(-19, 19, 15)
        ys = 30 + face["curve"] * 12 * (1 - (xs / 19) ** 2) - face["curve"] * 5
        points = np.array([at(x, y) for x, y in zip(xs, ys)], np.int32)
        cv2.polylines(image, [points], False, (140, 40, 50), stroke + 1, cv2.LINE_AA)


def pitch_contour(contour: str, t: np.ndarray, syllable: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Relative pitch over time: t seconds, `syllable` the index and `phase` the position (0-1) within it."""
    if contour == "bounce":  # each syllable rises then falls, alternately high and low
        return 1 + 0.12 * np.sin(np.pi * phase) * np.where(syllable % 2 == 0, 1.0, 0.5)
    if contour == "tremble":
        return 1 + 0.06 * np.sin(2 * np.pi * 9 * t)
    if contour == "fall":
        return 1 - 0.25 * t / SECONDS
    if contour == "stress":  # each syllable starts high and falls sharply
        return 1.18 - 0.3 * phase
    return np.ones_like(t)


def synthesize_voice(name: str, speaker: float, seed: int, seconds: float = SECONDS, rate: int = RATE) -> np.ndarray:
    """[samples] float32: a voiced, speech-like signal of voice `name` — a glottal pulse train
    at the pitch contour, softened by the voice's spectral tilt, through two vowel formants that
    change every syllable, under syllable envelopes, with breath noise (source-filter)."""
    voice, rng = VOICES[name], np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tempo = voice["tempo"] * rng.uniform(0.9, 1.1)
    position = np.maximum(t - 0.08, 0) * tempo
    syllable, phase = np.floor(position).astype(int), position % 1
    voiced = (t > 0.08) & (phase < 0.75)
    envelope = np.where(voiced, np.sin(np.pi * np.clip(phase / 0.75, 0, 1)) ** 0.7, 0.0)
    pitch = voice["pitch"] * speaker * pitch_contour(voice["contour"], t, syllable, phase)
    pitch *= 1 + 0.01 * np.convolve(rng.normal(size=t.size), np.ones(400) / 20, "same")  # jitter
    pulses = np.diff(np.floor(np.cumsum(pitch) / rate), prepend=0.0)  # 1 where a glottal cycle starts
    source = scipy.signal.lfilter([1.0], [1.0, -voice["tilt"]], pulses)
    vowels = ((800, 1200), (300, 2300), (350, 800), (500, 1900), (500, 900))
    signal = np.zeros_like(t)
    for index in range(syllable.max() + 1):
        segment = syllable == index
        for formant in vowels[rng.integers(len(vowels))]:  # a resonator 120 Hz wide at each formant
            radius, angle = math.exp(-math.pi * 120 / rate), 2 * math.pi * formant / rate
            signal[segment] += scipy.signal.lfilter([1 - radius], [1, -2 * radius * math.cos(angle), radius ** 2],
                                                    source[segment])
    signal *= envelope / (np.abs(signal * envelope).max() + 1e-9)
    noise = rng.normal(size=t.size) * (voice["breath"] * envelope + 0.004)
    return (voice["loudness"] * signal + noise).astype(np.float32)


def explained(label: str) -> str:
    face, voice = CUES[label]
    return f"{label} . {FACE_WORDS[face]} , and {VOICE_WORDS[voice]} ."


def instruction(label: str, kind: str) -> tuple[str, str]:
    """Phase 3's question of `kind` and its answer for a clip of class `label`."""
    answers = {"classify": label, "open_vocabulary": f"{label} , {ANSWER_SYNONYMS[label]}",
               "describe": explained(label)}
    return QUESTIONS[kind], answers[kind]


def vocabulary() -> list[str]:
    """Every word and punctuation mark the manifests' human and assistant turns use, in a fixed
    order (for a word-level tokenizer)."""
    texts = [*QUESTIONS.values(), *CAPTIONS.values(), *map(explained, CLASSES),
             *(instruction(c, "open_vocabulary")[1] for c in CLASSES)]
    words: dict[str, None] = {}
    for text in texts:
        words.update(dict.fromkeys(text.replace(",", " , ").replace(".", " . ").replace("?", " ? ").split()))
    return list(words)


def synthesize(out: str | Path, clips: int = 336, eval_clips: int | None = None, seed: int = 0,
               progress: Progress = QUIET) -> dict[str, Path]:
    """Writes `clips` training clips, `eval_clips` held-out ones (default a quarter as many) and
    as many phase-1 voices as training clips under `out`, classes in turn; returns the
    manifests' paths by name (`MANIFESTS`)."""
    out = Path(out)
    for folder in ("clips", "voices"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    eval_clips = max(len(CLASSES), clips // 4) if eval_clips is None else eval_clips
    lines: dict[str, list[dict[str, Any]]] = {name: [] for name in MANIFESTS}
    kinds = ("classify", "open_vocabulary", "describe")
    bar = progress.bar(total=2 * clips + eval_clips, unit="file", desc="synthetic clips")
    for split, count in (("train", clips), ("eval", eval_clips)):
        for index in range(count):
            label = CLASSES[index % len(CLASSES)]
            rng = np.random.default_rng([seed, int(split == "eval"), index])
            cues = clip_cues(label, rng)
            times = np.arange(int(SECONDS * FPS)) / FPS
            name = f"clips/{split}_{index:04d}.mp4"
            write_media(out / name, (draw_frame(cues, t) for t in times),
                        synthesize_voice(cues["voice_name"], cues["speaker"], cues["voice_seed"]), fps=FPS, rate=RATE,
                        codec_options=X264_OPTIONS)
            bar.update()
            clip = {"id": f"{split}_{index:04d}", "video": name,
                    "faces": [{"t": round(float(t), 3), "box": face_box(cues, t)} for t in times],
                    "cues": {"face": cues["face_name"], "voice": cues["voice_name"],
                             "scene": CLASSES[cues["scene"]]}}
            if split == "eval":
                lines["eval_classification"].append(
                    {**clip, "label": label, "conversations": turns(QUESTIONS["classify"], None)})
                lines["eval_classification_silenced"].append({**lines["eval_classification"][-1], "audio": SILENCE})
                lines["eval_open_vocabulary"].append(
                    {**clip, "labels": list(REFERENCE_SYNONYMS[label]),
                     "conversations": turns(QUESTIONS["open_vocabulary"], None)})
            else:
                lines["face_classification"].append(
                    {**clip, "conversations": turns(QUESTIONS["classify"], label)})
                lines["instructions"].append(
                    {**clip, "conversations": turns(*instruction(label, kinds[index % 3]))})
                voice = cues["voice_name"]
                speaker, voice_seed = rng.uniform(0.88, 1.14), int(rng.integers(2**31))
                audio_name = f"voices/{index:04d}.m4a"
                write_media(out / audio_name, audio=synthesize_voice(voice, speaker, voice_seed), rate=RATE,
                            format="mp4")
                bar.update()
                lines["audio_captions"].append({"id": f"voice_{index:04d}", "audio": audio_name,
                                                "conversations": turns(QUESTIONS["caption"], CAPTIONS[voice],
                                                                       "<audio>")})
    bar.close()
    write_media(out / SILENCE, audio=np.zeros(int(SECONDS * RATE), np.float32), rate=RATE, format="mp4")
    lines["infer"] = [{**line, "conversations": turns(QUESTIONS["describe"], None)}
                      for line in lines["eval_classification"][:1]]
    paths = {}
    for name, entries in lines.items():
        paths[name] = out / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(e) + "\n" for e in entries))
    (out / "vocabulary.txt").write_text("\n".join(vocabulary()) + "\n")
    return paths

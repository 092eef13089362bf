"""One clip through the paper's pipeline (§3, Fig. 2): cues, review, score → its record.

    cues    scene (vision model, frames) · face (vision model, crops; age and gender from it or
            from the age_gender estimator) · speech (transcription) · tone (audio model, optional)
            — sent at once
    review  the reviewer merges them into a reason citing the cues, open-vocabulary emotion
            words and an intensity, or calls the clip uncertain
    score   the reviewer scores 0-10 how well the reason agrees with the clip's label

A record (one JSON object per manifest line; docs/annotate.md):
    {"line", "id", "source", "label", "status": kept | discarded | failed | skipped,
     "discard" | "failure" | "skip", "cues", "review", "score", "entry" (the manifest line),
     "models", "prompts"}
A clip is discarded, with its reason, when it has no face (`no_face`) or no words
(`no_speech`) before anything is sent about it, when the reviewer calls it `uncertain`, or when
its score is below the threshold (`low_score`); `failed` when a request gave no usable answer
(its step and why: the clip is tried again by the next run, whose cached replies cost
nothing); `skipped` when the line cannot be used (malformed, no video, no label, unreadable).
"""
from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import threading
from typing import Any, Callable, Mapping

import ml_collections

from omni_jax.annotate import prompts
from omni_jax.annotate.media import ClipMedia, FacesByTime, clip_media, data_url
from omni_jax.data.errors import ExampleError
from omni_jax.data.manifest import ManifestLine, ManifestSource
from omni_jax.endpoints import Endpoint, RequestFailure

log = logging.getLogger(__name__)

REQUIRED = ("vision", "transcription", "reviewer")
OPTIONAL = ("audio", "age_gender")  # model "" leaves them out


def endpoints_of(cfg: ml_collections.ConfigDict, cache: str) -> dict[str, Endpoint]:
    """The config's endpoints (the optional ones whose model is set), sharing one reply cache."""
    settings = cfg.endpoints
    return {name: Endpoint(name, cache=cache, **settings[name].to_dict())
            for name in REQUIRED + OPTIONAL if name in REQUIRED or settings[name].model}


def images(question: str, pictures: list[bytes]) -> list[dict[str, Any]]:
    """One user message: the question, then the pictures as data URLs."""
    parts = [{"type": "text", "text": question}]
    parts += [{"type": "image_url", "image_url": {"url": data_url(p)}} for p in pictures]
    return [{"role": "user", "content": parts}]


class Annotator:
    """annotator(line) → its record (module docstring). `pool` runs one clip's cue requests at once."""

    def __init__(self, cfg: ml_collections.ConfigDict, endpoints: Mapping[str, Endpoint], source: ManifestSource,
                 find_faces: Callable[[], FacesByTime], pool: concurrent.futures.Executor):
        self.cfg, self.endpoints, self.source, self.pool = cfg, endpoints, source, pool
        self.find_faces = find_faces  # made on first use: a manifest with boxes never loads the detector
        self.models = {name: e.model for name, e in endpoints.items()}
        # decoded frames are large (40 of 1280×720 are 110 MB) and only their JPEGs stay in flight:
        # a few clips decode at once, however many wait on the endpoints
        self.decoding = threading.BoundedSemaphore(cfg.media.decode_threads or os.cpu_count() or 1)

    def __call__(self, line: ManifestLine) -> dict[str, Any]:
        head = {"line": line.number}
        try:
            entry = json.loads(line.text)
            record = self.source.parse(line)
        except (json.JSONDecodeError, UnicodeDecodeError, ExampleError) as error:
            return {**head, "status": "skipped", "skip": "malformed_json", "message": str(error)}
        head.update(id=record.id, source=entry.get("source", self.source.path.stem), label=entry.get("label"),
                    entry=entry, models=self.models, prompts=prompts.VERSION)
        if record.video is None:
            return {**head, "status": "skipped", "skip": "no_video"}
        head.update(video=str(record.video), **({"audio": str(record.audio)} if record.audio else {}))
        if not isinstance(head["label"], str) or not head["label"].strip():
            return {**head, "status": "skipped", "skip": "no_label", "message": f"{record.where}: no 'label' to "
                                                                               "score the reason against"}
        try:
            with self.decoding:  # the finder is asked for (and made) only when a line has no timed boxes
                media = clip_media(record, self.cfg.media, lambda frames, times: self.find_faces()(frames, times))
        except ExampleError as error:
            log.warning("%s (%s): %s", record.where, error.reason, error)
            return {**head, "status": "skipped", "skip": f"unreadable/{error.reason}", "message": str(error)}
        head["faces"] = media.face_boxes
        review = self.cfg.review
        if review.require_face and not media.faces:
            return {**head, "status": "discarded", "discard": "no_face"}
        if review.require_speech and media.sound is None:
            return {**head, "status": "discarded", "discard": "no_speech"}
        cues, failed = self.cues(media)
        if failed:
            step, failure = next(iter(failed.items()))
            return {**head, "status": "failed", "failure": {"step": step, "message": str(failure)}}
        if review.require_speech and not cues["speech"]["text"]:
            return {**head, "cues": cues, "status": "discarded", "discard": "no_speech"}
        step = "review"
        try:
            reviewed = self.endpoints["reviewer"].chat(self.review_messages(cues), prompts.parse_review)
            if reviewed["uncertain"]:
                return {**head, "cues": cues, "review": reviewed, "status": "discarded", "discard": "uncertain"}
            step = "score"
            score = self.endpoints["reviewer"].chat(self.score_messages(head["label"], reviewed), prompts.parse_score)
        except RequestFailure as failure:
            return {**head, "status": "failed", "failure": {"step": step, "message": str(failure)}}
        kept = score >= review.threshold
        return {**head, "cues": cues, "review": reviewed, "score": score, "status": "kept" if kept else "discarded",
                **({} if kept else {"discard": "low_score"})}

    def cues(self, media: ClipMedia) -> tuple[dict[str, Any], dict[str, RequestFailure]]:
        """The cue requests of one clip, sent at once → (answers by cue, failures by cue)."""
        media_cfg, e = self.cfg.media, self.endpoints
        estimator = "age_gender" in e
        face_prompt = prompts.FACE.format(crops=len(media.faces), rate=media_cfg.face_rate,
                                          age_gender="" if estimator else prompts.AGE_GENDER,
                                          age_gender_keys="" if estimator else prompts.AGE_GENDER_KEYS)
        asks: dict[str, Callable[[], Any]] = {
            "scene": lambda: e["vision"].chat(images(prompts.SCENE.format(frames=len(media.scene),
                                                                          rate=media_cfg.frame_rate), media.scene),
                                              prompts.parse_scene),
        }
        if media.faces:
            asks["face"] = lambda: e["vision"].chat(
                images(face_prompt, media.faces), prompts.face_parser(not estimator)
            )
        if media.sound is not None:
            asks["speech"] = lambda: e["transcription"].transcribe(media.sound, prompts.parse_transcription)
            if "audio" in e:
                asks["tone"] = lambda: e["audio"].chat(
                    [{"role": "user", "content": [
                        {"type": "text", "text": prompts.TONE},
                        {"type": "input_audio", "input_audio": {"data": data_url(media.sound).split(",", 1)[1],
                                                                "format": "wav"}}]}], prompts.parse_tone)
        if estimator and media.faces:
            middle = media.faces[len(media.faces) // 2]
            asks["age_gender"] = lambda: e["age_gender"].chat(images(prompts.ESTIMATE_AGE_GENDER, [middle]),
                                                              prompts.parse_estimate)
        futures = {name: self.pool.submit(ask) for name, ask in asks.items()}
        answers, failed = {}, {}
        for name, future in futures.items():  # every answer is awaited (and cached) before a failure counts
            try:
                answers[name] = future.result()
            except RequestFailure as failure:
                failed[name] = failure
        if failed:
            return {}, failed
        if "age_gender" in answers:
            answers["face"] = {**answers["face"], **answers.pop("age_gender")}
        answers.setdefault("speech", {"text": "", "language": "unknown"})
        return answers, {}

    @staticmethod
    def review_messages(cues: dict[str, Any]) -> list[dict[str, Any]]:
        face = cues.get("face", {"expressions": "no face was found"})
        described = face["expressions"] + (
            f" (apparent age {face['age']:g}, {face['gender']})" if "age" in face else ""
        )
        text = prompts.REVIEW.format(scene=f"{cues['scene']['scene']} {cues['scene']['people']}", face=described,
                                     language=cues["speech"]["language"], speech=cues["speech"]["text"],
                                     tone=cues["tone"]["tone"] if "tone" in cues else "not described")
        return [{"role": "user", "content": text}]

    @staticmethod
    def score_messages(label: str, reviewed: dict[str, Any]) -> list[dict[str, Any]]:
        text = prompts.SCORE.format(label=label, reason=reviewed["reason"], emotions=", ".join(reviewed["emotions"]))
        return [{"role": "user", "content": text}]

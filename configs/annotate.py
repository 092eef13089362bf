"""`omni-jax annotate`'s config (docs/annotate.md): the models it asks, what it sends them, how
it reviews. `--config annotate --config.endpoints.vision.base_url=http://vlm:8000/v1`.

Sections:
  endpoints  one OpenAI-compatible model per task (base_url, model, api_key_env, concurrency,
             retries, timeout); model "" leaves an optional one out (audio, age_gender)
  media      what is decoded from a clip and sent: frames, face crops, audio
  review     the reviewer's threshold and what makes a clip uncertain
  outputs    the manifests made from the records
  sheet      the human review sheet (--review-sheet)
"""
import ml_collections

from .faces import face_detector
from .omni_emotion import evals_config


def endpoint(model: str, base_url: str, concurrency: int = 32, timeout: float = 120.0) -> dict:
    return dict(base_url=base_url, model=model,
                api_key_env="",  # the variable holding the key ("": a local server that needs none)
                concurrency=concurrency,  # requests in flight at once
                retries=4,  # the client's retries (timeouts, 429, 5xx); a rejected reply is asked this often again
                timeout=timeout)  # seconds per request


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    del arg
    cfg = ml_collections.ConfigDict()
    # The paper's models (§3): Qwen2-VL-72B for the frames and the face, MiVOLO for age and
    # gender (here: any estimator behind a chat endpoint replying {"age", "gender"}, or the
    # vision model when "" ), Whisper-large-v3 for the words; served with vLLM or SGLang.
    cfg.endpoints = ml_collections.ConfigDict(dict(
        vision=endpoint("Qwen/Qwen2-VL-72B-Instruct", "http://localhost:8000/v1"),
        transcription=endpoint("openai/whisper-large-v3", "http://localhost:8001/v1"),
        audio=endpoint("", "http://localhost:8002/v1"),  # an audio chat model for the tone of voice ("": none)
        age_gender=endpoint("", "http://localhost:8003/v1"),  # "": the vision model estimates them with the face
        reviewer=endpoint("Qwen/Qwen2.5-72B-Instruct", "http://localhost:8004/v1"),
    ))
    cfg.media = ml_collections.ConfigDict(dict(
        frame_rate=1.0,  # scene frames per second sent to the vision model...
        max_frames=16,  # ...at most this many (evenly spread over longer clips)
        face_rate=4.0,  # face crops per second of the principal face track...
        max_faces=16,  # ...at most this many
        face_size=224,  # pixels, the side of a face crop (the box widened by data.faces.MARGIN)
        image_side=448,  # pixels, the longer side of a scene frame as sent
        jpeg_quality=90,
        face_time_tolerance=0.5,  # seconds: a frame takes the manifest's nearest timed box this close
        # for lines without boxes: RetinaFace and its tracker (docs/faces.md); run `omni-jax faces`
        # first to keep the boxes
        face_detector=face_detector(),
        max_audio_seconds=120.0,  # longer audio is cut before it is sent
        decode_threads=0,  # clips decoded at once per process (0: the CPU count); the rest wait as JPEGs do not
    ))
    cfg.review = ml_collections.ConfigDict(dict(
        threshold=5.0,  # clips whose reason scores below this (0-10) against their label are discarded (§3.1)
        require_face=True,  # discard clips without a face in any frame (no_face)
        require_speech=True,  # discard clips without words (no_speech): no audio track, or an empty transcript
    ))
    cfg.outputs = ml_collections.ConfigDict(dict(
        # the evaluators whose questions and classes the manifests use (as omni-jax manifest's)
        evals=evals_config(),
        # the human-reviewed clips (HRE) join the SRE clips in the training manifests, as in the
        # paper; False keeps them for the evaluation manifests only (a held-out set)
        reviewed_in_training=True,
    ))
    cfg.sheet = ml_collections.ConfigDict(dict(
        per_source=700,  # clips drawn per source (the paper's HRE: 700 of each dataset)
        seed=0,  # the draw's seed: the same seed draws the same clips
    ))
    # exit 1 when more of the lines fail (a request that keeps failing, an unreadable clip):
    # a run whose endpoints are down stops being a success
    cfg.max_failure_fraction = 0.1
    cfg.cache = ""  # the replies' cache (default OUT/cache): a rerun sends nothing it has sent before
    cfg.clips_in_flight = 0  # clips annotated at once per process (0: 3 × the largest endpoint concurrency)
    return cfg

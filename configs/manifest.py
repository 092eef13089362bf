"""`omni-jax manifest`'s config: `get_config()` (docs/data.md).

    omni-jax manifest --format dfew --labels DFEW/EmoLabel_DataSplit --media DFEW/clip --out test.jsonl \\
        --config.manifest.split=test --config.manifest.fold=1

Sections: `manifest` what to write; `evals` the evaluators whose classes and questions the
lines use (omni_emotion's)."""
import ml_collections

from .omni_emotion import evals_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    del arg
    cfg = ml_collections.ConfigDict()
    cfg.manifest = ml_collections.ConfigDict(dict(
        phase="",  # eval, face_alignment, audio_alignment, instruction_tuning; "": the format's first
        split="",  # with a --labels folder of a format with splits: train, test, ... (the format's)
        fold=0,  # with a --labels folder of DFEW or MAFW: the fold, 1-5 (0: none given)
        classes="",  # a JSON file holding an object class token → name, in place of the format's table
    ))
    cfg.evals = evals_config()
    return cfg

"""`omni-jax synth`'s config: `get_config()` (docs/demo.md).

    omni-jax synth --out data/ --config.synth.clips=336        # the demo's clips and manifests
    omni-jax synth --parts dry/                                  # stand-ins for the 7B's downloads
"""
import ml_collections

from .omni_emotion import get_config as omni_emotion_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    del arg
    cfg = ml_collections.ConfigDict()
    cfg.synth = ml_collections.ConfigDict(dict(
        clips=336,  # training clips (the classes in turn)
        eval_clips=None,  # held-out clips; None: a quarter of `clips`
        seed=0,  # the same seed writes the same files
    ))
    # --parts: the model whose parts are written (omni_emotion:tiny's shapes: the README's 7B
    # commands run on them with :tiny for :7b)
    cfg.model = omni_emotion_config("tiny").model
    return cfg

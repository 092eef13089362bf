"""The conversions' config: `get_config()`, one section `convert` (docs/conversion.md).

    omni-jax convert --src HF_DIR --dst OUT_DIR --config.convert.dtype=bfloat16

omni-jax convert, export and convert-retinaface read it; convert-facexformer and assemble, which
build parts of a model, read the same section of the model's config (omni_emotion)."""
import ml_collections

DTYPES = ("", "float32", "bfloat16", "float16")


def convert_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        dtype="",  # the stored (or exported) dtype: float32, bfloat16, float16; "": as the source has it
        naming="",  # export: the key naming to write; "": the source's if transformers reads it, else its own
        seed=0,  # the initialisation of what no source holds (a face projector, the new parts of assemble)
    ))


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    del arg
    cfg = ml_collections.ConfigDict()
    cfg.convert = convert_config()
    return cfg

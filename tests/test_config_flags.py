"""--config FILE:ARG and --config.a.b=value overrides: types checked, unknown fields named."""
import pytest

from omni_jax.config_flags import apply_overrides, load_config


def test_overrides_parse_as_the_fields_type():
    cfg = load_config("configs/omni_emotion.py:tiny,face_alignment")
    assert cfg.train.phase == "face_alignment" and cfg.train.modalities == "v,f" and cfg.data.epochs == 1
    apply_overrides(cfg, ["--config.train.learning_rate=2e-4", "--config.train.steps=12",
                          "--config.train.allow_config_change=true", "--config.data.buckets=64,256",
                          "--config.train.profile_steps=(3,5)", "--config.model.num_frames=4", "--config.mesh.fsdp=2"])
    assert cfg.train.learning_rate == 2e-4 and cfg.train.steps == 12 and cfg.train.allow_config_change is True
    assert cfg.data.buckets == (64, 256) and cfg.train.profile_steps == (3, 5) and cfg.mesh.fsdp == 2
    assert cfg.model.num_frames == 4 and cfg.data.num_frames == 4  # the pipeline's field follows the model's


@pytest.mark.parametrize("override,message", [
    ("--config.train.learning_rat=1", "train has no field 'learning_rat'; it has"),
    ("--config.trian.steps=1", "the config has no field 'trian'"),
    ("--config.train.steps=1.5", "--config.train.steps=1.5: expected an integer"),
    ("--config.train.learning_rate=fast", "expected a number"),
    ("--config.data.pack_text_only=maybe", "expected true or false"),
    ("--config.train=1", "is a section; set its fields"),
    ("--config.train.steps", "config overrides are --config.FIELD=VALUE"),
])
def test_bad_overrides_name_the_field(override, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        apply_overrides(load_config("configs/omni_emotion.py:tiny"), [override])


def test_unknown_variant_or_phase_is_refused():
    with pytest.raises(ValueError, match="VARIANT in \\['7b', 'demo', 'tiny'\\] and PHASE in"):
        load_config("configs/omni_emotion.py:tiny,warm_up")

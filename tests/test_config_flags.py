"""--config NAME:ARG or FILE:ARG, big_vision's arguments, --config.a.b=value overrides (types
checked, unknown fields named), path fields by kind, allowed ranges."""
import pytest

from omni_jax.config_flags import FRACTION, Range, apply_overrides, check_ranges, load_config, parse_arg, resolve_paths


def test_overrides_parse_as_the_fields_type():
    cfg = load_config("omni_emotion:tiny,face_alignment")
    assert cfg.train.phase == "face_alignment" and cfg.train.modalities == ("v", "f") and cfg.data.epochs == 1
    apply_overrides(cfg, ["--config.train.learning_rate=2e-4", "--config.train.steps=12",
                          "--config.train.allow_config_change=true", "--config.data.buckets=64,256",
                          "--config.train.profile.first_step=3", "--config.model.num_frames=4", "--config.mesh.fsdp=2",
                          "--config.eval.modalities=v,a", "--config.data.face_detector.kind=haar"])
    assert cfg.train.learning_rate == 2e-4 and cfg.train.steps == 12 and cfg.train.allow_config_change is True
    assert cfg.data.buckets == (64, 256) and cfg.train.profile.first_step == 3 and cfg.mesh.fsdp == 2
    assert cfg.model.num_frames == 4 and cfg.data.num_frames == 4  # the pipeline's field follows the model's
    assert cfg.eval.modalities == ("v", "a") and cfg.data.face_detector.kind == "haar"


def test_configs_load_by_name_by_path_and_with_named_arguments(tmp_path):
    by_name, by_path = load_config("omni_emotion:tiny,audio_alignment"), load_config(
        "configs/omni_emotion.py:variant=tiny,phase=audio_alignment")
    assert by_name.to_dict() == by_path.to_dict() and by_name.train.phase == "audio_alignment"
    assert load_config("omni_emotion").train.global_batch_size == 128  # the default: 7b
    own = tmp_path / "my config.py"  # a user's own, outside the package, importing the package's
    own.write_text("from omni_jax.configs import omni_emotion\n\ndef get_config(arg):\n"
                   "    cfg = omni_emotion.get_config(arg)\n    cfg.train.steps = 5\n    return cfg\n")
    assert load_config(f"{own}:tiny").train.steps == 5
    for name in ("faces", "annotate", "manifest", "synth", "convert"):
        assert load_config(name)


def test_parse_arg_reads_bare_and_named_parts():
    assert parse_arg("7b,audio_alignment", variant="tiny", phase="x").to_dict() == {
        "variant": "7b", "phase": "audio_alignment"}
    assert parse_arg("phase=y", variant="tiny", phase="x").to_dict() == {"variant": "tiny", "phase": "y"}
    assert parse_arg("", size=3, seed=1).to_dict() == {"size": 3, "seed": 1}
    assert parse_arg("5", size=3).size == 5
    with pytest.raises(ValueError, match="no field 'colour'; the fields are size"):
        parse_arg("colour=red", size=3)
    with pytest.raises(ValueError, match="must be name=value"):
        parse_arg("size=4,7", size=3, seed=1)
    with pytest.raises(ValueError, match="size: expected an integer"):
        parse_arg("big", size=3)


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
        apply_overrides(load_config("omni_emotion:tiny"), [override])


@pytest.mark.parametrize("spec,message", [
    ("omni_emotion:tiny,warm_up", "variant must be one of \\['7b', 'demo', 'tiny'\\] and phase one of"),
    ("omni_emotoin:tiny", "no config named 'omni_emotoin'; the package has annotate, convert"),
    ("nowhere/config.py", "nowhere/config.py: no such config file"),
])
def test_unknown_configs_variants_and_phases_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        load_config(spec)


def test_path_fields_are_made_absolute_and_checked_by_kind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.jsonl").write_text("")
    (tmp_path / "tok").mkdir()
    cfg = apply_overrides(load_config("omni_emotion:tiny"), ["--config.data.manifest=m.jsonl",
                                                             "--config.data.tokenizer=tok"])
    resolve_paths(cfg)
    assert cfg.data.manifest == str(tmp_path / "m.jsonl") and cfg.data.tokenizer == str(tmp_path / "tok")
    for override, message in (("--config.data.manifest=tok", "tok: a folder, where a file is expected"),
                              ("--config.data.tokenizer=m.jsonl", "m.jsonl: a file, where a folder is expected"),
                              ("--config.data.manifest=no.jsonl", "no.jsonl: no such file or directory")):
        with pytest.raises(ValueError, match=f"--config.{override[9:]}: ".replace(".", r"\.")):
            resolve_paths(apply_overrides(load_config("omni_emotion:tiny"), [override]))
        with pytest.raises(ValueError, match=message):
            resolve_paths(apply_overrides(load_config("omni_emotion:tiny"), [override]))


def test_ranges_name_the_field_the_value_and_what_is_allowed():
    cfg = load_config("omni_emotion:tiny")
    check_ranges(
        cfg, {"train.steps": Range(0), "data.max_skip_fraction": FRACTION, "train.phase": ("a", "instruction_tuning")}
    )
    cfg.data.max_skip_fraction = 1.5
    with pytest.raises(ValueError, match=r"--config.data.max_skip_fraction=1.5 is out of range: allowed \[0, 1\]"):
        check_ranges(cfg, {"data.max_skip_fraction": FRACTION})
    cfg.train.learning_rate = 0.0
    with pytest.raises(ValueError, match=r"learning_rate=0.0 is out of range: allowed \(0, ∞\)"):
        check_ranges(cfg, {"train.learning_rate": Range(0, open_low=True)})
    with pytest.raises(ValueError, match="train.phase='instruction_tuning': expected one of 'a', 'b'"):
        check_ranges(cfg, {"train.phase": ("a", "b")})
    assert None in Range(1, none=True) and None not in Range(1) and float("nan") not in Range()

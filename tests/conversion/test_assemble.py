"""An Omni-Emotion checkpoint assembled from converted parts: every leaf where it belongs."""
import contextlib
import io
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

import omni_jax
from omni_jax import registry
from omni_jax.checkpoint_dir import save_params
from omni_jax.configs import omni_emotion as omni_configs
from omni_jax.conversion import ConversionError
from omni_jax.conversion.assemble import assemble_omni_emotion
from omni_jax.modality_tokens import SPECIAL_TOKENS

REPO = Path(__file__).resolve().parents[2]
LLAVA_FIELDS = ("text", "vision", "vision_feature_layers", "vision_feature_select_strategy", "projector_hidden_act",
                "projector_bias", "image_token_id", "video_token_id")


def _random_part(dst, family_name, config, seed):
    """A part checkpoint with random values in the shapes of `config` (no init compile)."""
    family = registry.FAMILIES[family_name]
    shapes = registry.abstract_params(family, config)
    leaves, treedef = jax.tree.flatten(shapes)
    rng = np.random.RandomState(seed)
    params = jax.tree.unflatten(treedef, [rng.randn(*s.shape).astype(np.float32) for s in leaves])
    save_params(dst, family.model_type, config, params)
    return params


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    cfg = omni_configs.get_config("tiny").model
    llava_cfg = ml_collections.ConfigDict({k: cfg[k] for k in LLAVA_FIELDS})
    return root, cfg, {"llava": _random_part(root / "llava", "llava_onevision", llava_cfg, 0),
                       "whisper": _random_part(root / "whisper", "whisper", cfg.audio, 1),
                       "face": _random_part(root / "face", "facexformer", cfg.face, 2)}


def test_parts_land_where_the_model_reads_them(parts, assembled):
    _, cfg, sources = parts
    model, params = omni_jax.load_pretrained(assembled[1])
    assert type(model).__name__ == "OmniEmotion"
    np.testing.assert_array_equal(params["audio_encoder"]["layers"]["mlp"]["fc1"]["kernel"],
                                  sources["whisper"]["layers"]["mlp"]["fc1"]["kernel"])
    np.testing.assert_array_equal(params["face_encoder"]["linear_fuse"]["kernel"],
                                  sources["face"]["linear_fuse"]["kernel"])
    np.testing.assert_array_equal(params["vision_tower"]["post_layernorm"]["scale"],
                                  sources["llava"]["vision_tower"]["post_layernorm"]["scale"])
    # New token rows: the mean of the rows before the first new id; other rows untouched.
    ids = [cfg[f] for f in SPECIAL_TOKENS]
    table = np.asarray(params["language_model"]["model"]["embed_tokens"]["embedding"])
    source = sources["llava"]["language_model"]["model"]["embed_tokens"]["embedding"]
    np.testing.assert_allclose(table[ids], np.broadcast_to(source[:min(ids)].mean(0), (len(ids), table.shape[1])),
                               rtol=1e-5, atol=1e-6)
    keep = np.setdiff1d(np.arange(table.shape[0]), ids)
    np.testing.assert_array_equal(table[keep], source[keep])
    head = np.asarray(params["language_model"]["lm_head"]["kernel"])
    np.testing.assert_allclose(head[:, ids[0]], sources["llava"]["language_model"]["lm_head"]["kernel"][
        :, :min(ids)].mean(1), rtol=1e-5, atol=1e-6)
    # What no part has: initialised (zeros for frame embeddings, the projector's own init).
    assert not np.asarray(params["frame_embedding"]).any()
    assert np.asarray(params["audio_projector"]["mlp"]["linear_1"]["kernel"]).std() > 0


def test_mismatched_or_wrong_parts_are_named_and_nothing_is_written(parts, tmp_path):
    root, cfg, _ = parts
    bigger = ml_collections.ConfigDict(cfg.audio.to_dict())
    bigger.max_source_positions = cfg.audio.max_source_positions + 10
    _random_part(tmp_path / "whisper_long", "whisper", bigger, 3)
    with pytest.raises(ConversionError, match=r"'audio_encoder/embed_positions/embedding' .*expected \[30, 32\], "
                                              r"found \[40, 32\]"):
        assemble_omni_emotion(root / "llava", tmp_path / "whisper_long", root / "face", tmp_path / "out", cfg)
    with pytest.raises(ConversionError, match="holds a 'facexformer' checkpoint; expected 'whisper'"):
        assemble_omni_emotion(root / "llava", root / "face", root / "face", tmp_path / "out", cfg)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.fixture(scope="module")
def assembled(parts, tmp_path_factory):
    """`omni-jax assemble` with frame_cross_attention, so every parameter kind is there (one
    assembly for the tests below: each costs ~30 s on 2 cores); its JSON summary and folder."""
    import json

    from omni_jax import cli

    root, _, _ = parts
    dst = tmp_path_factory.mktemp("assembled") / "omni"
    capture = io.StringIO()
    with contextlib.redirect_stdout(capture):
        assert cli.main(["--json", "assemble", "--llava", str(root / "llava"), "--whisper", str(root / "whisper"),
                         "--face", str(root / "face"), "--config", "omni_emotion:tiny",
                         "--config.model.fusion=frame_cross_attention", "--dst", str(dst)]) == 0
    return json.loads(capture.getvalue().splitlines()[-1]), dst


def test_assemble_command_line(assembled):
    result, dst = assembled
    assert result["ok"] and result["model_type"] == "omni_emotion" and result["fusion"] == "frame_cross_attention"
    _, params = omni_jax.load_pretrained(dst)
    assert "face_cross_attention" in params


def test_export_to_safetensors_and_back(assembled, tmp_path):
    """The documented key layout (formats.OMNI_EMOTION) through the two conversion scripts, every
    leaf bit-exact; frame_cross_attention, so that every parameter kind is exported."""
    from safetensors import safe_open

    from omni_jax import cli
    from omni_jax.checkpoint_dir import flat_leaves

    # `omni-jax export` / `convert` (convert/*.py run the same functions: test_engine.py's scripts test)
    assert cli.main(["export", "--src", str(assembled[1]), "--dst", str(tmp_path / "safetensors")]) == 0
    assert cli.main(["convert", "--src", str(tmp_path / "safetensors"), "--dst", str(tmp_path / "back")]) == 0
    keys = set()
    for file in (tmp_path / "safetensors").glob("*.safetensors"):
        with safe_open(file, "np") as f:
            keys |= set(f.keys())
    for key in (
        "language_model.model.layers.0.self_attn.q_proj.weight",
        "language_model.lm_head.weight",
        "vision_tower.encoder.layers.0.mlp.fc1.weight",
        "multi_modal_projector.linear_2.bias",
        "image_newline",
        "audio_tower.layers.1.fc2.weight",
        "audio_projector.linear_1.weight",
        "face_tower.backbone.embeddings.patch_embeddings.projection.weight",
        "face_tower.backbone.encoder.layers.2.blocks.1.attention.self.query.weight",
        "face_tower.linear_fuse.weight",
        "face_tower.face_projector.linear_2.weight",
        "frame_embedding",
        "face_cross_attention.attention.o_proj.bias",
        "face_cross_attention.query_norm.weight",
    ):
        assert key in keys, key
    _, original = omni_jax.load_pretrained(assembled[1])
    model, restored = omni_jax.load_pretrained(tmp_path / "back")
    assert model.config.fusion == "frame_cross_attention"
    original, restored = flat_leaves(original), flat_leaves(restored)
    assert set(original) == set(restored)
    for path, value in original.items():
        np.testing.assert_array_equal(np.asarray(restored[path]), np.asarray(value), err_msg=path)

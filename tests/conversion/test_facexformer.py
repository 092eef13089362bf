"""The FaceXFormer converter at full size: a synthetic release file with the release's key names
and Swin-B shapes (from the table below, random values) converts through the command line with
no missing or unexpected key and loads; truncated or mis-shaped files fail with the named error."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import omni_jax
from omni_jax.conversion import ConversionError
from omni_jax.conversion.facexformer import convert_facexformer, initial_projector

REPO = Path(__file__).resolve().parents[2]
EMBED, DEPTHS, HEADS, WINDOW, FUSION = 128, (2, 2, 18, 2), (4, 8, 16, 32), 7, 256


def _linear(name: str, out: int, inp: int, bias: bool = True) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (out, inp), **({f"{name}.bias": (out,)} if bias else {})}


def _norm(name: str, width: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (width,), f"{name}.bias": (width,)}


def swin_b_table() -> dict[str, tuple[int, ...]]:
    """torchvision swin_b minus its head, as FaceXFormer nests it (backbone.0 = features, backbone.1 = norm)."""
    table = {"backbone.0.0.0.weight": (EMBED, 3, 4, 4), "backbone.0.0.0.bias": (EMBED,),
             **_norm("backbone.0.0.2", EMBED)}
    for stage, (depth, heads) in enumerate(zip(DEPTHS, HEADS)):
        dim = EMBED * 2 ** stage
        for block in range(depth):
            b = f"backbone.0.{2 * stage + 1}.{block}."
            table.update({**_norm(b + "norm1", dim), **_linear(b + "attn.qkv", 3 * dim, dim),
                          **_linear(b + "attn.proj", dim, dim),
                          b + "attn.relative_position_bias_table": ((2 * WINDOW - 1) ** 2, heads),
                          b + "attn.relative_position_index": (WINDOW ** 4,),
                          **_norm(b + "norm2", dim), **_linear(b + "mlp.0", 4 * dim, dim),
                          **_linear(b + "mlp.3", dim, 4 * dim)})
        if stage < len(DEPTHS) - 1:
            m = f"backbone.0.{2 * stage + 2}."
            table.update({**_linear(m + "reduction", 2 * dim, 4 * dim, bias=False), **_norm(m + "norm", 4 * dim)})
    return {**table, **_norm("backbone.1", EMBED * 8)}


def fusion_table() -> dict[str, tuple[int, ...]]:
    table = {k: v for i in range(4) for k, v in _linear(f"linear_c.{i}.proj", FUSION, EMBED * 2 ** i).items()}
    return {**table, "linear_fuse.weight": (FUSION, 4 * FUSION, 1, 1)}


def decoder_table() -> dict[str, tuple[int, ...]]:
    """FaceXFormer's task decoder (SAM's two-way transformer, task tokens, heads) and its
    positional matrix: in the release, not in the encoder."""
    d, half = FUSION, FUSION // 2
    table = {f"face_decoder.{t}_token.weight": (1, d)
             for t in ("landmarks", "pose", "attribute", "visibility", "age", "gender", "race")}
    table["face_decoder.mask_tokens.weight"] = (11, d)

    def attention(name, inner):
        return {k: v for p in ("q_proj", "k_proj", "v_proj") for k, v in _linear(f"{name}.{p}", inner, d).items()} | \
            _linear(f"{name}.out_proj", d, inner)

    for layer in range(2):
        t = f"face_decoder.transformer.layers.{layer}."
        table.update({**attention(t + "self_attn", d), **attention(t + "cross_attn_token_to_image", half),
                      **attention(t + "cross_attn_image_to_token", half), **_linear(t + "mlp.lin1", 2048, d),
                      **_linear(t + "mlp.lin2", d, 2048),
                      **{k: v for n in range(1, 5) for k, v in _norm(f"{t}norm{n}", d).items()}})
    table.update({**attention("face_decoder.transformer.final_attn_token_to_image", half),
                  **_norm("face_decoder.transformer.norm_final_attn", d),
                  "face_decoder.output_upscaling.0.weight": (d, d // 4, 2, 2),
                  "face_decoder.output_upscaling.0.bias": (d // 4,),
                  **_norm("face_decoder.output_upscaling.1", d // 4),
                  "face_decoder.output_upscaling.3.weight": (d // 4, d // 8, 2, 2),
                  "face_decoder.output_upscaling.3.bias": (d // 8,)})
    heads = (("output_hypernetwork_mlps", d // 8), ("landmarks_prediction_head", 136), ("pose_prediction_head", 3),
             ("attribute_prediction_head", 40), ("visibility_prediction_head", 29), ("age_prediction_head", 8),
             ("gender_prediction_head", 2), ("race_prediction_head", 5))
    for head, out in heads:
        for i, (o, n) in enumerate(((d, d), (d, d), (out, d))):
            table.update(_linear(f"face_decoder.{head}.layers.{i}", o, n))
    return {**table, "pe_layer.positional_encoding_gaussian_matrix": (2, half)}


def release_table() -> dict[str, tuple[int, ...]]:
    return {**swin_b_table(), **fusion_table(), **decoder_table()}


def _save(path: Path, state: dict) -> Path:
    torch.save({"state_dict_backbone": state, "optimizer": {}, "epoch": 11}, path)
    return path


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The one full-size file with values (~350 MB of float32)."""
    torch.manual_seed(0)
    state = {k: torch.arange(s[0]) if k.endswith("relative_position_index") else torch.randn(s) * 0.02
             for k, s in release_table().items()}
    return state, _save(tmp_path_factory.mktemp("release") / "facexformer.pt", state)


def _shapes_only(path: Path, table: dict[str, tuple[int, ...]]) -> Path:
    """A file with these names and shapes that stores one number per tensor (zero strides)."""
    return _save(path, {k: torch.zeros(()).expand(s) for k, s in table.items()})


def test_full_size_release_converts_and_loads(release, tmp_path):
    state, path = release
    dst = tmp_path / "face"
    # from another folder, with relative paths, as a user types it
    run = subprocess.run([sys.executable, str(REPO / "convert/facexformer_to_orbax.py"), "--src",
                          os.path.relpath(path, tmp_path), "--dst", "face", "--config.convert.seed=3",
                          "--config.model.face.face_grid=12,16", "--config.model.face.llm_width=896"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "dropping FaceXFormer's task decoder" in run.stderr and "positional matrix: 1 tensor(s)" in run.stderr
    assert "face_tokens: 192" in run.stdout and "initialised, seed 3" in run.stdout
    model, params = omni_jax.load_pretrained(dst)
    assert model.config.face_grid == (12, 16) and model.config.llm_width == 896
    # The last block of the 18-block stage: q, k and v are thirds of torchvision's packed qkv.
    attention = params["backbone"]["encoder"]["layers_2"]["blocks"]["attention"]
    qkv = state["backbone.0.5.17.attn.qkv.weight"].numpy()
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        np.testing.assert_array_equal(attention[name]["kernel"][17].reshape(512, 512), qkv[i * 512:(i + 1) * 512].T)
    np.testing.assert_array_equal(params["linear_fuse"]["kernel"][0, 0], state["linear_fuse.weight"][:, :, 0, 0].T)
    projector = initial_projector(FUSION, 896, seed=3)
    np.testing.assert_array_equal(params["projector"]["linear_1"]["kernel"],
                                  projector["face_projector.linear_1.weight"].T)
    source = json.loads((dst / "omni_jax.json").read_text())
    assert source["source_format"] == "facexformer" and source["hf_config"]["projector_init"]["seed"] == 3


def test_truncated_release_names_every_missing_tensor(tmp_path):
    table = release_table()
    lost = [k for k in table if k.startswith("backbone.0.7.1.")] + ["linear_fuse.weight"]
    path = _shapes_only(tmp_path / "truncated.pt", {k: s for k, s in table.items() if k not in lost})
    with pytest.raises(ConversionError) as error:
        convert_facexformer(path, tmp_path / "out")
    assert "missing key 'backbone.0.7.1.attn.qkv.weight': expected [3072, 1024]" in str(error.value)
    assert "missing key 'linear_fuse.weight': expected [256, 1024, 1, 1]" in str(error.value)
    # 17 parameters of that block (q, k and v each miss their third of qkv.weight and .bias) + linear_fuse
    assert len(error.value.problems) == 18
    assert not (tmp_path / "out").exists()


def test_mis_shaped_and_unknown_tensors_are_named(tmp_path):
    table = {**release_table(), "linear_c.1.proj.weight": (256, 128), "backbone.0.9.0.norm1.weight": (1024,)}
    with pytest.raises(ConversionError) as error:
        convert_facexformer(_shapes_only(tmp_path / "bad.pt", table), tmp_path / "out")
    assert "shape mismatch for 'linear_c.1.proj.weight': expected [256, 256], found [256, 128]" in str(error.value)
    assert "unexpected key 'backbone.0.9.0.norm1.weight' [1024]" in str(error.value)
    assert not (tmp_path / "out").exists()

"""Swin backbone parity with transformers' SwinModel through the converter, window geometry,
the full-size parameter count and the export round trip."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import omni_jax
from omni_jax import registry
from omni_jax.configs import swin as swin_configs
from omni_jax.conversion import export_orbax_to_hf
from omni_jax.conversion.engine import abstract_params, plan
from omni_jax.conversion.formats import family_for_hf_config
from omni_jax.conversion.io import CheckpointReader, write_safetensors
from omni_jax.models import swin
from tests.conftest import RTOL, build_hf, convert, rel_err
from tests.conversion.test_engine import _state

# (window, image): 224 px at window 7 is FaceXFormer's geometry (grids 56, 28, 14, 7: the last
# equals the window, so it neither shifts nor pads); 80 px at window 3 pads every shifted stage
# (20 → 21, 10 → 12, 5 → 6) and merges odd grids (5 → 3), and its last grid equals the window too.
GEOMETRIES = {"w7_224": (7, 224), "w3_80_padded": (3, 80)}


def tiny_swin_config(window: int, image: int, **overrides):
    from transformers import SwinConfig

    kwargs = dict(image_size=image, patch_size=4, embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4],
                  window_size=window)
    kwargs.update(overrides)
    return SwinConfig(**kwargs)


def build_swin(model_cls, config, path, seed=0):
    """A random transformers Swin saved at `path`; its relative-position tables, which
    transformers initialises to zeros, get values too."""
    hf = build_hf(model_cls, config, path, seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.normal_(0.0, 1.0)
    hf.save_pretrained(path)
    return hf


def reference_outputs(hf, pixels: np.ndarray):
    """transformers' outputs, with the stage outputs before downsampling as [batch, h, w, c]."""
    with torch.no_grad():
        ref = hf(torch.from_numpy(pixels).permute(0, 3, 1, 2), output_hidden_states=True,
                 output_hidden_states_before_downsampling=True)
    return ref, [h.permute(0, 2, 3, 1).numpy() for h in ref.reshaped_hidden_states[1:]]


def _converted(tmp_path_factory, name):
    from transformers import SwinModel

    window, image = GEOMETRIES[name]
    root = tmp_path_factory.mktemp(name)
    hf = build_swin(SwinModel, tiny_swin_config(window, image), root / "hf")
    convert(root / "hf", root / "ox")
    return hf, root, image


@pytest.fixture(scope="module")
def w7_224(tmp_path_factory):
    return _converted(tmp_path_factory, "w7_224")


@pytest.fixture(scope="module")
def w3_80_padded(tmp_path_factory):
    return _converted(tmp_path_factory, "w3_80_padded")


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_swin_matches_transformers(geometry, request):
    hf, root, image = request.getfixturevalue(geometry)
    model, params = omni_jax.load_pretrained(root / "ox")
    pixels = np.random.RandomState(0).randn(2, image, image, 3).astype(np.float32)
    ref, ref_stages = reference_outputs(hf, pixels)
    out = jax.jit(model.apply)({"params": params}, jnp.asarray(pixels))
    assert rel_err(out["last_hidden_state"], ref.last_hidden_state) < RTOL
    assert rel_err(out["pooler_output"], ref.pooler_output) < RTOL
    assert [o.shape for o in out["stage_outputs"]] == [r.shape for r in ref_stages]
    for ours, theirs in zip(out["stage_outputs"], ref_stages):
        assert rel_err(ours, theirs) < RTOL
    # The last stage's grid equals the window in both geometries.
    assert ref_stages[-1].shape[1] == hf.config.window_size


def test_bfloat16_close_to_float32(w3_80_padded):
    hf, root, image = w3_80_padded
    model, params = omni_jax.load_pretrained(root / "ox", dtype="bfloat16")
    pixels = np.random.RandomState(1).randn(1, image, image, 3).astype(np.float32)
    ref, _ = reference_outputs(hf, pixels)
    out = jax.jit(model.apply)({"params": params}, jnp.asarray(pixels))
    assert out["last_hidden_state"].dtype == jnp.bfloat16
    assert rel_err(out["last_hidden_state"].astype(jnp.float32), ref.last_hidden_state) < 2e-2


def test_remat_changes_nothing(w3_80_padded):
    _, root, image = w3_80_padded
    model, params = omni_jax.load_pretrained(root / "ox")
    remat = registry.build(registry.FAMILIES["swin"], {**model.config.to_dict(), "remat_policy": "full"})
    pixels = jnp.asarray(np.random.RandomState(2).randn(1, image, image, 3).astype(np.float32))
    out = lambda m: jax.jit(m.apply)({"params": params}, pixels)["last_hidden_state"]
    np.testing.assert_allclose(out(remat), out(model), atol=1e-6)


def test_export_round_trip_loads_in_transformers(w3_80_padded, tmp_path):
    from transformers import SwinModel

    hf, root, _ = w3_80_padded
    export_orbax_to_hf(root / "ox", tmp_path / "back")
    reloaded = SwinModel.from_pretrained(tmp_path / "back").eval()
    for (name, p), (_, q) in zip(hf.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(p, q), name


def test_hub_classification_checkpoint_plans_onto_the_backbone(tmp_path):
    """Hub checkpoints (microsoft/swin-*) are SwinForImageClassification ("swin." + a classifier)
    and still carry the relative-position index buffers: both are dropped, the rest maps."""
    from transformers import SwinForImageClassification

    build_swin(SwinForImageClassification, tiny_swin_config(3, 96, num_labels=5), tmp_path / "hf")
    state = _state(tmp_path / "hf")
    state["swin.encoder.layers.0.blocks.0.attention.self.relative_position_index"] = np.arange(81)
    (tmp_path / "src").mkdir()
    write_safetensors(tmp_path / "src", state)
    shutil.copy(tmp_path / "hf" / "config.json", tmp_path / "src" / "config.json")
    family, config = family_for_hf_config(json.loads((tmp_path / "src" / "config.json").read_text()))
    fmt, leaves = plan(CheckpointReader(tmp_path / "src"), family, config)
    assert fmt.name == "swin_image_classification"
    used = {key for leaf in leaves for key in leaf.sources.values()}
    assert used == {key for key in state if key.startswith("swin.") and not key.endswith("relative_position_index")}


@pytest.mark.parametrize("grid,window,expected", [
    ((7, 7), 7, ((7, 7), (0, 0))),       # grid = window: neither shifts nor pads
    ((5, 5), 7, ((7, 7), (0, 0))),       # smaller: torchvision pads, does not shift
    ((56, 56), 7, ((56, 56), (3, 3))),
    ((10, 10), 7, ((14, 14), (3, 3))),   # padded, shifted
    ((7, 14), 7, ((7, 14), (0, 3))),     # torchvision decides per axis
])
def test_window_geometry(grid, window, expected):
    assert swin.window_geometry(*grid, window) == expected


@pytest.mark.parametrize("padded,window", [((14, 14), 7), ((21, 21), 3), ((12, 12), 3)])
def test_mask_and_position_index_equal_transformers(padded, window):
    from transformers.models.swin.modeling_swin import SwinLayer, SwinRelativePositionBias

    layer = SwinLayer(tiny_swin_config(window, 224), dim=16, input_resolution=padded, num_heads=1,
                      shift_size=window // 2)
    theirs = layer.get_attn_mask(*padded, dtype=torch.float32, device="cpu").numpy()
    np.testing.assert_array_equal(swin.shifted_window_mask(padded, window, (window // 2,) * 2), theirs)
    index = SwinRelativePositionBias(1, (window, window))._create_relative_position_index().numpy()
    np.testing.assert_array_equal(swin.relative_position_index(window), index)


def test_swin_b_stacks_its_18_block_stage():
    """(Its parameter count is in tests/test_configs.py.)"""
    params = abstract_params(registry.FAMILIES["swin"], swin_configs.get_config("base"))
    assert params["encoder/layers_2/blocks/attention/q_proj/kernel"].shape == (18, 512, 16, 32)
    assert params["encoder/layers_2/blocks/relative_position_bias_table"].shape == (18, 169, 16)


def test_every_parameter_has_logical_axes():
    cfg = swin_configs.get_config("tiny")
    family = registry.FAMILIES["swin"]
    boxed = registry.abstract_params(family, cfg, boxed=True)
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: hasattr(x, "names"))
    assert leaves and all(hasattr(x, "names") and len(x.names) == len(x.value.shape) for x in leaves)

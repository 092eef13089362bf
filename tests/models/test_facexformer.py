"""The face encoder against a PyTorch reference (omni_jax/testing/reference/facexformer.py: transformers' SwinModel
for the backbone; fusion head, pooling and projector written from their description), with the
weights going through the FaceXFormer converter in the release's key names."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import omni_jax
from omni_jax import registry
from omni_jax.configs import facexformer as facexformer_configs
from omni_jax.conversion.facexformer import convert_facexformer
from omni_jax.models import facexformer, swin
from omni_jax.sharding import LOGICAL_AXIS_RULES, make_mesh
from omni_jax.testing.reference.facexformer import LLM_WIDTH, FaceEncoder, FusionHead, release_file, torch_projector
from tests.conftest import RTOL, rel_err
from tests.models.test_swin import build_swin, tiny_swin_config

IMAGE = 96  # window 3: stage grids 24, 12, 6, 3 (the last equals the window)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A tiny release-layout file (with a trained-looking projector) through the converter."""
    from transformers import SwinModel

    root = tmp_path_factory.mktemp("facexformer")
    hf = build_swin(SwinModel, tiny_swin_config(3, IMAGE), root / "hf")
    torch.manual_seed(1)
    head = FusionHead([hf.config.embed_dim * 2 ** i for i in range(4)]).eval()
    projector = torch_projector()
    path = release_file(root / "release.pt", hf, head, projector)
    config = facexformer.release_config(6, LLM_WIDTH, swin.config_from_hf(hf.config.to_dict()))
    convert_facexformer(path, root / "ox", config)
    return hf, head, projector, root / "ox"


# 24×24 → 6×6 averages 4×4 blocks; 5×7 has uneven bins. The grid has no parameters: one
# converted checkpoint serves every grid.
@pytest.mark.parametrize("grid", [(6, 6), (5, 7)])
def test_face_encoder_matches_reference(converted, grid):
    hf, head, projector, ox = converted
    model, params = omni_jax.load_pretrained(ox)
    model = registry.build(registry.FAMILIES["facexformer"], {**model.config.to_dict(), "face_grid": list(grid)})
    pixels = np.random.RandomState(0).randn(2, IMAGE, IMAGE, 3).astype(np.float32)
    with torch.no_grad():
        fused, pooled, tokens = FaceEncoder(hf, head, projector, grid)(torch.from_numpy(pixels).permute(0, 3, 1, 2))
    out = jax.jit(model.apply)({"params": params}, jnp.asarray(pixels))
    assert out["fused_features"].shape == (2, 24, 24, 256)
    assert rel_err(out["fused_features"], fused.permute(0, 2, 3, 1)) < RTOL
    assert rel_err(out["pooled_features"], pooled) < RTOL
    assert out["last_hidden_state"].shape == (2, grid[0] * grid[1], LLM_WIDTH)
    assert rel_err(out["last_hidden_state"], tokens) < RTOL


def test_unrolled_blocks_equal_scanned(converted):
    """load_pretrained(scan_layers=False) unstacks Swin's blocks (the CPU's inference layout)."""
    *_, ox = converted
    model, params = omni_jax.load_pretrained(ox)
    unrolled, unrolled_params = omni_jax.load_pretrained(ox, scan_layers=False)
    stage = unrolled_params["backbone"]["encoder"]["layers_2"]
    assert "blocks" not in stage and sorted(k for k in stage if k.startswith("blocks_")) == ["blocks_0", "blocks_1"]
    pixels = jnp.asarray(np.random.RandomState(0).randn(2, IMAGE, IMAGE, 3).astype(np.float32))
    scanned_out = jax.jit(model.apply)({"params": params}, pixels)
    unrolled_out = jax.jit(unrolled.apply)({"params": unrolled_params}, pixels)
    assert rel_err(unrolled_out["last_hidden_state"], scanned_out["last_hidden_state"]) < 1e-6


def test_fusion_head_alone_matches_reference(converted):
    """The fusion on arbitrary stage maps, independent of the backbone."""
    _, head, _, ox = converted
    model, params = omni_jax.load_pretrained(ox)
    rng = np.random.RandomState(1)
    stages = [rng.randn(2, 24 // 2 ** i, 24 // 2 ** i, 16 * 2 ** i).astype(np.float32) for i in range(4)]
    with torch.no_grad():
        ref = head([torch.from_numpy(s).permute(0, 3, 1, 2) for s in stages])
    out = jax.jit(lambda p, x: model.apply({"params": p}, x, method="head")["fused_features"])(
        params, tuple(map(jnp.asarray, stages)))
    assert rel_err(out, ref.permute(0, 2, 3, 1)) < RTOL


def test_projector_in_the_file_is_used(converted):
    """A file that carries face_projector.* (e.g. after phase 2) is converted as is."""
    _, _, projector, ox = converted
    _, params = omni_jax.load_pretrained(ox)
    np.testing.assert_array_equal(params["projector"]["linear_2"]["kernel"],
                                  projector["linear_2"].weight.detach().numpy().T)
    assert "projector_init" not in json.loads((ox / "omni_jax.json").read_text())["hf_config"]


@pytest.mark.parametrize("data,fsdp,tensor", [(1, 8, 1), (2, 2, 2)])
def test_sharded_equals_unsharded(converted, data, fsdp, tensor):
    """Parameters restored straight into shards by their logical axes; batch over data × fsdp."""
    ox = converted[3]
    pixels = np.random.RandomState(3).randn(8, IMAGE, IMAGE, 3).astype(np.float32)
    model, params = omni_jax.load_pretrained(ox)
    expected = jax.jit(model.apply)({"params": params}, pixels)["last_hidden_state"]
    mesh = make_mesh(data, fsdp, tensor)
    model, params = omni_jax.load_pretrained(ox, mesh=mesh)
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        out = jax.jit(model.apply)({"params": params}, jax.device_put(pixels, batch))["last_hidden_state"]
    assert rel_err(out, expected) < 1e-5


def test_full_size_shapes():
    """FaceXFormer at 224 px: 128@56², 256@28², 512@14², 1024@7² → fused 256@56² → 196 tokens
    of Qwen2-7B's width, checked without materialising a parameter."""
    cfg = facexformer_configs.get_config("base")
    model = registry.build(registry.FAMILIES["facexformer"], cfg)
    params = registry.abstract_params(registry.FAMILIES["facexformer"], cfg)
    pixels = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    out = jax.eval_shape(lambda p, x: model.apply({"params": p}, x), params, pixels)
    stages = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, method=lambda m, x: m.backbone(x)),
                            params, pixels)["stage_outputs"]
    assert [s.shape for s in stages] == [(2, 56, 56, 128), (2, 28, 28, 256), (2, 14, 14, 512), (2, 7, 7, 1024)]
    assert out["fused_features"].shape == (2, 56, 56, 256)
    assert out["last_hidden_state"].shape == (2, 196, 3584) and facexformer.face_tokens(cfg) == 196


def test_every_parameter_has_logical_axes():
    cfg = facexformer_configs.get_config("tiny")
    boxed = registry.abstract_params(registry.FAMILIES["facexformer"], cfg, boxed=True)
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: hasattr(x, "names"))
    assert leaves and all(hasattr(x, "names") and len(x.names) == len(x.value.shape) for x in leaves)

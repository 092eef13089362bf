"""The face encoder against a PyTorch reference: transformers' SwinModel for the backbone and the
fusion head, pooling and projector written here from their description, with the weights going
through the FaceXFormer converter in the release's key names."""
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import omni_jax
from configs import facexformer as facexformer_configs
from omni_jax import registry
from omni_jax.conversion.facexformer import convert_facexformer
from omni_jax.models import facexformer, swin
from tests.conftest import RTOL, rel_err
from tests.models.test_swin import build_swin, reference_outputs, tiny_swin_config

LLM_WIDTH = 64
IMAGE = 96  # window 3: stage grids 24, 12, 6, 3 (the last equals the window)

# transformers Swin module names → torchvision swin_b names as FaceXFormer stores them (backbone.0 =
# features, backbone.1 = the final norm); q, k and v are packed into qkv separately.
_TORCHVISION = [
    (r"^embeddings\.patch_embeddings\.projection\.", "backbone.0.0.0."),
    (r"^embeddings\.norm\.", "backbone.0.0.2."),
    (r"^layernorm\.", "backbone.1."),
    (r"^encoder\.layers\.(\d)\.downsample\.", lambda m: f"backbone.0.{2 * int(m[1]) + 2}."),
    (r"^encoder\.layers\.(\d)\.blocks\.", lambda m: f"backbone.0.{2 * int(m[1]) + 1}."),
    (r"layernorm_before", "norm1"), (r"layernorm_after", "norm2"),
    (r"attention\.relative_position_bias\.relative_position_bias_table", "attn.relative_position_bias_table"),
    (r"attention\.o_proj", "attn.proj"), (r"mlp\.fc1", "mlp.0"), (r"mlp\.fc2", "mlp.3"),
]


class FusionHead(torch.nn.Module):
    """FaceXFormer's multi-scale fusion as described: a Linear to 256 per scale, bilinear
    upsampling to the first scale's grid, deepest-first concatenation, 1×1 conv without bias."""

    def __init__(self, widths, width=256):
        super().__init__()
        self.linear_c = torch.nn.ModuleList(torch.nn.ModuleDict({"proj": torch.nn.Linear(w, width)}) for w in widths)
        self.linear_fuse = torch.nn.Conv2d(len(widths) * width, width, kernel_size=1, bias=False)

    def forward(self, features):
        """features: [batch, c_s, h_s, w_s] per stage → [batch, 256, h_0, w_0]."""
        size = features[0].shape[2:]
        scales = [F.interpolate(mlp["proj"](f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), size=size, mode="bilinear",
                                align_corners=False) for mlp, f in zip(self.linear_c, features)]
        return self.linear_fuse(torch.cat(scales[::-1], dim=1))


def face_tokens_reference(fused, grid, projector):
    """Omni-Emotion's face tokens: adaptive average pooling, flattening, Linear → GELU → Linear."""
    pooled = F.adaptive_avg_pool2d(fused, grid).flatten(2).transpose(1, 2)
    return pooled, projector["linear_2"](F.gelu(projector["linear_1"](pooled)))


def torchvision_names(hf_state: dict, window: int) -> dict:
    """A transformers SwinModel state dict (its module names) in torchvision's names."""
    out = {}
    for key, value in hf_state.items():
        qkv = re.match(r"(.*)attention\.q_proj\.(weight|bias)$", key)
        if qkv:
            parts = [hf_state[f"{qkv[1]}attention.{p}.{qkv[2]}"] for p in ("q_proj", "k_proj", "v_proj")]
            key, value = f"{qkv[1]}attn.qkv.{qkv[2]}", torch.cat(parts)
            # torchvision keeps the index as a persistent buffer: the release carries it.
            out[_rename(f"{qkv[1]}attn.relative_position_index")] = torch.arange(window ** 4)
        elif re.search(r"attention\.(k_proj|v_proj)\.|relative_position_index", key):
            continue
        out[_rename(key)] = value
    return out


def _rename(key: str) -> str:
    for pattern, replacement in _TORCHVISION:
        key = re.sub(pattern, replacement, key)
    return key


def release_file(path, hf_swin, head, projector=None):
    """A .pt laid out as the FaceXFormer release, with decoder and positional tensors to drop."""
    state = {**torchvision_names(hf_swin.state_dict(), hf_swin.config.window_size), **head.state_dict(),
             "face_decoder.landmarks_token.weight": torch.randn(1, 256),
             "face_decoder.transformer.layers.0.self_attn.q_proj.weight": torch.randn(256, 256),
             "pe_layer.positional_encoding_gaussian_matrix": torch.randn(2, 128)}
    if projector is not None:
        state.update({f"face_projector.{k}": v for k, v in projector.state_dict().items()})
    torch.save({"state_dict_backbone": state, "epoch": 12}, path)
    return path


def torch_projector(width=256, llm_width=LLM_WIDTH):
    return torch.nn.ModuleDict({"linear_1": torch.nn.Linear(width, llm_width),
                                "linear_2": torch.nn.Linear(llm_width, llm_width)})


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
    convert_facexformer(path, root / "ox", config, progress=False)
    return hf, head, projector, root / "ox"


# 24×24 → 6×6 averages 4×4 blocks; 5×7 has uneven bins. The grid has no parameters: one
# converted checkpoint serves every grid.
@pytest.mark.parametrize("grid", [(6, 6), (5, 7)])
def test_face_encoder_matches_reference(converted, grid):
    hf, head, projector, ox = converted
    model, params = omni_jax.load_pretrained(ox)
    model = registry.build(registry.FAMILIES["facexformer"], {**model.config.to_dict(), "face_grid": list(grid)})
    pixels = np.random.RandomState(0).randn(2, IMAGE, IMAGE, 3).astype(np.float32)
    ref, stages = reference_outputs(hf, pixels)
    with torch.no_grad():
        fused = head([torch.from_numpy(s).permute(0, 3, 1, 2) for s in stages])
        pooled, tokens = face_tokens_reference(fused, grid, projector)
    out = jax.jit(model.apply)({"params": params}, jnp.asarray(pixels))
    assert out["fused_features"].shape == (2, 24, 24, 256)
    assert rel_err(out["fused_features"], fused.permute(0, 2, 3, 1)) < RTOL
    assert rel_err(out["pooled_features"], pooled) < RTOL
    assert out["last_hidden_state"].shape == (2, grid[0] * grid[1], LLM_WIDTH)
    assert rel_err(out["last_hidden_state"], tokens) < RTOL


def test_fusion_head_alone_matches_reference(converted):
    """The fusion on arbitrary stage maps, independent of the backbone."""
    _, head, _, ox = converted
    model, params = omni_jax.load_pretrained(ox)
    rng = np.random.RandomState(1)
    stages = [rng.randn(2, 24 // 2 ** i, 24 // 2 ** i, 16 * 2 ** i).astype(np.float32) for i in range(4)]
    with torch.no_grad():
        ref = head([torch.from_numpy(s).permute(0, 3, 1, 2) for s in stages])
    out = jax.jit(lambda p, x: model.apply({"params": p}, x, method="fuse"))(params, tuple(map(jnp.asarray, stages)))
    assert rel_err(out, ref.permute(0, 2, 3, 1)) < RTOL


def test_projector_in_the_file_is_used(converted):
    """A file that carries face_projector.* (e.g. after phase 2) is converted as is."""
    _, _, projector, ox = converted
    _, params = omni_jax.load_pretrained(ox)
    np.testing.assert_array_equal(params["projector"]["linear_2"]["kernel"],
                                  projector["linear_2"].weight.detach().numpy().T)
    assert "projector_init" not in json.loads((ox / "omni_jax.json").read_text())["hf_config"]


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

"""The face encoder in PyTorch, written from its description, for the parity tests and the
benchmark: transformers' SwinModel supplies the backbone (torchvision does not load beside the
CPU build of torch), the fusion head, pooling and projector are below, and `release_file` lays
the weights out as the FaceXFormer release does.

torch is imported where it is used, and the two torch.nn.Module classes (`FusionHead`,
`FaceEncoder`) are defined on first access, so that importing this module needs no torch
(tests/test_imports.py)."""
from __future__ import annotations

import functools
import re

LLM_WIDTH = 64

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


def fuse(linear_c, linear_fuse, features):
    """FaceXFormer's multi-scale fusion as described: a Linear to 256 per scale, bilinear
    upsampling to the first scale's grid, deepest-first concatenation, 1×1 conv without bias.

    features: [batch, c_s, h_s, w_s] per stage → [batch, 256, h_0, w_0]."""
    import torch
    import torch.nn.functional as F

    size = features[0].shape[2:]
    scales = [F.interpolate(mlp["proj"](f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), size=size, mode="bilinear",
                            align_corners=False) for mlp, f in zip(linear_c, features)]
    return linear_fuse(torch.cat(scales[::-1], dim=1))


def face_tokens_reference(fused, grid, projector):
    """Omni-Emotion's face tokens: adaptive average pooling, flattening, Linear → GELU → Linear."""
    import torch.nn.functional as F

    pooled = F.adaptive_avg_pool2d(fused, grid).flatten(2).transpose(1, 2)
    return pooled, projector["linear_2"](F.gelu(projector["linear_1"](pooled)))


@functools.cache
def _modules() -> dict[str, type]:
    import torch

    class FusionHead(torch.nn.Module):
        """`fuse` with its parameters, named as in the release (linear_c.{i}.proj, linear_fuse)."""

        def __init__(self, widths, width=256):
            super().__init__()
            self.linear_c = torch.nn.ModuleList(torch.nn.ModuleDict({"proj": torch.nn.Linear(w, width)})
                                                for w in widths)
            self.linear_fuse = torch.nn.Conv2d(len(widths) * width, width, kernel_size=1, bias=False)

        def forward(self, features):
            return fuse(self.linear_c, self.linear_fuse, features)

    class FaceEncoder(torch.nn.Module):
        """transformers' SwinModel (stage outputs before downsampling) → FusionHead → face tokens."""

        def __init__(self, swin, head: FusionHead, projector, grid):
            super().__init__()
            self.swin, self.head, self.projector, self.grid = swin, head, projector, tuple(grid)

        def forward(self, pixel_values):
            """pixel_values: [batch, 3, height, width] → (fused map, pooled features, projected tokens)."""
            out = self.swin(pixel_values, output_hidden_states=True, output_hidden_states_before_downsampling=True)
            fused = self.head(list(out.reshaped_hidden_states[1:]))
            return (fused, *face_tokens_reference(fused, self.grid, self.projector))

    return {"FusionHead": FusionHead, "FaceEncoder": FaceEncoder}


def __getattr__(name: str) -> type:
    """`FusionHead` and `FaceEncoder`, defined (with torch imported) on first access (PEP 562)."""
    if name in ("FusionHead", "FaceEncoder"):
        return _modules()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def torchvision_names(hf_state: dict, window: int) -> dict:
    """A transformers SwinModel state dict (its module names) in torchvision's names."""
    import torch

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
    import torch

    state = {**torchvision_names(hf_swin.state_dict(), hf_swin.config.window_size), **head.state_dict(),
             "face_decoder.landmarks_token.weight": torch.randn(1, 256),
             "face_decoder.transformer.layers.0.self_attn.q_proj.weight": torch.randn(256, 256),
             "pe_layer.positional_encoding_gaussian_matrix": torch.randn(2, 128)}
    if projector is not None:
        state.update({f"face_projector.{k}": v for k, v in projector.state_dict().items()})
    torch.save({"state_dict_backbone": state, "epoch": 12}, path)
    return path


def torch_projector(width=256, llm_width=LLM_WIDTH):
    import torch

    return torch.nn.ModuleDict({"linear_1": torch.nn.Linear(width, llm_width),
                                "linear_2": torch.nn.Linear(llm_width, llm_width)})

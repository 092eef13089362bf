"""The face path checked against torchvision and PIL directly, where they load (a GPU machine's
image: torchvision does not load beside the CPU build of torch on the development machines, so
the test suite's references are transformers' SwinModel and torch's antialiased bicubic).

1. torchvision `swin_b` with random weights, wrapped as FaceXFormer wraps it (`backbone` = the
   model's children minus the head, forward hooks on features 1, 3, 5, 7) with the fusion head of
   omni_jax/testing/reference/facexformer.py: its own state dict — key names written by torchvision — is saved as
   the release's `state_dict_backbone` (plus a task-decoder tensor to drop) and converted with
   `convert_facexformer`. Stage outputs, the final norm, the fused map and the tokens are
   compared in float32 on the CPU, at 224 px and at a non-square 192×160 px, where stage 4's
   6×5 grid is smaller than the window (torchvision pads it) and stage 3's 12×10 pads and shifts.
2. PIL: FaceXFormer's preprocessing (50 % margin, PIL crop at int corners, torchvision
   Resize((224, 224), BICUBIC), ToTensor, Normalize) vs `omni_jax.data.faces.face_crops`.

    python experiments/check_face_torchvision.py [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import jax
import numpy as np
import torch
import torchvision
from PIL import Image

import omni_jax
from omni_jax.conversion.facexformer import convert_facexformer
from omni_jax.data.faces import face_crops
from omni_jax.models import facexformer
from omni_jax.testing.reference.facexformer import FusionHead, face_tokens_reference, fuse, torch_projector

GRID, LLM_WIDTH = (14, 14), 256


class TorchvisionFaceXFormer(torch.nn.Module):
    """FaceXFormer's encoder as its code builds it: swin_b minus the head, hooks on the stages."""

    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Sequential(*list(torchvision.models.swin_b().children())[:-1])
        head = FusionHead([128, 256, 512, 1024])
        self.linear_c, self.linear_fuse = head.linear_c, head.linear_fuse
        self.face_projector = torch_projector(256, LLM_WIDTH)
        self.features = []
        for name, module in self.backbone.named_modules():
            if name in ("0.1", "0.3", "0.5", "0.7"):
                module.register_forward_hook(lambda m, i, out: self.features.append(out))

    def forward(self, pixels):
        """pixels [batch, 3, h, w] → (stage outputs NHWC, final-norm output NHWC, fused, pooled, tokens)."""
        self.features.clear()
        normed = self.backbone[1](self.backbone[0](pixels))
        fused = fuse(self.linear_c, self.linear_fuse, [f.permute(0, 3, 1, 2) for f in self.features])
        return (list(self.features), normed, fused, *face_tokens_reference(fused, GRID, self.face_projector))


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def check_swin_b(tmp: Path) -> dict:
    torch.manual_seed(0)
    reference = TorchvisionFaceXFormer().eval()
    with torch.no_grad():  # non-trivial norms and biases, so that a dropped tensor shows
        for name, p in reference.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    state = {**reference.state_dict(), "face_decoder.landmarks_token.weight": torch.randn(1, 256)}
    torch.save({"state_dict_backbone": state}, tmp / "release.pt")
    config = facexformer.release_config(GRID, LLM_WIDTH)
    convert_facexformer(tmp / "release.pt", tmp / "ox", config)
    model, params = omni_jax.load_pretrained(tmp / "ox")
    results = {"torchvision_keys": len(state)}
    for height, width in ((224, 224), (192, 160)):
        pixels = np.random.RandomState(height).randn(2, height, width, 3).astype(np.float32)
        with torch.no_grad():
            stages, normed, fused, pooled, tokens = reference(torch.from_numpy(pixels).permute(0, 3, 1, 2))
        stem = jax.jit(lambda p, x: model.apply({"params": p}, x, method=lambda m, x: m.backbone(x)))
        backbone = stem(params, pixels)
        out = jax.jit(model.apply)({"params": params}, pixels)
        results[f"{height}x{width}"] = {
            "stage_grids": [list(s.shape[1:3]) for s in stages],
            "stage_rel_err": [rel_err(o, s) for o, s in zip(backbone["stage_outputs"], stages)],
            "final_norm_rel_err": rel_err(backbone["last_hidden_state"], normed.reshape(2, -1, 1024)),
            "fused_rel_err": rel_err(out["fused_features"], fused.permute(0, 2, 3, 1)),
            "pooled_rel_err": rel_err(out["pooled_features"], pooled),
            "tokens_rel_err": rel_err(out["last_hidden_state"], tokens),
        }
    return results


def facexformer_preprocess(frame: np.ndarray, box) -> np.ndarray:
    """The FaceXFormer demo's steps on a PIL image → [224, 224, 3] normalised (NHWC)."""
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * 0.25, (y1 - y0) * 0.25
    height, width = frame.shape[:2]
    x0, y0, x1, y1 = max(0, x0 - dx), max(0, y0 - dy), min(width, x1 + dx), min(height, y1 + dy)
    crop = Image.fromarray(frame).crop((int(x0), int(y0), int(x1), int(y1)))
    transform = torchvision.transforms.Compose([
        torchvision.transforms.Resize(size=(224, 224), interpolation=torchvision.transforms.InterpolationMode.BICUBIC),
        torchvision.transforms.ToTensor(),
        torchvision.transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    return transform(crop).permute(1, 2, 0).numpy()


def check_crops() -> dict:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:360, 0:480]
    smooth = np.stack([(xx * 255 / 479), (yy * 255 / 359), (xx + yy) * 255 / 838], -1)
    smooth = (smooth + 40 * np.sin(xx / 7.0)[..., None]).clip(0, 255).astype(np.uint8)
    results = {}
    for kind, frame in (("noise", rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)), ("smooth", smooth)):
        worst, differing = 0.0, []
        for box in ((100.4, 50.7, 260.2, 250.9), (10.0, 5.0, 90.0, 80.0), (300.5, 100.0, 470.0, 359.0)):
            ours = face_crops(frame[None], [box]).pixel_values[0]
            theirs = facexformer_preprocess(frame, box)
            grey = np.abs(ours - theirs) * np.array([0.229, 0.224, 0.225]) * 255  # back to grey levels
            worst, differing = max(worst, float(grey.max())), differing + [float((grey > 0.5).mean())]
        results[kind] = {"max_grey_levels": worst, "fraction_differing": max(differing)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {"jax": jax.__version__, "jax_device": jax.devices()[0].device_kind, "torch": torch.__version__,
                   "torchvision": torchvision.__version__, "swin_b": check_swin_b(Path(tmp)),
                   "crops": check_crops()}
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

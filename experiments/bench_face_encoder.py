"""Face encoder images/s, JAX vs PyTorch in the same process on the same machine.

The same random weights in both: a transformers `SwinModel` with FaceXFormer's fusion head,
pooling and projector in PyTorch (omni_jax/testing/reference/facexformer.py), written out in the FaceXFormer
release's layout and converted with `convert_facexformer` for the jitted JAX encoder. Face crops
of 224 px; full size (Swin-B, 196 tokens, 3584-wide projector) unless --tiny. Each framework runs
on the GPU where it sees one, else on the CPU; the two take turns (medians, and the spread of
the per-pair ratios). In float32 both are held to full float32 matrix
products (JAX's default on GPUs would be TF32; PyTorch's is full float32).

    .venv/bin/python experiments/bench_face_encoder.py [--batch 8] [--repeats 5] [--dtype bfloat16] [--tiny] [--json]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from bench_common import finish, interleaved_times, ratio_spread, roofline, roofline_line, run_info
from transformers import SwinConfig, SwinModel

import omni_jax
from omni_jax.configs import facexformer as facexformer_configs
from omni_jax.conversion.facexformer import convert_facexformer
from omni_jax.models import swin
from omni_jax.testing.reference.facexformer import FaceEncoder, FusionHead, release_file, torch_projector


def build(variant: str, tmp: Path, dtype: str):
    """The PyTorch encoder and the same weights converted and loaded in JAX."""
    config = facexformer_configs.get_config(variant)
    torch.manual_seed(0)
    backbone = SwinModel(SwinConfig(**swin.config_to_hf(config.swin)), add_pooling_layer=False).eval()
    widths = [config.swin.embed_dim * 2 ** i for i in range(len(config.swin.depths))]
    head, projector = FusionHead(widths).eval(), torch_projector(config.decoder_hidden_size, config.llm_width).eval()
    reference = FaceEncoder(backbone, head, projector, config.face_grid).eval()
    convert_facexformer(release_file(tmp / "release.pt", backbone, head, projector), tmp / "ox", config)
    model, params = omni_jax.load_pretrained(tmp / "ox", dtype=dtype, scan_layers=False)
    return reference, model, params, config


def bench(variant: str, batch: int, repeats: int, dtype: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        reference, model, params, config = build(variant, Path(tmp), dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    reference = reference.to(device, getattr(torch, dtype))
    size = config.swin.image_size
    pixels = np.random.RandomState(0).randn(batch, size, size, 3).astype(np.float32)
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x)["last_hidden_state"])
    x = jnp.asarray(pixels, dtype)
    start = time.perf_counter()
    forward(params, x).block_until_ready()
    compile_s = time.perf_counter() - start
    nchw = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous().to(device, getattr(torch, dtype))

    def run_torch():
        out = reference(nchw)
        if device == "cuda":
            torch.cuda.synchronize()
        return out[2]

    with torch.inference_mode():
        outputs, times = interleaved_times({"jax": lambda: forward(params, x).block_until_ready(), "torch": run_torch},
                                           repeats)
    ours, theirs = outputs["jax"], outputs["torch"].float().cpu().numpy()
    jax_s, torch_s = statistics.median(times["jax"]), statistics.median(times["torch"])
    ours = np.asarray(ours.astype(jnp.float32))
    return {"variant": variant, "dtype": dtype, "batch": batch, "image": size, "tokens": ours.shape[1],
            "width": ours.shape[2], "jax_device": jax.devices()[0].device_kind, "torch_device": device,
            "jax_images_per_s": batch / jax_s, "torch_images_per_s": batch / torch_s, "ratio": torch_s / jax_s,
            "ratio_spread": ratio_spread(times["torch"], times["jax"]),
            "jax_compile_s": compile_s,
            "roofline": roofline(forward, (params, x), jax_s, torch_s, dtype),
            "max_rel_err": float(np.abs(ours - theirs).max() / np.abs(theirs).max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--tiny", action="store_true", help="the tiny test configuration instead of Swin-B")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())
    if args.dtype == "float32":  # float32 means float32 matrix products, not TF32, on GPUs too
        jax.config.update("jax_default_matmul_precision", "highest")
    r = bench("tiny" if args.tiny else "base", args.batch, args.repeats, args.dtype)
    results = {**run_info(), **r}
    print(f"face encoder ({r['variant']}, {r['image']} px, batch {r['batch']}, {r['dtype']} → {r['tokens']} × "
          f"{r['width']}): JAX {r['jax_images_per_s']:.2f} images/s on {r['jax_device']}, PyTorch "
          f"{r['torch_images_per_s']:.2f} images/s on {r['torch_device']}, ratio {r['ratio']:.2f}x "
          f"(runs {r['ratio_spread'][0]:.2f}-{r['ratio_spread'][1]:.2f}x; JAX compile + first run "
          f"{r['jax_compile_s']:.1f} s), max rel err {r['max_rel_err']:.1e}\n"
          f"  {roofline_line(r['roofline'])}")
    finish(results, args.json)


if __name__ == "__main__":
    main()

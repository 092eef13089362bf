"""SigLIP vision tower parity with transformers' SiglipVisionModel through the converter."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import omni_jax
from tests.conftest import RTOL, build_hf, convert, rel_err, tiny_siglip_config


@pytest.mark.parametrize("use_head", [False, True])
def test_siglip_vision_matches_transformers(tmp_path, use_head):
    from transformers import SiglipVisionModel

    hf = build_hf(SiglipVisionModel, tiny_siglip_config(vision_use_head=use_head), tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "ox")
    model, params = omni_jax.load_pretrained(tmp_path / "ox")
    pixels = np.random.RandomState(0).randn(2, 60, 60, 3).astype(np.float32)
    with torch.no_grad():
        ref = hf(torch.from_numpy(pixels).permute(0, 3, 1, 2), output_hidden_states=True)
    out = model.apply({"params": params}, jnp.asarray(pixels), output_hidden_states=True)
    assert rel_err(out["last_hidden_state"], ref.last_hidden_state) < RTOL
    assert len(out["hidden_states"]) == len(ref.hidden_states)
    for ours, theirs in zip(out["hidden_states"], ref.hidden_states):
        assert rel_err(ours, theirs) < RTOL
    if use_head:
        assert rel_err(out["pooler_output"], ref.pooler_output) < RTOL
    else:
        assert "pooler_output" not in out


def test_dual_tower_siglip_converts_its_vision_half(tmp_path):
    from transformers import SiglipConfig, SiglipModel, SiglipTextConfig

    config = SiglipConfig(text_config=SiglipTextConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                                       num_hidden_layers=1, num_attention_heads=4).to_dict(),
                          vision_config=tiny_siglip_config(vision_use_head=True).to_dict())
    hf = build_hf(SiglipModel, config, tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "ox")
    model, params = omni_jax.load_pretrained(tmp_path / "ox")
    pixels = np.random.RandomState(1).randn(1, 60, 60, 3).astype(np.float32)
    with torch.no_grad():
        ref = hf.vision_model(torch.from_numpy(pixels).permute(0, 3, 1, 2))
    out = model.apply({"params": params}, jnp.asarray(pixels))
    assert rel_err(out["pooler_output"], ref.pooler_output) < RTOL

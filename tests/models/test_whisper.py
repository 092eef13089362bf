"""Whisper encoder parity with transformers through the converter, and the audio projector."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import omni_jax
from omni_jax.conversion import export_orbax_to_hf
from omni_jax.models.whisper import AudioProjector
from tests.conftest import RTOL, build_hf, convert, rel_err
from tests.conversion.test_engine import _state


def tiny_whisper_config(**overrides):
    from transformers import WhisperConfig

    # 40 positions → 80 mel frames keep the test fast; full size is 1500 → 3000.
    kwargs = dict(num_mel_bins=80, d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=48,
                  decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=48, max_source_positions=40,
                  max_target_positions=16, vocab_size=96, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                  decoder_start_token_id=1)
    kwargs.update(overrides)
    return WhisperConfig(**kwargs)


def _classes():
    from transformers import WhisperForAudioClassification, WhisperForConditionalGeneration, WhisperModel

    return {"generation": WhisperForConditionalGeneration, "model": WhisperModel,
            "classification": WhisperForAudioClassification}


@pytest.mark.parametrize("kind", ["generation", "model", "classification"])
def test_encoder_matches_transformers(tmp_path, kind):
    hf = build_hf(_classes()[kind], tiny_whisper_config(num_mel_bins=128 if kind == "model" else 80), tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "ox")
    model, params = omni_jax.load_pretrained(tmp_path / "ox")
    features = np.random.RandomState(0).randn(2, hf.config.num_mel_bins, 80).astype(np.float32)
    with torch.no_grad():
        ref = hf.get_encoder()(torch.from_numpy(features), output_hidden_states=True)
    out = model.apply({"params": params}, jnp.asarray(features), output_hidden_states=True)
    assert out["last_hidden_state"].shape == (2, 40, 32)
    assert rel_err(out["last_hidden_state"], ref.last_hidden_state) < RTOL
    assert len(out["hidden_states"]) == len(ref.hidden_states)
    for ours, theirs in zip(out["hidden_states"], ref.hidden_states):
        assert rel_err(ours, theirs) < RTOL


def test_encoder_only_checkpoint_and_round_trip(tmp_path):
    from transformers import WhisperModel

    full = build_hf(WhisperModel, tiny_whisper_config(), tmp_path / "full")
    full.get_encoder().save_pretrained(tmp_path / "encoder")
    convert(tmp_path / "encoder", tmp_path / "ox")
    export_orbax_to_hf(tmp_path / "ox", tmp_path / "back")
    original, back = _state(tmp_path / "encoder"), _state(tmp_path / "back")
    assert sorted(original) == sorted(back)
    for key in original:
        np.testing.assert_array_equal(original[key], back[key], err_msg=key)
    reloaded = type(full.get_encoder()).from_pretrained(tmp_path / "back")
    for (name, p), (_, q) in zip(full.get_encoder().state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(p, q), name


def test_wrong_window_is_a_clear_error(tmp_path):
    from transformers import WhisperModel

    build_hf(WhisperModel, tiny_whisper_config(), tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "ox")
    model, params = omni_jax.load_pretrained(tmp_path / "ox")
    with pytest.raises(ValueError, match="expects 80 mel frames"):
        model.apply({"params": params}, jnp.zeros((1, 80, 60)))


def test_bfloat16_encoder_within_bound(tmp_path):
    from transformers import WhisperModel

    hf = build_hf(WhisperModel, tiny_whisper_config(), tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "ox")
    model, params = omni_jax.load_pretrained(tmp_path / "ox", dtype="bfloat16")
    features = np.random.RandomState(1).randn(1, 80, 80).astype(np.float32)
    with torch.no_grad():
        ref = hf.get_encoder()(torch.from_numpy(features)).last_hidden_state
    out = model.apply({"params": params}, jnp.asarray(features))["last_hidden_state"]
    assert out.dtype == jnp.bfloat16
    assert rel_err(out, ref) < 2e-2


def test_audio_projector_pools_three_to_one_and_matches_torch():
    states = np.random.RandomState(2).randn(2, 1500, 24).astype(np.float32)
    projector = AudioProjector(llm_width=40)
    params = nn.unbox(projector.init(jax.random.key(0), jnp.asarray(states))["params"])
    out = projector.apply({"params": params}, jnp.asarray(states))
    assert out.shape == (2, 500, 40)
    mlp = jax.tree.map(lambda x: torch.tensor(np.asarray(x)), params["mlp"])
    with torch.no_grad():
        pooled = torch.nn.functional.avg_pool1d(torch.from_numpy(states).transpose(1, 2), 3, 3).transpose(1, 2)
        hidden = torch.nn.functional.gelu(pooled @ mlp["linear_1"]["kernel"] + mlp["linear_1"]["bias"])
        ref = hidden @ mlp["linear_2"]["kernel"] + mlp["linear_2"]["bias"]
    assert rel_err(out, ref) < RTOL

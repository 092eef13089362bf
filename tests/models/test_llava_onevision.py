"""LLaVA-OneVision video logits parity with transformers, in every checkpoint naming."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import omni_jax
from omni_jax.conversion.io import CheckpointReader, write_safetensors
from omni_jax.modality_tokens import video_tokens
from tests.conftest import RTOL, convert, rel_err

FRAMES = 3


def video_inputs(hf, model_config, batch=2, seed=0):
    """A prompt with one video's placeholders per row, and channels-last frames."""
    rng = np.random.RandomState(seed)
    n_video = video_tokens(model_config, FRAMES)
    vocab = hf.config.text_config.vocab_size
    video_id = hf.config.video_token_index
    text = lambda n: rng.randint(0, 140, n)
    ids = np.stack([np.concatenate([text(3), np.full(n_video, video_id), text(4)]) for _ in range(batch)])
    assert (ids < vocab).all()
    size = hf.config.vision_config.image_size
    pixels = rng.randn(batch, FRAMES, size, size, 3).astype(np.float32)
    return ids, pixels


def hf_logits(hf, ids, pixels):
    with torch.no_grad():
        return hf(input_ids=torch.tensor(ids),
                  pixel_values_videos=torch.from_numpy(pixels).permute(0, 1, 4, 2, 3)).logits.numpy()


def test_video_logits_match_transformers(llava):
    hf, root = llava
    model, params = omni_jax.load_pretrained(root / "ox")
    ids, pixels = video_inputs(hf, model.config)
    # A 5×5 patch grid pools to 3×3 (odd grid, as 27×27 → 14×14 at full size).
    assert video_tokens(model.config, 1) == 3 * 3 + 1
    out = model.apply({"params": params}, input_ids=jnp.asarray(ids), pixel_values_videos=jnp.asarray(pixels))
    assert rel_err(out["logits"], hf_logits(hf, ids, pixels)) < RTOL


def test_video_features_match_transformers(llava):
    hf, root = llava
    model, params = omni_jax.load_pretrained(root / "ox")
    _, pixels = video_inputs(hf, model.config, batch=1)
    with torch.no_grad():
        ref = hf.model.get_video_features(torch.from_numpy(pixels).permute(0, 1, 4, 2, 3),
                                          vision_feature_layer=-1,
                                          vision_feature_select_strategy="full").pooler_output
    ours = model.apply({"params": params}, jnp.asarray(pixels), method=lambda m, x: m.get_video_features(x))
    assert ours.shape == tuple(ref.shape)
    assert rel_err(ours, ref) < RTOL


def _renamed_checkpoint(src, dst, rename, config):
    """Writes src's tensors under new names (another release's naming) with `config`."""
    dst.mkdir()
    reader = CheckpointReader(src)
    write_safetensors(dst, {rename(key): reader.read(key) for key in reader.keys()})
    (dst / "config.json").write_text(json.dumps(config))


def _hub_name(key):
    return key.replace("vision_tower.", "vision_tower.vision_model.")


def _v4_name(key):
    key = _hub_name(key)
    if key.startswith("language_model.lm_head."):
        return key[len("language_model."):]
    if key.startswith("language_model.model."):
        return "model.language_model." + key[len("language_model.model."):]
    return "model." + key


def _llava_next_name(key):
    key = key.replace("vision_tower.", "model.vision_tower.vision_tower.vision_model.")
    key = key.replace("multi_modal_projector.linear_1.", "model.mm_projector.0.")
    key = key.replace("multi_modal_projector.linear_2.", "model.mm_projector.2.")
    key = key.replace("language_model.model.", "model.").replace("language_model.lm_head.", "lm_head.")
    return "model.image_newline" if key == "image_newline" else key


def _llava_qwen_config(hf):
    """The original release's config: Qwen2 fields at the top; the tower is implied (SigLIP
    so400m), so a tiny test tower is described in `vision_config`."""
    text = hf.config.text_config.to_dict()
    vision = {k: v for k, v in hf.config.vision_config.to_dict().items()
              if k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                       "image_size", "patch_size", "vision_use_head")}
    return {**text, "model_type": "llava_qwen", "mm_projector_type": "mlp2x_gelu", "vision_config": vision,
            "video_token_index": hf.config.video_token_index, "image_token_index": hf.config.image_token_index,
            "tie_word_embeddings": False}


@pytest.mark.parametrize("naming", ["llava_onevision_hub", "llava_onevision_v4", "llava_next"])
def test_other_namings_convert_to_the_same_model(llava, tmp_path, naming):
    hf, root = llava
    hf_config = json.loads((root / "hf" / "config.json").read_text())
    if naming == "llava_next":
        _renamed_checkpoint(root / "hf", tmp_path / "src", _llava_next_name, _llava_qwen_config(hf))
    else:
        rename = {"llava_onevision_hub": _hub_name, "llava_onevision_v4": _v4_name}[naming]
        _renamed_checkpoint(root / "hf", tmp_path / "src", rename, hf_config)
    convert(tmp_path / "src", tmp_path / "ox")
    assert json.loads((tmp_path / "ox" / "omni_jax.json").read_text())["source_format"] == naming
    model, params = omni_jax.load_pretrained(tmp_path / "ox")
    ids, pixels = video_inputs(hf, model.config, batch=1, seed=3)
    out = model.apply({"params": params}, input_ids=jnp.asarray(ids), pixel_values_videos=jnp.asarray(pixels))
    assert rel_err(out["logits"], hf_logits(hf, ids, pixels)) < RTOL


def test_bfloat16_video_forward_within_bound(llava):
    """bf16 parameters and compute through tower, projector, pooling and LM: logits within
    2e-2 of the float32 transformers reference (relative to max|ref|; measured ≤ 0.9e-2)."""
    hf, root = llava
    model, params = omni_jax.load_pretrained(root / "ox", dtype="bfloat16")
    ids, pixels = video_inputs(hf, model.config, batch=1, seed=7)
    out = model.apply({"params": params}, input_ids=jnp.asarray(ids), pixel_values_videos=jnp.asarray(pixels))
    assert rel_err(out["logits"], hf_logits(hf, ids, pixels)) < 2e-2


def test_greedy_generation_with_video_equals_transformers(llava):
    """Left-padded video prompts: our cached decoding gives transformers' `generate` tokens, on
    one device and with the parameters sharded over 8."""
    from omni_jax.generate import generate
    from omni_jax.sharding import activate, make_mesh

    hf, root = llava
    model, params = omni_jax.load_pretrained(root / "ox")
    ids, pixels = video_inputs(hf, model.config, seed=5)
    mask = np.ones_like(ids)
    mask[1, :2], ids[1, :2] = 0, 0  # row 1 is two tokens shorter, padded on the left
    with torch.no_grad():
        ref = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                          pixel_values_videos=torch.from_numpy(pixels).permute(0, 1, 4, 2, 3), max_new_tokens=6,
                          min_new_tokens=6, do_sample=False, pad_token_id=0)[:, ids.shape[1]:].numpy()
    ours = generate(model, params, jnp.asarray(ids), jnp.asarray(mask), max_new_tokens=6,
                    pixel_values_videos=jnp.asarray(pixels))
    np.testing.assert_array_equal(np.asarray(ours), ref)
    mesh = make_mesh(data=1, fsdp=4, tensor=2)  # parameters sharded over 8 devices as in training
    _, sharded = omni_jax.load_pretrained(root / "ox", mesh=mesh)
    with activate(mesh):
        ours = generate(model, sharded, jnp.asarray(ids), jnp.asarray(mask), max_new_tokens=6,
                        pixel_values_videos=jnp.asarray(pixels))
    np.testing.assert_array_equal(np.asarray(ours), ref)

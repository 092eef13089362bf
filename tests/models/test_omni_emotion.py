"""The assembled Omni-Emotion model at the tiny config: token layouts of the three fusions against
the parts run on their own, absent modalities, frame embeddings, the chunked assistant-token
loss, the new tokens and their rows (sharded = unsharded: tests/test_sharding.py)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from omni_jax import registry
from omni_jax.configs import omni_emotion as omni_configs
from omni_jax.generate import generate
from omni_jax.modality_tokens import (
    IGNORE,
    add_special_tokens,
    audio_input_frames,
    multimodal_prompt_ids,
    placeholder_counts,
)
from omni_jax.models import facexformer, whisper
from omni_jax.models.llava_onevision import LlavaOnevisionForConditionalGeneration
from omni_jax.models.omni_emotion import FUSIONS, FaceCrossAttention, OmniEmotion, init_token_rows
from omni_jax.pretrained import override_fields
from omni_jax.train.loss import chunked_cross_entropy, next_token_loss, next_token_targets
from tests.conftest import rel_err
from tests.tokenizer import word_tokenizer

VISUAL, FACE, AUDIO = 4, 9, 10  # tiny: 4×4 SigLIP patches pooled to 2×2; 3×3 face grid; 30 positions / 3
FRAMES, WINDOWS = 2, 2


def tiny_config(fusion: str = "video_concat"):
    cfg = omni_configs.get_config("tiny").model
    cfg.fusion = fusion
    return registry.to_config(override_fields(cfg.to_dict(), dtype="float32", param_dtype="float32"))


@functools.cache
def superset_params() -> dict:
    """Random parameters of the frame_cross_attention model, whose tree holds every other
    fusion's. Drawn into the shapes `eval_shape` gives rather than by `init` (whose compile
    would be a fifth of this file's time); norm scales near 1, everything else (the frame
    embedding, zero-initialised by `init`, included) small and non-zero."""
    cfg = tiny_config("frame_cross_attention")
    rng = np.random.RandomState(0)

    def draw(path, leaf):
        noise = rng.randn(*leaf.shape).astype(np.float32)
        return jnp.asarray(1 + 0.1 * noise if path[-1].key == "scale" else 0.05 * noise)

    return jax.tree_util.tree_map_with_path(draw, registry.abstract_params(registry.FAMILIES["omni_emotion"], cfg))


def tiny_model(fusion: str = "video_concat"):
    cfg, params = tiny_config(fusion), superset_params()
    if fusion != "frame_cross_attention":
        params = {k: v for k, v in params.items() if k != "face_cross_attention"}
    return cfg, OmniEmotion(cfg), params


def clip_inputs(cfg, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Prompts laid out by multimodal_prompt_ids, every modality present (flags given, so that
    calls with some absent reuse the compiled function)."""
    rng = np.random.RandomState(seed)
    ids = np.stack([multimodal_prompt_ids(cfg, rng.randint(0, 140, 3), rng.randint(0, 140, 4))
                    for _ in range(batch)])
    size, face = cfg.vision.image_size, cfg.face.swin.image_size
    present = np.ones(batch, bool)
    return {"input_ids": ids,
            "pixel_values_videos": rng.randn(batch, FRAMES, size, size, 3).astype(np.float32),
            "face_pixels": rng.randn(batch, FRAMES, face, face, 3).astype(np.float32),
            "input_features": rng.randn(batch, WINDOWS, cfg.audio.num_mel_bins,
                                        audio_input_frames(cfg.audio)).astype(np.float32),
            "has_video": present, "has_face": present, "has_audio": present}


def layout(cfg) -> list[tuple[str, int, int]]:
    """The video block's documented slots: (kind, frame, index), kind "visual"/"newline"/"face"."""
    visual = lambda f: [("visual", f, i) for i in range(VISUAL)]
    face = lambda f: [("face", f, i) for i in range(FACE)]
    if cfg.fusion == "video_concat":
        return [s for f in range(FRAMES) for s in visual(f)] + [("newline", -1, 0)] + [
            s for f in range(FRAMES) for s in face(f)]
    return [s for f in range(FRAMES) for s in visual(f) + face(f)] + [("newline", -1, 0)]


def kind_slots(cfg, kind: str, frame: int | None = None) -> np.ndarray:
    return np.asarray([i for i, (k, f, _) in enumerate(layout(cfg)) if k == kind and frame in (None, f)])


@pytest.fixture(scope="module", params=FUSIONS)
def tiny(request):
    cfg, model, params = tiny_model(request.param)
    embed = jax.jit(lambda p, inputs: model.apply({"params": p}, **inputs, method=OmniEmotion.embed_inputs))
    inputs = clip_inputs(cfg)
    return cfg, model, params, embed, inputs, np.asarray(embed(params, inputs))


@pytest.fixture(scope="module")
def parts():
    """The parts run on their own subtrees (one compile for every fusion): LLaVA-OV's video
    features, the face encoder, Whisper + the audio projector; frame embeddings added."""
    cfg, _, params = tiny_model()
    inputs = clip_inputs(cfg)
    batch, width = len(inputs["input_ids"]), cfg.text.hidden_size

    @jax.jit
    def run(params, inputs):
        llava_params = {k: params[k] for k in ("vision_tower", "multi_modal_projector", "image_newline",
                                                "language_model")}
        video = LlavaOnevisionForConditionalGeneration(cfg).apply(
            {"params": llava_params}, inputs["pixel_values_videos"], method=lambda m, x: m.get_video_features(x))
        frame_embedding = params["frame_embedding"][None, :, None]
        visual = video[:, :-1].reshape(batch, FRAMES, VISUAL, width) + frame_embedding
        crops = inputs["face_pixels"].reshape(batch * FRAMES, *inputs["face_pixels"].shape[2:])
        faces = facexformer.FaceXFormerEncoder(cfg.face).apply({"params": params["face_encoder"]},
                                                               crops)["last_hidden_state"]
        faces = faces.reshape(batch, FRAMES, FACE, width) + frame_embedding
        mels = inputs["input_features"].reshape(batch * WINDOWS, *inputs["input_features"].shape[2:])
        states = whisper.WhisperEncoder(cfg.audio).apply({"params": params["audio_encoder"]}, mels)
        audio = whisper.AudioProjector(width).apply({"params": params["audio_projector"]},
                                                    states["last_hidden_state"])
        return {"visual": visual, "newline": video[:, -1][:, None, None], "face": faces,
                "audio": audio.reshape(batch, -1, width)}

    return run(params, inputs)


def blocks(cfg, inputs, embeds) -> tuple[np.ndarray, np.ndarray]:
    """The merged embeddings at the video and audio placeholders: [batch, slots, embed] each."""
    ids, width = inputs["input_ids"], embeds.shape[-1]
    return (embeds[ids == cfg.video_token_id].reshape(len(ids), -1, width),
            embeds[ids == cfg.audio_token_id].reshape(len(ids), -1, width))


def test_prompt_layout_and_counts(tiny):
    cfg, _, _, _, inputs, _ = tiny
    assert placeholder_counts(cfg) == {"video": FRAMES * (VISUAL + FACE) + 1, "audio": WINDOWS * AUDIO}
    row = inputs["input_ids"][0]
    video, audio = 3 + 1, 3 + 1 + 27 + 2
    assert row[3] == cfg.vi_start_token_id and (row[video:video + 27] == cfg.video_token_id).all()
    assert list(row[video + 27:video + 29]) == [cfg.vi_end_token_id, cfg.au_start_token_id]
    assert (row[audio:audio + 20] == cfg.audio_token_id).all() and row[audio + 20] == cfg.au_end_token_id
    assert len(row) == 3 + 27 + 20 + 4 + 4


def test_merged_sequence_holds_the_parts_outputs(tiny, parts):
    """Each slot equals what the parts (LLaVA-OV's video features, the face encoder, Whisper +
    audio projector, the cross-attention block), run on their own subtrees, give for it."""
    cfg, _, params, _, inputs, embeds = tiny
    batch, width = len(inputs["input_ids"]), cfg.text.hidden_size
    if cfg.fusion == "frame_cross_attention":
        faces = FaceCrossAttention(cfg.cross_attention_heads).apply(
            {"params": params["face_cross_attention"]}, parts["face"].reshape(batch * FRAMES, FACE, width),
            parts["visual"].reshape(batch * FRAMES, VISUAL, width))
        parts = {**parts, "face": faces.reshape(parts["face"].shape)}
    expected = np.stack([np.asarray(parts[kind][:, max(f, 0), i]) for kind, f, i in layout(cfg)], axis=1)
    video_block, audio_block = blocks(cfg, inputs, embeds)
    assert video_block.shape == (batch, 27, width) and audio_block.shape == (batch, WINDOWS * AUDIO, width)
    assert rel_err(video_block, expected) < 1e-5
    assert rel_err(audio_block, parts["audio"]) < 1e-5
    ids = inputs["input_ids"]
    text = (ids != cfg.video_token_id) & (ids != cfg.audio_token_id)
    table = params["language_model"]["model"]["embed_tokens"]["embedding"]
    np.testing.assert_array_equal(embeds[text], np.asarray(table)[ids[text]])


def test_absent_modalities_are_zero_slots_of_the_same_shape(tiny):
    """Row 0: no face, no audio; row 1: no video. Zeros there, the present slots unchanged
    (except face tokens that attended to a now-zero frame)."""
    cfg, _, params, embed, inputs, embeds = tiny
    flags = {"has_video": np.array([True, False]), "has_face": np.array([False, True]),
             "has_audio": np.array([False, True])}
    flagged = np.asarray(embed(params, {**inputs, **flags}))
    assert flagged.shape == embeds.shape
    video, audio = blocks(cfg, inputs, flagged)
    present_video, present_audio = blocks(cfg, inputs, embeds)
    visual = np.concatenate([kind_slots(cfg, "visual"), kind_slots(cfg, "newline")])
    face = kind_slots(cfg, "face")
    assert not video[0, face].any() and not audio[0].any() and not video[1, visual].any()
    np.testing.assert_array_equal(video[0, visual], present_video[0, visual])
    np.testing.assert_array_equal(audio[1], present_audio[1])
    if cfg.fusion == "frame_cross_attention":
        assert np.abs(video[1, face] - present_video[1, face]).max() > 1e-3
    else:
        np.testing.assert_array_equal(video[1, face], present_video[1, face])
    text = (inputs["input_ids"] != cfg.video_token_id) & (inputs["input_ids"] != cfg.audio_token_id)
    np.testing.assert_array_equal(flagged[text], embeds[text])


def test_a_text_only_row_needs_no_placeholders(tiny):
    """Row 1 without any placeholder (text only): row 0's merged sequence is unchanged, and row 1
    is its token embeddings — features are merged row by row."""
    cfg, _, params, embed, inputs, embeds = tiny
    ids = inputs["input_ids"].copy()
    ids[1] = np.random.RandomState(7).randint(0, 140, ids.shape[1])
    mixed = np.asarray(embed(params, {**inputs, "input_ids": ids}))
    np.testing.assert_array_equal(mixed[0], embeds[0])
    table = np.asarray(params["language_model"]["model"]["embed_tokens"]["embedding"])
    np.testing.assert_array_equal(mixed[1], table[ids[1]])


def test_frame_embedding_reaches_only_its_frames_tokens(tiny):
    cfg, _, params, embed, inputs, embeds = tiny
    bumped = {**params, "frame_embedding": params["frame_embedding"].at[1].add(1.0)}
    changed = np.abs(np.asarray(embed(bumped, inputs)) - embeds).max(axis=-1) > 0  # [batch, length]
    video_positions = np.flatnonzero(inputs["input_ids"][0] == cfg.video_token_id)
    frame_1 = video_positions[np.concatenate([kind_slots(cfg, "visual", 1), kind_slots(cfg, "face", 1)])]
    expected = np.zeros_like(changed[0])
    expected[frame_1] = True
    assert (changed == expected[None]).all()


@pytest.fixture(scope="module")
def loss_setup():
    cfg, model, params = tiny_model()
    inputs = clip_inputs(cfg, seed=2)
    labels = np.full_like(inputs["input_ids"], IGNORE)
    rng = np.random.RandomState(3)
    length = labels.shape[1]
    labels[0, length - 5:] = rng.randint(0, 140, 5)  # the assistant's answer at the end of each row
    labels[1, length - 2:] = rng.randint(0, 140, 2)
    return cfg, model, params, {**inputs, "labels": labels}


def test_loss_counts_only_assistant_tokens(loss_setup):
    """The chunked loss of the whole model (chunks of 7: the last one padded) against optax on
    its full logits."""
    cfg, model, params, batch = loss_setup
    assert batch["input_ids"].shape[1] % 7
    loss, count = jax.jit(lambda p, b: next_token_loss(model, p, b, chunk_size=7))(params, batch)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = jax.jit(lambda p: model.apply({"params": p}, **inputs)["logits"])(params)
    labels = batch["labels"][:, 1:]  # position t predicts token t + 1
    counted = labels != IGNORE
    nll = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], np.where(counted, labels, 0))
    assert int(count) == counted.sum() == 5 + 2
    np.testing.assert_allclose(float(loss), float(np.asarray(nll)[counted].mean()), rtol=1e-5)


def test_chunked_loss_and_gradients_equal_unchunked(loss_setup):
    """Chunking touches only the head and the reduction, so its gradients are checked there:
    with respect to the hidden states (everything below flows through them) and the LM head."""
    cfg, model, params, batch = loss_setup
    targets = next_token_targets(batch["labels"])
    batch_size, length = targets.shape
    hidden = jax.random.normal(jax.random.key(2), (batch_size, length, cfg.text.hidden_size))

    def loss(hidden, head, chunk):
        lm = {**params["language_model"], "lm_head": head}
        logits_fn = lambda h: model.apply({"params": {**params, "language_model": lm}}, h,
                                          method=OmniEmotion.lm_logits)
        return chunked_cross_entropy(hidden, targets, logits_fn, chunk)[0]

    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)
    head = params["language_model"]["lm_head"]
    chunked_loss, chunked_grads = value_and_grad(hidden, head, 7)
    whole_loss, whole_grads = value_and_grad(hidden, head, length)
    np.testing.assert_allclose(float(chunked_loss), float(whole_loss), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(chunked_grads), jax.tree.leaves(whole_grads)):
        assert rel_err(a, b) < 1e-5


def test_cached_generation_equals_full_recomputation():
    """Multimodal prefill, then cached decoding: each new token is the argmax the full forward
    over prompt + generated tokens gives at its position."""
    cfg, model, params = tiny_model()
    inputs = clip_inputs(cfg, seed=5)
    ids = inputs.pop("input_ids")
    tokens = np.asarray(generate(model, params, ids, max_new_tokens=3, **inputs))
    # A generated placeholder id would make the full forward merge features there.
    assert not np.isin(tokens, [cfg.video_token_id, cfg.audio_token_id]).any()
    full = np.concatenate([ids, tokens], axis=1)
    logits = jax.jit(lambda p: model.apply({"params": p}, input_ids=full, **inputs)["logits"])(params)
    np.testing.assert_array_equal(np.argmax(logits[:, ids.shape[1] - 1:-1], axis=-1), tokens)


def test_special_tokens_get_the_config_ids():
    cfg = tiny_config()
    tokenizer = word_tokenizer(147)  # <image>, <video> = 150, 151
    add_special_tokens(tokenizer, cfg)
    ids = tokenizer.encode("w13 <vi_start><video><vi_end> <au_start> <audio> <au_end>", add_special_tokens=False)
    assert ids == [13, cfg.vi_start_token_id, cfg.video_token_id, cfg.vi_end_token_id, cfg.au_start_token_id,
                   cfg.audio_token_id, cfg.au_end_token_id] == [13, 153, 151, 154, 155, 152, 156]
    add_special_tokens(tokenizer, cfg)  # idempotent
    assert len(tokenizer) == 157
    with pytest.raises(ValueError, match="the config expects"):
        add_special_tokens(word_tokenizer(146), cfg)


def test_new_token_rows_are_the_mean_of_the_trained_rows():
    cfg, _, params = tiny_model()
    new_ids = [cfg[f] for f in ("audio_token_id", "vi_start_token_id", "vi_end_token_id", "au_start_token_id",
                                "au_end_token_id")]
    out = init_token_rows(params, new_ids, trained_rows=152)
    for old, new in ((params["language_model"]["model"]["embed_tokens"]["embedding"],
                      out["language_model"]["model"]["embed_tokens"]["embedding"]),
                     (params["language_model"]["lm_head"]["kernel"].T, out["language_model"]["lm_head"]["kernel"].T)):
        old, new = np.asarray(old), np.asarray(new)
        mean = old[:152].astype(np.float64).mean(0)
        np.testing.assert_allclose(new[new_ids], np.broadcast_to(mean, (5, old.shape[1])), rtol=1e-5, atol=1e-9)
        kept = np.setdiff1d(np.arange(len(old)), new_ids)
        np.testing.assert_array_equal(new[kept], old[kept])
    assert out["vision_tower"] is params["vision_tower"]
    grown = init_token_rows(params, [160, 161], trained_rows=152)
    assert grown["language_model"]["model"]["embed_tokens"]["embedding"].shape == (162, cfg.text.hidden_size)
    assert grown["language_model"]["lm_head"]["kernel"].shape == (cfg.text.hidden_size, 162)


def test_a_new_face_cross_attention_is_the_identity():
    """Phase 2 freezes the block: it must start as the identity on the face tokens, or the face
    projector would align through random weights."""
    import flax.linen as nn

    from omni_jax.models.omni_emotion import FaceCrossAttention

    rng = np.random.RandomState(0)
    face, visual = (jnp.asarray(rng.randn(2, n, 32).astype(np.float32)) for n in (9, 4))
    block = FaceCrossAttention(num_heads=4)
    params = nn.unbox(block.init(jax.random.key(0), face, visual))
    np.testing.assert_array_equal(np.asarray(block.apply(params, face, visual)), np.asarray(face))
    grads = jax.grad(lambda p: jnp.sum(block.apply(p, face, visual) ** 2))(params)["params"]["attention"]
    assert np.abs(np.asarray(grads["o_proj"]["kernel"])).max() > 0  # it learns from the first step

"""Omni-Emotion configs: `get_config("7b" | "tiny")`, one schema for both.

LLaVA-OneVision's schema (text, vision, projector, image/video token ids: a converted
LLaVA-OV config is a subset) plus the face encoder, the audio encoder and every choice the
paper leaves open. "7b" follows SPEC §1; "tiny" keeps every shape distinct for the tests
(4 visual and 9 face tokens per frame, 10 audio tokens per window, 2 frames, 2 windows).
"""
import ml_collections

from configs import facexformer, llava_onevision, whisper

# Token ids: <audio>, <vi_start>, <vi_end>, <au_start>, <au_end> follow the llava-hf tokenizer's
# last entry (<video> = 151647), as `omni_emotion.add_special_tokens` assigns them; the 7B
# embedding table (152064 rows) already holds them. Tiny: after the tiny LLaVA's <video> (151).
TOKEN_IDS = {"7b": (151648, 151649, 151650, 151651, 151652), "tiny": (152, 153, 154, 155, 156)}
VARIANTS = {
    # llava variant, face variant, whisper variant, face grid, frames, audio windows, 30-s window
    # positions, cross-attention heads, loss chunk
    "7b": ("7b", "base", "large-v3", 14, 8, 1, 1500, 28, 1024),
    "tiny": ("tiny", "tiny", "tiny", 3, 2, 2, 30, 4, 16),
}
# Sequence lengths a batch is padded to (the smallest that fits its longest example): a few static
# shapes for XLA. 7B: the multimodal block alone is 3,645 tokens (3,137 video + 500 audio + 8).
BUCKETS = {"7b": (4096, 6144, 8192), "tiny": (96, 128, 192)}


def get_config(variant: str = "7b") -> ml_collections.ConfigDict:
    llava, face, audio, grid, frames, windows, positions, heads, chunk = VARIANTS[variant]
    cfg = llava_onevision.get_config(llava)
    face_cfg = facexformer.get_config(face)
    face_cfg.update(face_grid=[grid, grid], llm_width=cfg.text.hidden_size)
    audio_cfg = whisper.get_config(audio)
    audio_cfg.max_source_positions = positions  # 1500 = a 30-s window; tiny: 60 mel frames
    audio_id, vi_start, vi_end, au_start, au_end = TOKEN_IDS[variant]
    cfg.update(dict(
        face=face_cfg,
        audio=audio_cfg,
        audio_pool=3,  # 3:1 average pooling, 1500 → 500 tokens per window (paper §4.1)
        audio_windows=windows,  # 30-s windows per clip; emotion clips are short, one is the default
        num_frames=frames,
        fusion="video_concat",  # | "frame_concat" | "frame_cross_attention" (paper Table 3)
        cross_attention_heads=heads,  # frame_cross_attention only; head width = text.hidden_size / heads
        audio_token_id=audio_id,
        vi_start_token_id=vi_start,
        vi_end_token_id=vi_end,
        au_start_token_id=au_start,
        au_end_token_id=au_end,
        loss_chunk_size=chunk,  # sequence positions whose [batch, chunk, vocab] logits exist at once
    ))
    cfg.data = data_config(cfg, BUCKETS[variant])
    # sharding.make_mesh(**cfg.mesh); -1 takes the remaining devices. On 256 chips at batch 128:
    # data=2, fsdp=64, tensor=2 (README, "What fits").
    cfg.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    return cfg


def data_config(cfg: ml_collections.ConfigDict, buckets: tuple[int, ...]) -> ml_collections.ConfigDict:
    """The input pipeline's fields (omni_jax.data.pipeline); frames and pixel sizes follow the model."""
    return ml_collections.ConfigDict(dict(
        manifest="",  # JSONL, SPEC §2
        num_frames=cfg.get_ref("num_frames"),
        image_size=cfg.vision.get_ref("image_size"),  # 384: SigLIP
        face_size=cfg.face.swin.get_ref("image_size"),  # 224: FaceXFormer's Swin
        buckets=buckets,
        batch_size=8,  # per host
        workers=2,  # grain worker processes per host (0: decode in the main process)
        threads=1,  # examples decoded at once in each process (grain's default of 16 multiplies memory)
        prefetch=2,  # examples buffered per worker
        pack_text_only=False,  # pack short text-only examples into rows of the smallest bucket
        seed=0,
        epochs=3,  # paper §4.4 phase 3; None repeats forever
        max_skip_fraction=0.1,  # stop when more than this fraction of examples seen is skipped...
        min_examples=100,  # ...once at least this many were seen
    ))

"""Omni-Emotion configs: `get_config("variant=VARIANT,phase=PHASE")`, one schema for every
variant and phase; the bare form "7b,audio_alignment" names them in that order.

variant: "7b" (the paper's model), "tiny" (every shape distinct, for the tests: 4 visual and 9
face tokens per frame, 10 audio tokens per window, 2 frames, 2 windows) or "demo" (`make demo`:
the tiny shapes hearing one 1.5-s window, 25 audio tokens, so that a voice's contour fits).
phase: one of the paper's three training phases (§4.4), default "instruction_tuning"; it sets
`train` and `data` to that phase's settings. On the command line:
`--config omni_emotion:7b,audio_alignment`.

Sections (big_vision's shape), and the jobs that read them:
  model    LLaVA-OneVision's schema (text, vision, projector, image/video token ids: a converted
           LLaVA-OV config is a subset) plus the face encoder, the audio encoder and every choice
           the paper leaves open. A run that starts from a checkpoint (`--init`, `eval`, `infer`)
           takes the model from the checkpoint (`omni_jax.runs.run_config` says what may differ).
  data     the input pipeline;  train  the loop, optimizer, checkpoints, metrics;
  eval     generation;  evals  the benchmarks;  mesh  the device mesh;
  plan     `omni-jax plan`;  infer  `omni-jax infer`;  check  `omni-jax data-check`;
  score    `omni-jax score`;  convert  `omni-jax convert-facexformer` and `assemble`.
"""
import dataclasses

import ml_collections

from omni_jax.config_flags import parse_arg
from omni_jax.errors import InputError

from . import facexformer, llava_onevision, whisper
from .convert import convert_config
from .faces import face_detector


@dataclasses.dataclass(frozen=True)
class Variant:
    """What sets one Omni-Emotion variant apart: its parts' variants and the sizes the paper leaves open."""
    llava: str  # configs/llava_onevision.py variant (Qwen2 + SigLIP)
    face: str  # configs/facexformer.py variant
    whisper: str  # configs/whisper.py variant
    face_grid: int  # face tokens per frame: face_grid × face_grid
    num_frames: int  # frames sampled per clip
    audio_windows: int  # 30-s windows per clip; emotion clips are short, one is the default
    audio_positions: int  # Whisper positions of one window: 1500 = 30 s (tiny: 60 mel frames)
    cross_attention_heads: int  # fusion="frame_cross_attention" only; head width = hidden_size / heads
    loss_chunk_size: int  # sequence positions whose [batch, chunk, vocab] logits exist at once
    # <audio>, <vi_start>, <vi_end>, <au_start>, <au_end> follow the tokenizer's last entry
    # (<video>), as `modality_tokens.add_special_tokens` assigns them; the 7B embedding table
    # (152064 rows) already holds them.
    audio_token_id: int
    buckets: tuple[int, ...]  # sequence lengths a batch is padded to (the smallest that fits): a few static shapes


VARIANTS = {
    # 7B: the multimodal block alone is 3,645 tokens (3,137 video + 500 audio + 8)
    "7b": Variant(llava="7b", face="base", whisper="large-v3", face_grid=14, num_frames=8, audio_windows=1,
                  audio_positions=1500, cross_attention_heads=28, loss_chunk_size=1024, audio_token_id=151648,
                  buckets=(4096, 6144, 8192)),
    "tiny": Variant(llava="tiny", face="tiny", whisper="tiny", face_grid=3, num_frames=2, audio_windows=2,
                    audio_positions=30, cross_attention_heads=4, loss_chunk_size=16, audio_token_id=152,
                    buckets=(96, 128, 192)),
    "demo": Variant(llava="tiny", face="tiny", whisper="tiny", face_grid=3, num_frames=2, audio_windows=1,
                    audio_positions=75, cross_attention_heads=4, loss_chunk_size=16, audio_token_id=152,
                    buckets=(96, 128, 160)),
}
# The paper's settings of each phase (§4.4): what it trains is omni_jax.train.step.PHASES.
PHASES = {
    # audio projector only, on audio-text pairs (captions, transcripts): prompts hold the audio block
    "audio_alignment": dict(learning_rate=1e-3, global_batch_size=256, epochs=1, modalities=("a",)),
    # face projector only, on emotion-classification QA: visual and facial features, no audio
    "face_alignment": dict(learning_rate=1e-3, global_batch_size=256, epochs=1, modalities=("v", "f")),
    # the three projectors, frame embeddings, new token rows and the LLM: every modality
    "instruction_tuning": dict(learning_rate=1e-5, global_batch_size=128, epochs=3, modalities=("v", "a", "f")),
}


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    arg = parse_arg(arg, variant="7b", phase="instruction_tuning")
    variant, phase = arg.variant, arg.phase
    if variant not in VARIANTS or phase not in PHASES:
        raise InputError(f"config omni_emotion:{arg.variant},{arg.phase}: variant must be one of {sorted(VARIANTS)} "
                         f"and phase one of {sorted(PHASES)}")
    cfg = ml_collections.ConfigDict()
    cfg.model = model_config(VARIANTS[variant])
    cfg.data = data_config(cfg.model, VARIANTS[variant].buckets)
    cfg.data.epochs = PHASES[phase]["epochs"]
    cfg.train = train_config(phase, variant)
    cfg.eval = eval_config(variant)
    cfg.evals = evals_config()
    if variant == "demo":  # the held-out clips with their voices silenced (`omni-jax synth`'s
        # eval_classification_silenced): the demo asks both in one evaluation
        cfg.evals.dfew_silenced = cfg.evals.dfew.to_dict()
    # sharding.make_mesh(**cfg.mesh) (docs/scaling.md "Meshes"). data, fsdp, tensor: the ICI shape,
    # the sizes within one TPU slice or node (-1: its remaining devices), laid on the torus.
    # dcn_data, dcn_fsdp, dcn_tensor: how many slices (TPU slice_index) or nodes (processes) each
    # axis spans, their product the slice/node count; an axis's size is ICI × DCN. Put DCN on
    # data: only the gradient reduction crosses it. allow_split_physical_axes: let an ICI size
    # that is no product of the torus' sides split a side (its rings lose the wraparound link),
    # e.g. data=2, fsdp=64, tensor=2 on a v5e-256 (16 × 16).
    cfg.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1,
                                              allow_split_physical_axes=False))
    # omni-jax plan: the train step compiled for cfg.mesh on simulated CPU devices, for the
    # config's batch (train.global_batch_size, microbatches, remat, phase) at seq_len tokens
    cfg.plan = ml_collections.ConfigDict(dict(
        seq_len=4096 if variant == "7b" else 128,  # tokens per clip
        devices=8,  # the simulated devices when a mesh axis is -1 (otherwise the mesh's product)
    ))
    # omni-jax infer: what it asks of each clip without a conversation of its own
    cfg.infer = ml_collections.ConfigDict(dict(question=DEFAULT_QUESTION))
    # omni-jax data-check
    cfg.check = ml_collections.ConfigDict(dict(
        task="",  # train or an evaluator's type; "": the config's evaluator of the manifest, else its lines' fields
        max_skip_fraction=None,  # exit 1 above it; None: the task's own (data. or eval.max_skip_fraction)
    ))
    # omni-jax score: whose classes and synonyms score a predictions file
    cfg.score = ml_collections.ConfigDict(dict(
        evaluator="",  # one of evals; "": the first of the task the file's references make (label/labels)
        classes=(),  # classification: in place of the evaluator's
    ))
    cfg.convert = convert_config()  # omni-jax convert-facexformer (the face encoder of model.face) and assemble
    return cfg


def model_config(variant: Variant) -> ml_collections.ConfigDict:
    """The model's fields: what `OmniEmotion` takes and a checkpoint's config.json stores."""
    cfg = llava_onevision.get_config(variant.llava)
    face = facexformer.get_config(variant.face)
    face.update(face_grid=[variant.face_grid, variant.face_grid], llm_width=cfg.text.hidden_size)
    audio = whisper.get_config(variant.whisper)
    audio.max_source_positions = variant.audio_positions
    cfg.update(dict(
        face=face,
        audio=audio,
        audio_pool=3,  # 3:1 average pooling, 1500 → 500 tokens per window (paper §4.1)
        audio_windows=variant.audio_windows,
        num_frames=variant.num_frames,
        fusion="video_concat",  # | "frame_concat" | "frame_cross_attention" (paper Table 3)
        cross_attention_heads=variant.cross_attention_heads,
        audio_token_id=variant.audio_token_id,
        vi_start_token_id=variant.audio_token_id + 1,
        vi_end_token_id=variant.audio_token_id + 2,
        au_start_token_id=variant.audio_token_id + 3,
        au_end_token_id=variant.audio_token_id + 4,
        loss_chunk_size=variant.loss_chunk_size,
    ))
    return cfg


def data_config(model: ml_collections.ConfigDict, buckets: tuple[int, ...]) -> ml_collections.ConfigDict:
    """The input pipeline's fields (omni_jax.data.pipeline); frames and pixel sizes follow the model."""
    return ml_collections.ConfigDict(dict(
        manifest="",  # JSONL (docs/data.md)
        num_frames=model.get_ref("num_frames"),
        image_size=model.vision.get_ref("image_size"),  # 384: SigLIP
        face_size=model.face.swin.get_ref("image_size"),  # 224: FaceXFormer's Swin
        face_time_tolerance=0.5,  # seconds: a frame takes the manifest's nearest timed box this close, else detection
        face_detector=face_detector(),  # for lines without boxes (docs/faces.md)
        buckets=buckets,
        tokenizer="",  # a tokenizer directory; default: the --init checkpoint's
        batch_size=0,  # clips per host per step; 0: train.global_batch_size / hosts
        workers=2,  # grain worker processes per host (0: decode in the main process)
        threads=1,  # examples decoded at once in each process (grain's default of 16 multiplies memory)
        prefetch=2,  # examples buffered per worker
        pack_text_only=False,  # pack short text-only examples into rows of the smallest bucket
        modality_dropout=0.0,  # training: leave audio and faces each out of this fraction of prompts (not v)
        seed=0,
        epochs=3,  # passes over the manifest (the phase's: paper §4.4); None repeats forever
        max_skip_fraction=0.1,  # stop when more than this fraction of examples seen is skipped...
        min_examples=100,  # ...once at least this many were seen
    ))


def train_config(phase: str, variant: str) -> ml_collections.ConfigDict:
    """The training loop's fields (omni_jax.train.train) with `phase`'s settings."""
    settings = PHASES[phase]
    tiny = variant != "7b"  # tiny and demo
    return ml_collections.ConfigDict(dict(
        phase=phase,
        modalities=settings["modalities"],  # the prompt's blocks and the media decoded: v, a, f
        steps=0,  # 0: data.epochs over the manifest
        # Global batch (clips per step, all hosts): each host reads global / hosts, unless
        # data.batch_size sets the per-host batch.
        global_batch_size=8 if tiny else settings["global_batch_size"],
        microbatches=1,  # gradient accumulation: the batch runs as this many sequential parts
        learning_rate=settings["learning_rate"],
        warmup_fraction=0.03,  # linear warm-up over this fraction of the steps, then cosine decay
        final_learning_rate_fraction=0.0,
        weight_decay=0.0,  # AdamW's, on matrices only (LLaVA's recipe uses none)
        adam_b1=0.9,
        adam_b2=0.999,
        adam_eps=1e-8,
        max_grad_norm=1.0,  # clipping by global norm (0: none)
        remat="full",  # the LM's rematerialisation policy (layers.scan.REMAT_POLICIES); the towers are frozen
        attention_impl="auto",  # auto | xla | cudnn | splash (layers.attention.select_implementation)
        param_dtype="float32",
        compute_dtype="float32" if tiny else "bfloat16",
        seed=0,  # initialisation without --init
        max_nonfinite_steps=10,  # this many non-finite steps in a row stop the run
        checkpoint_every=10 if tiny else 500,  # steps (0: only at the end and on preemption)
        checkpoint_every_minutes=0.0,  # also save when this much time passed since the last save (0: off)
        keep_checkpoints=3,  # the latest N ...
        keep_every=0,  # ... and every K-th step's for good (0: none)
        log_every=1 if tiny else 10,  # steps between metrics.jsonl / TensorBoard lines
        peak_flops_per_device=0.0,  # for MFU where the device is not in train.metric_logger.PEAK_FLOPS (0: no MFU)
        # a jax.profiler trace of steps first_step … last_step under WORKDIR/profile (0: none)
        profile=dict(first_step=0, last_step=0),
        allow_config_change=False,  # resume a workdir whose config.json differs
        eval_every=0,  # steps between runs of the configured evaluators (`evals`; 0: none during training)
    ))


# The emotion classes of the classification benchmarks (paper §5.1) and the words an answer may
# use for them (the strict figures ignore these: they compare the answer with the label string).
DFEW_CLASSES = ("happy", "surprise", "neutral", "angry", "disgust", "sad", "fear")
MAFW_CLASSES = DFEW_CLASSES + ("contemptuous", "disappointed", "helpless", "anxious")
SYNONYMS = {
    "happy": ("happiness", "joy", "joyful"), "surprise": ("surprised", "astonished", "amazed"),
    "neutral": ("calm", "no emotion", "expressionless"), "angry": ("anger", "mad", "furious"),
    "disgust": ("disgusted", "disgusting"), "sad": ("sadness", "unhappy", "sorrow"),
    "fear": ("fearful", "afraid", "scared", "frightened"), "contemptuous": ("contempt", "disdain"),
    "disappointed": ("disappointment",), "helpless": ("helplessness",), "anxious": ("anxiety", "nervous", "worried"),
}
# Our wording (the paper does not print its prompts): the classification question lists the
# options; the open-vocabulary one asks for a list of words.
CLASSIFY = ("Which emotion does the person in the video show most clearly? Options: {options}. Answer with one "
            "word from the options.")
OPEN_VOCABULARY = "Which emotions does the person in the video show? Answer with emotion words separated by commas."
DESCRIBE = ("What is the emotional state of the person in the video? Explain it with the clues in their face, voice "
            "and words, and the scene.")
DEFAULT_QUESTION = "How does the person in the video feel, and which cues in the face, voice and scene show it?"
# The judge of the reasoning scores and of the LLM grouping: any OpenAI-compatible endpoint.
JUDGE = dict(base_url="https://api.openai.com/v1", model="gpt-4o-mini", api_key_env="OPENAI_API_KEY",
             cache="",  # replies cached here (default ~/.cache/omni_jax/judge): a rerun sends nothing twice
             concurrency=8, retries=4, timeout=60.0)


def eval_config(variant: str) -> ml_collections.ConfigDict:
    """Generation and evaluation settings (omni_jax.eval), shared by every evaluator."""
    return ml_collections.ConfigDict(dict(
        modalities=("v", "a", "f"),  # the paper's ablation (Table 1): v, v,a or v,a,f
        dtype="bfloat16" if variant == "7b" else "float32",  # parameters and compute
        attention_impl="auto",  # auto | xla | cudnn | splash (layers.attention.select_implementation)
        # The LM's layers unrolled for generation (load_pretrained(scan_layers=False)): on the CPU,
        # XLA copies a scanned layer's weights before its products, which halves decoding speed
        # (Qwen2-0.5B: 5.4 → 11.7 tokens/s); compilation takes longer.
        scan_layers=False,
        batch_size=8,  # clips per process per generation batch (a multiple of its data x fsdp devices)
        max_new_tokens=64 if variant == "7b" else 16,
        temperature=0.0,  # 0: greedy
        top_k=0,  # sampling only: keep the k most likely tokens (0: all)
        top_p=1.0,  # sampling only: keep the most likely tokens holding this probability
        seed=0,
        stop=("\n\n",),  # strings that end an answer (besides EOS and <|im_end|>)
        max_skip_fraction=0.1,  # an evaluator fails when more of its manifest's lines cannot be used
    ))


def evals_config() -> ml_collections.ConfigDict:
    """The paper's benchmarks as evaluators; one runs once its manifest is set
    (`--config.evals.dfew.manifest=dfew_test.jsonl`). Manifest lines: the clip plus `label`
    (classification), `labels` (open vocabulary) or `description` (reasoning); `conversations`
    only to ask otherwise."""
    classify = lambda classes: dict(type="emotion_classification", manifest="", classes=classes,
                                    synonyms={c: SYNONYMS[c] for c in classes},
                                    question=CLASSIFY.format(options=", ".join(classes)))
    return ml_collections.ConfigDict(dict(
        dfew=classify(DFEW_CLASSES),
        mafw=classify(MAFW_CLASSES),
        emer_ov=dict(type="open_vocabulary", manifest="", question=OPEN_VOCABULARY, grouping="table",
                     endpoint=dict(JUDGE)),  # the endpoint only for grouping="llm"
        emer=dict(type="reasoning_judge", manifest="", question=DESCRIBE, endpoint=dict(JUDGE)),
    ))

"""make demo: the tiny Omni-Emotion (vision + face + audio) built from converted parts, fed by
the input pipeline from clips it writes itself, sharded over 8 simulated devices.

1. Parts: a tiny LLaVA-OneVision and a tiny Whisper as transformers writes them (random
   weights, `save_pretrained`), converted with the real converter; a random tiny FaceXFormer
   encoder (the release's .pt is not available offline), written as an omni_jax checkpoint.
2. `assemble_omni_emotion` (= `omni-jax assemble`) → one Omni-Emotion checkpoint.
3. Four H.264 clips with a drawn face (two with AAC audio, one silent, one at 30000/1001 fps)
   and a JSONL manifest; the grain pipeline decodes, samples frames, crops faces, computes the
   log-mel features and tokenizes the chat → one static-shape batch.
4. The checkpoint restored straight onto a (data 2, fsdp 2, tensor 2) mesh; the batch as global
   arrays; the sharded forward equals the single-device one; phase-3 train steps on the batch
   make the loss fall; a greedy answer for each clip.

Exits non-zero if the sharded logits differ from the unsharded ones or the loss does not fall.
Run: `make demo` (or `.venv/bin/python experiments/demo.py`). Writes only under outputs/demo/.
"""
from __future__ import annotations

import os

# 8 simulated devices on few cores: XLA:CPU's 40-s collective timeout can pass on a busy machine.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_cpu_collective_call_terminate_timeout_seconds=900 --xla_cpu_collective_timeout_seconds=900")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from fractions import Fraction  # noqa: E402
from pathlib import Path  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the test suite's media writers and tokenizer builder

import omni_jax  # noqa: E402
from configs import omni_emotion as omni_configs  # noqa: E402
from omni_jax import registry  # noqa: E402
from omni_jax.conversion import convert_hf_to_orbax  # noqa: E402
from omni_jax.conversion.assemble import assemble_omni_emotion  # noqa: E402
from omni_jax.conversion.engine import save_params  # noqa: E402
from omni_jax.data import pipeline  # noqa: E402
from omni_jax.generate import generate  # noqa: E402
from omni_jax.models import llava_onevision, whisper  # noqa: E402
from omni_jax.sharding import LOGICAL_AXIS_RULES, make_mesh  # noqa: E402
from omni_jax.train.step import make_trainer, merge_params  # noqa: E402
from tests import media  # noqa: E402
from tests.tokenizer import qwen2_test_tokenizer  # noqa: E402

OUT = ROOT / "outputs" / "demo"
LLAVA_FIELDS = ("text", "vision", "vision_feature_layers", "vision_feature_select_strategy", "projector_hidden_act",
                "projector_bias", "image_token_id", "video_token_id")
TRAIN_STEPS, LEARNING_RATE = 10, 3e-3


def stage(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def transformers_part(dst: Path, hf_config: dict, seed: int, tokenizer=None) -> Path:
    """A randomly initialised transformers model saved as its own library writes it, then converted."""
    torch.manual_seed(seed)
    config = transformers.AutoConfig.for_model(**hf_config)
    model_class = getattr(transformers, hf_config["architectures"][0])
    model_class(config).save_pretrained(dst / "hf")
    if tokenizer is not None:
        tokenizer.save_pretrained(dst / "hf")  # travels with the weights into the assembled checkpoint
    return convert_hf_to_orbax(dst / "hf", dst / "converted", progress=False)


def random_face_part(dst: Path, face_cfg: ml_collections.ConfigDict, seed: int) -> Path:
    family = registry.FAMILIES["facexformer"]
    shapes, treedef = jax.tree.flatten(registry.abstract_params(family, face_cfg))
    rng = np.random.RandomState(seed)
    params = jax.tree.unflatten(treedef, [0.05 * rng.randn(*s.shape).astype(np.float32) for s in shapes])
    return save_params(dst, family, face_cfg, params)


def write_clips(folder: Path) -> Path:
    """Four clips and their manifest (SPEC §2); answers are words of the demo's tokenizer."""
    folder.mkdir(parents=True)
    specs = [("happy", dict(seconds=2.0, fps=25, size=(160, 120))),
             ("sad", dict(seconds=1.5, fps=Fraction(30000, 1001), size=(128, 96))),
             ("angry", dict(seconds=1.0, fps=15, size=(96, 128), codec="mpeg4")),
             ("silent", dict(seconds=1.2, fps=20, size=(120, 120), audio=False))]
    lines = []
    for i, (name, spec) in enumerate(specs):
        media.write_clip(folder / f"{name}.mp4", face=True, **spec)
        lines.append({"id": name, "video": f"{name}.mp4", "faces": None,
                      "conversations": [{"from": "human", "value": "<video>\nw10 w11 w12 ."},
                                        {"from": "gpt", "value": f"w{20 + i} w{30 + i} ."}]})
    manifest = folder / "train.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    cfg = omni_configs.get_config("tiny")
    tokenizer = qwen2_test_tokenizer(cfg)

    stage("1. parts: tiny LLaVA-OneVision and Whisper from transformers, converted; a random FaceXFormer encoder")
    llava_cfg = ml_collections.ConfigDict({k: cfg[k] for k in LLAVA_FIELDS})
    llava = transformers_part(OUT / "llava", llava_onevision.config_to_hf(llava_cfg), 0, tokenizer)
    whisper_part = transformers_part(OUT / "whisper", whisper.config_to_hf(cfg.audio), 1)
    face = random_face_part(OUT / "facexformer", cfg.face, 2)

    stage("2. assemble → Omni-Emotion (video-level concatenation, frame embeddings, modality tokens)")
    omni = assemble_omni_emotion(llava, whisper_part, face, OUT / "omni_emotion", cfg, progress=False)

    stage("3. clips + manifest → input pipeline (frames, face crops, log-mel, chat template)")
    cfg.data.update(manifest=str(write_clips(OUT / "clips")), batch_size=4, workers=0, epochs=1, min_examples=1)
    batches = iter(pipeline.make_pipeline(cfg.data.manifest, tokenizer, cfg, shuffle=False))
    batch = next(batches)
    print(f"   batch: {', '.join(f'{k} {list(v.shape)}' for k, v in batch.items())}")
    print(f"   has_audio {batch['has_audio'].tolist()}, counts {batches.counts}")

    stage("4. restore onto a data 2 × fsdp 2 × tensor 2 mesh of 8 simulated devices")
    mesh = make_mesh(2, 2, 2)
    model, params = omni_jax.load_pretrained(omni, mesh=mesh)
    arrays = pipeline.global_batch(batch, mesh, pipeline.pad_id_of(tokenizer))
    inputs = {k: v for k, v in arrays.items() if k != "labels"}
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        sharded_logits = jax.jit(lambda p, x: model.apply({"params": p}, **x)["logits"])(params, inputs)
    _, single_params = omni_jax.load_pretrained(omni)
    host_inputs = {k: v for k, v in batch.items() if k != "labels"}
    single_logits = jax.jit(lambda p, x: model.apply({"params": p}, **x)["logits"])(single_params, host_inputs)
    difference = float(np.abs(np.asarray(sharded_logits) - np.asarray(single_logits)).max())
    scale = float(np.abs(np.asarray(single_logits)).max())
    print(f"   sharded vs single-device logits: max|Δ| / max|ref| = {difference / scale:.2e}")
    if difference > 1e-5 * scale:
        print("FAIL: sharded logits differ from the single-device ones")
        return 1

    stage(f"5. {TRAIN_STEPS} phase-3 train steps on this batch (AdamW, lr {LEARNING_RATE})")
    train_cfg = cfg.train.copy_and_resolve_references()
    train_cfg.update(learning_rate=LEARNING_RATE, warmup_fraction=0.0, final_learning_rate_fraction=1.0,
                     max_grad_norm=0.0)  # a constant rate: the loss must fall at every step
    trainer = make_trainer(model.config, mesh, train_cfg, TRAIN_STEPS)
    state, frozen = trainer.init_state(jax.tree.map(jnp.copy, params))  # the step donates the state
    with trainer.activate():
        losses = []
        for _ in range(TRAIN_STEPS):
            state, metrics = trainer.step(state, frozen, arrays)
            losses.append(float(metrics["loss"]))
    params = merge_params(state["trainable"], frozen)
    print(f"   loss over {int(metrics['tokens'])} assistant tokens: {' → '.join(f'{x:.3f}' for x in losses)}")
    if not (np.all(np.diff(losses) < 0) and losses[-1] < 0.75 * losses[0]):
        print("FAIL: the loss did not fall at every step, by a quarter overall")
        return 1

    stage("6. greedy answers after training")
    prompts = [ids[mask == 1][:np.argmax(label != -100)] for ids, mask, label in
               zip(batch["input_ids"], batch["attention_mask"], batch["labels"])]
    width = max(len(p) for p in prompts)
    left_padded = np.stack([np.pad(p, (width - len(p), 0)) for p in prompts])
    prompt_mask = np.stack([np.pad(np.ones_like(p), (width - len(p), 0)) for p in prompts])
    media_inputs = {k: batch[k] for k in ("pixel_values_videos", "face_pixels", "input_features", "has_video",
                                          "has_face", "has_audio")}
    answers = generate(model, jax.device_get(params), left_padded, max_new_tokens=3,
                       attention_mask=prompt_mask, **media_inputs)
    for name, answer, label in zip(("happy", "sad", "angry", "silent"), np.asarray(answers), batch["labels"]):
        taught = tokenizer.decode(label[label != -100], skip_special_tokens=True)
        print(f"   {name:>6}: {tokenizer.decode(answer, skip_special_tokens=True)!r} (taught {taught!r})")
    stage(f"done: checkpoints and clips under {OUT.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

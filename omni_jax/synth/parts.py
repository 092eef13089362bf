"""Stand-ins for the 7B's downloads: tiny random parts in their release formats, to dry-run the
README's commands on a laptop before a pod run (`omni-jax synth --parts DIR`).

    DIR/llava-onevision-qwen2-7b-ov-hf/   LLaVA-OneVision as llava-hf publishes it: config.json,
                                          model.safetensors, a Qwen2-style tokenizer (chat template,
                                          <image>, <video>)
    DIR/whisper-large-v3/                 Whisper's encoder as openai/whisper-large-v3 names it
    DIR/facexformer/ckpts/model.pt        the FaceXFormer release file (torch.save of
                                          {"state_dict_backbone": ...}; no projector), where torch is
                                          installed; else DIR/ckpt/face, the encoder already converted
    DIR/data/                             synthetic clips and voices; data/audio_text.jsonl (phase 1)
    DIR/dfew_test.jsonl                   held-out clips with DFEW's labels

The shapes are those of an omni_emotion variant (`tiny`): the README's commands run from DIR
with `:7b` read as `:tiny`. Weights come from the models' own initialisers, written by the
project's exporter (the inverse of the tables `omni-jax convert` reads), so converting them back
is the real path end to end.
"""
from __future__ import annotations

import importlib.util
import json
import tempfile
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from omni_jax import registry
from omni_jax.checkpoint_dir import save_params
from omni_jax.conversion.engine import export_orbax_to_hf, source_tensors
from omni_jax.conversion.facexformer import PROJECTOR_PREFIX, STATE_DICT_KEY
from omni_jax.conversion.formats import FACEXFORMER_FORMATS
from omni_jax.progress import QUIET, Progress
from omni_jax.synth import clips
from omni_jax.synth.tokenizer import word_tokenizer

LLAVA = "llava-onevision-qwen2-7b-ov-hf"
WHISPER = "whisper-large-v3"
FACEXFORMER = "facexformer/ckpts/model.pt"
CONVERTED_FACE = "ckpt/face"
# the LLaVA-OneVision fields of the Omni-Emotion model config (a converted LLaVA-OV config is a subset)
LLAVA_FIELDS = ("text", "vision", "vision_feature_layers", "vision_feature_select_strategy", "projector_hidden_act",
                "projector_bias", "image_token_id", "video_token_id")
# the dry run's clips: two of each class for training (a batch of 8 voices, and more), one held out
TRAIN_CLIPS, HELD_OUT = 2 * len(clips.CLASSES), len(clips.CLASSES)


def random_params(model_type: str, config: ml_collections.ConfigDict, seed: int = 0) -> Any:
    """Parameters in `config`'s shapes drawn on the host as initialisers set them (norm scales 1,
    biases 0, every other leaf normal with std 0.02): no init program is traced or compiled (a
    tiny Omni-Emotion's init takes ~50 s on 2 cores, a draw a tenth of a second)."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(
        registry.abstract_params(registry.FAMILIES[model_type], config))
    rng = np.random.default_rng(seed)

    def draw(path: tuple, spec: jax.ShapeDtypeStruct) -> np.ndarray:
        name = str(path[-1].key)
        if name in ("scale", "bias"):
            return np.full(spec.shape, 1.0 if name == "scale" else 0.0, np.float32)
        return (0.02 * rng.standard_normal(spec.shape)).astype(np.float32)
    return jax.tree.unflatten(treedef, [draw(path, spec) for path, spec in paths])


def write_hf(dst: Path, model_type: str, config: ml_collections.ConfigDict, seed: int) -> None:
    """A random model of `config` as transformers writes it (config.json, safetensors)."""
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        checkpoint = save_params(Path(tmp) / "params", model_type, config, random_params(model_type, config, seed))
        export_orbax_to_hf(checkpoint, dst)


def write_facexformer(dst: Path, config: ml_collections.ConfigDict, seed: int) -> None:
    """The release file of a random face encoder of `config`: torch.save({"state_dict_backbone":
    the encoder's tensors under the release's names}), without a face projector."""
    import torch

    tensors = source_tensors(FACEXFORMER_FORMATS[0], random_params("facexformer", config, seed))
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save({STATE_DICT_KEY: {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()
                                 if not k.startswith(PROJECTOR_PREFIX)}}, dst)


def write_data(out: Path, seed: int, progress: Progress) -> dict[str, str]:
    """Synthetic clips under out/data, the phase-1 manifest data/audio_text.jsonl and the
    held-out dfew_test.jsonl (the evaluator's own question is asked: no conversation)."""
    manifests = clips.synthesize(out / "data", TRAIN_CLIPS, HELD_OUT, seed, progress)
    audio_text = out / "data" / "audio_text.jsonl"
    audio_text.write_text(manifests["audio_captions"].read_text())
    held_out = [json.loads(line) for line in manifests["eval_classification"].read_text().splitlines()]
    test = out / "dfew_test.jsonl"
    test.write_text("".join(json.dumps({"id": line["id"], "video": f"data/{line['video']}", "faces": line["faces"],
                                        "label": line["label"]}) + "\n" for line in held_out))
    return {"audio_text": str(audio_text), "dfew_test": str(test)}


def write_parts(out: Path, model: ml_collections.ConfigDict, seed: int = 0,
                progress: Progress = QUIET) -> dict[str, Any]:
    """Every file of the module docstring under `out` (an empty folder); returns what it wrote."""
    llava = ml_collections.ConfigDict({k: model[k] for k in LLAVA_FIELDS})
    written: dict[str, Any] = {}
    with progress.stage("writing the LLaVA-OneVision stand-in"):
        write_hf(out / LLAVA, "llava_onevision", llava, seed)
        # <image>, <video> at the config's ids, after Qwen2's three special tokens
        word_tokenizer(clips.vocabulary(), model.image_token_id - 3).save_pretrained(out / LLAVA)
        written["llava"] = str(out / LLAVA)
    with progress.stage("writing the Whisper stand-in"):
        write_hf(out / WHISPER, "whisper", model.audio, seed + 1)
        written["whisper"] = str(out / WHISPER)
    with progress.stage("writing the FaceXFormer stand-in"):
        if importlib.util.find_spec("torch") is not None:
            write_facexformer(out / FACEXFORMER, model.face, seed + 2)
            written["facexformer"] = str(out / FACEXFORMER)
        else:  # the release format is a torch file: without torch, the encoder as convert-facexformer writes it
            save_params(out / CONVERTED_FACE, "facexformer", model.face, random_params("facexformer", model.face,
                                                                                         seed + 2))
            written["facexformer_converted"] = str(out / CONVERTED_FACE)
    return {**written, **write_data(out, seed, progress)}

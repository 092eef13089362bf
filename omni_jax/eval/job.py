"""`omni-jax eval`, `omni-jax infer` and `omni-jax score`: the evaluators of a config on a
checkpoint, answers for clips, and the metrics of a predictions file.

    omni-jax eval --config omni_emotion:7b --checkpoint CKPT --workdir DIR \\
                  --config.evals.dfew.manifest=dfew_test.jsonl [--config.eval.modalities=v,a]

WORKDIR holds one evaluation: one checkpoint with one set of model, pipeline and generation
settings (WORKDIR/evaluation.json records them), and the results of its evaluators:
WORKDIR/predictions/NAME.jsonl (one line per manifest line: its answer and per-clip scores, or
why it was skipped), WORKDIR/NAME_confusion.png (classification), WORKDIR/metrics.json
({NAME: {metric: value}} of every evaluator in it). Evaluators add to a workdir: running mafw
into a workdir with dfew's results keeps dfew's. An evaluator already there with the same
manifest and settings is not run again; with another manifest or settings, or into a workdir
of another checkpoint or settings, the run is refused before the model loads (use a new
--workdir). A stopped or killed evaluation resumes from its progress files. Sharded over
cfg.mesh like training; multi-process as training.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import jax
import ml_collections
from jax.experimental import multihost_utils

from omni_jax.atomic import atomic_write
from omni_jax.config_flags import check_ranges
from omni_jax.data import pipeline
from omni_jax.data.manifest import ManifestSource, json_lines, too_many_skipped, unusable_lines
from omni_jax.errors import CheckpointRefused, InputError, MissingInputError, RunStopped
from omni_jax.eval import scoring
from omni_jax.eval.evaluators import EVALUATORS, from_config
from omni_jax.eval.predict import FIELDS, Predictor, media_counts, run_settings
from omni_jax.process_files import manifest_identity
from omni_jax.progress import QUIET, Progress
from omni_jax.runs import check_own_workdir, load_tokenizer, resolve_checkpoint, run_config
from omni_jax.sharding import make_mesh
from omni_jax.stopping import StopRequest

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi")
RECORD, METRICS = "evaluation.json", "metrics.json"
# what of an evaluator's spec changes no figure: left out of its record
UNRECORDED = ("manifest", "endpoint")


def load_predictor(cfg: ml_collections.ConfigDict, checkpoint: Path, progress: Progress = QUIET) -> Predictor:
    """A Predictor for the run config `cfg` (`runs.run_config`) of `checkpoint`."""
    from omni_jax.pretrained import load_pretrained

    tokenizer = load_tokenizer(cfg, checkpoint)
    mesh = make_mesh(**cfg.mesh)
    with progress.stage(f"loading {checkpoint}"):
        model, params = load_pretrained(checkpoint, dtype=cfg.eval.dtype, mesh=mesh, scan_layers=cfg.eval.scan_layers,
                                        attention_impl=cfg.eval.attention_impl)
    predict = Predictor(model, params, tokenizer, cfg, mesh)
    predict.progress = progress
    return predict


def _run_config(cfg: ml_collections.ConfigDict, checkpoint: str | os.PathLike,
                model_overrides: Sequence[str]) -> tuple[ml_collections.ConfigDict, Path]:
    check_ranges(cfg, FIELDS, pipeline.FIELDS)
    path = resolve_checkpoint(checkpoint)
    if path is None:
        raise InputError("a checkpoint is required")
    return run_config(cfg, path, model_overrides), path


def _evaluator_record(spec: ml_collections.ConfigDict) -> dict[str, Any]:
    """What an evaluator's figures depend on: its manifest as it is now and its settings."""
    fields = {k: v for k, v in spec.to_dict().items() if k not in UNRECORDED}
    judge = spec.get("endpoint")
    return {**fields, "manifest": manifest_identity(spec.manifest), **({"judge": judge.model} if judge else {})}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointRefused(f"{path}: not JSON ({error})") from None


def _check_workdir(workdir: Path, settings: dict[str, Any], wanted: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The workdir's record (a new one for a new or empty workdir), checked: the same checkpoint
    and settings, and each evaluator it has already run on the same manifest and settings."""
    record_file = workdir / RECORD
    if not record_file.exists():
        return {**settings, "evaluators": {}}
    record = _read_json(record_file)
    if {k: record.get(k) for k in settings} != json.loads(json.dumps(settings)):
        differ = [k for k in settings if record.get(k) != json.loads(json.dumps(settings[k]))]
        raise CheckpointRefused(f"--workdir {workdir} holds the evaluation of {record.get('checkpoint')} with other "
                                f"{', '.join(differ)}; evaluate into a new --workdir (nothing is overwritten)")
    for name, spec in wanted.items():
        done = record["evaluators"].get(name)
        if done is not None and done["spec"] != json.loads(json.dumps(spec)):
            changed = sorted(k for k in set(spec) | set(done["spec"]) if spec.get(k) != done["spec"].get(k))
            raise CheckpointRefused(f"--workdir {workdir} holds evaluator {name!r}'s results on another "
                                    f"{', '.join(changed)}; evaluate into a new --workdir, or give it another name "
                                    f"(--config.evals.NAME)")
    return record


def _write_record(workdir: Path, record: dict[str, Any]) -> None:
    """evaluation.json and metrics.json, renamed into place (process 0)."""
    if jax.process_index():
        return
    metrics = {"modalities": record["eval"]["modalities"],
               **{name: done["metrics"] for name, done in record["evaluators"].items() if "metrics" in done}}
    for name, content in ((RECORD, record), (METRICS, metrics)):
        with atomic_write(workdir / name) as tmp:
            tmp.write_text(json.dumps(content, indent=2, default=str))


def evaluate(cfg: ml_collections.ConfigDict, *, checkpoint: str | os.PathLike, workdir: str | os.PathLike,
             model_overrides: Sequence[str] = (), stop: StopRequest | None = None,
             progress: Progress = QUIET) -> dict[str, Any]:
    """Runs every configured evaluator (cfg.evals with a manifest) on `checkpoint` into `workdir`
    (module docstring); returns {NAME: {metric: value}} of those configured. `stop` is asked
    after every batch (raises Stopped; the same call resumes)."""
    check_ranges(cfg, FIELDS, pipeline.FIELDS)
    workdir = Path(workdir)
    check_own_workdir(workdir, RECORD, "evaluation")
    # references and media checked before the model loads
    evaluators = from_config(cfg.evals, cfg.eval.max_skip_fraction)
    if not evaluators:
        raise InputError(f"no evaluator has a manifest: set --config.evals.NAME.manifest=FILE.jsonl for one of "
                         f"{sorted(cfg.evals)}")
    cfg, path = _run_config(cfg, checkpoint, model_overrides)
    settings = {"checkpoint": str(path), **run_settings(cfg)}
    specs = {name: _evaluator_record(cfg.evals[name]) for name, _ in evaluators}
    record = _check_workdir(workdir, settings, specs)
    todo = [(name, evaluator) for name, evaluator in evaluators if "metrics" not in record["evaluators"].get(name, {})]
    kept = [name for name, _ in evaluators if "metrics" in record["evaluators"].get(name, {})]
    results = {name: record["evaluators"][name]["metrics"] for name in kept}
    if todo:
        workdir.mkdir(parents=True, exist_ok=True)
        record["evaluators"].update({name: {"spec": specs[name]} for name, _ in todo})
        _write_record(workdir, record)
        predict = load_predictor(cfg, path, progress)
        predict.stop, predict.resume_key = stop, {"checkpoint": str(path)}
        for name, evaluator in todo:
            results[name] = dict(evaluator.run(predict, workdir, resumable=True))
            record["evaluators"][name]["metrics"] = results[name]
            _write_record(workdir, record)
            progress.say(f"{name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                 for k, v in results[name].items()))
        multihost_utils.sync_global_devices("evaluated: progress files no longer needed")
        for _, evaluator in todo:
            for part in evaluator.progress_file(workdir).parent.glob(f"{evaluator.progress_file(workdir).name}-*"):
                part.unlink(missing_ok=True)
    return {**results, "workdir": str(workdir), **({"kept_from_before": kept} if kept else {})}


def clip_lines(video: str | os.PathLike | None, audio: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Manifest lines for `infer`: one video (with an optional separate audio file), every
    video of a folder (sorted), or one audio file; paths absolute."""
    if video is None:
        if audio is None:
            raise InputError("give --video (a clip, a folder of clips or a manifest) or --audio")
        return [{"id": Path(audio).stem, "audio": str(Path(audio).absolute())}]
    path = Path(video)
    if not path.exists():
        raise MissingInputError(f"{path}: no such clip, folder or manifest")
    videos = sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES) if path.is_dir() else [path]
    if not videos:
        raise MissingInputError(f"{path}: no video files ({', '.join(VIDEO_SUFFIXES)})")
    voice = {"audio": str(Path(audio).absolute())} if audio else {}
    return [{"id": v.stem, "video": str(v.absolute()), **voice} for v in videos]


def readable_answer(answer: dict[str, Any]) -> str:
    """"clip: the answer  [faces: detector; audio: 30.0 of 125.0 s heard]"."""
    if "skip" in answer:
        return f"{answer['id']}: skipped: {answer['message']}"
    used = [f"faces: {answer['faces']}"] if "faces" in answer else []
    if "audio_seconds" in answer:
        used.append(f"audio: {answer['audio_heard_seconds']} of {answer['audio_seconds']} s heard")
    return f"{answer['id']}: {answer['answer']}" + (f"  [{'; '.join(used)}]" if used else "")


def infer(cfg: ml_collections.ConfigDict, *, checkpoint: str | os.PathLike, video: str | os.PathLike | None = None,
          audio: str | os.PathLike | None = None, model_overrides: Sequence[str] = (),
          progress: Progress = QUIET) -> dict[str, Any]:
    """Answers for a clip, a folder of clips, an audio file, or a manifest (`video` ending in
    .jsonl, read as the pipeline reads any manifest): each asked `infer.question` unless its line
    carries a conversation; decoded as in training (faces detected when no boxes are given).
    Each answer is emitted as it comes (`progress.emit`); returns them all with the counts, and
    `error` when more than eval.max_skip_fraction of the clips could not be read (refused before
    the model loads when the files alone tell: missing or empty)."""
    cfg, path = _run_config(cfg, checkpoint, model_overrides)
    with tempfile.TemporaryDirectory() as tmp:
        if video is not None and str(video).endswith(".jsonl"):
            manifest = Path(video)
        else:
            manifest = Path(tmp) / "clips.jsonl"
            manifest.write_text("".join(json.dumps(line) + "\n" for line in clip_lines(video, audio)))
        source = ManifestSource(manifest, cfg.infer.question)
        failure = too_many_skipped(unusable_lines(source), len(source), cfg.eval.max_skip_fraction,
                                   "eval.max_skip_fraction", what="clips")
        if failure:
            raise RunStopped(f"{manifest}: {failure}")
        predict = load_predictor(cfg, path, progress)
        shown = lambda a: {k: v for k, v in a.items() if k not in ("line", "reference")}
        predict.on_answers = lambda batch: [progress.emit(shown(a), readable_answer(a)) for a in batch]
        answers = [shown(a) for a in predict(manifest, cfg.infer.question)]
    skips = [(a["skip"], f"{a['id']}: {a['message']}") for a in answers if "skip" in a]
    summary = {"clips": len(answers), "skipped": len(skips), **media_counts(answers), "answers": answers}
    failure = too_many_skipped(skips, len(answers), cfg.eval.max_skip_fraction, "eval.max_skip_fraction",
                               what="clips")
    return {**summary, "error": failure} if failure else summary


def _evaluator_of(cfg: ml_collections.ConfigDict, predictions: Path) -> str:
    """cfg.score.evaluator, else the first evaluator of the task the file's references make."""
    evals = cfg.evals
    if cfg.score.evaluator:
        if cfg.score.evaluator not in evals:
            raise InputError(
                f"--config.score.evaluator={cfg.score.evaluator}: the config has no such evaluator; it has "
                f"{', '.join(f'{n} ({spec.type})' for n, spec in evals.items())}"
            )
        return cfg.score.evaluator
    for _, entry in json_lines(predictions):
        tasks = [task for task, kind in EVALUATORS.items() if kind.reference in entry]
        name = next((n for n, spec in evals.items() if spec.type in tasks), None)
        if name is None:
            raise InputError(f"{predictions}: its lines carry none of the references the config's evaluators score "
                             f"({', '.join(sorted({kind.reference for kind in EVALUATORS.values()}))})")
        return name
    raise InputError(f"{predictions}: no predictions to score")


def score(cfg: ml_collections.ConfigDict, *, predictions: str | os.PathLike,
          progress: Progress = QUIET) -> dict[str, Any]:
    """The metrics of a predictions file as the config's evaluator (`_evaluator_of`) scores it
    in `omni-jax eval`: `{"id", "answer", "label"}` lines (emotion_classification, with its
    classes — or score.classes — and synonyms) or `{"id", "answer", "labels"}` (open_vocabulary:
    grouped by the table, or by the `groups` eval's judge gave every line). Lines with `skip`
    are counted, not scored."""
    path = Path(predictions)
    name = _evaluator_of(cfg, path)
    spec, task = cfg.evals[name], cfg.evals[name].type
    if task not in ("emotion_classification", "open_vocabulary"):
        raise InputError(f"evaluator {name!r} ({task}) needs its judge: `omni-jax eval` scores it")
    lines = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            lines += [json.loads(line)] if line.strip() else []
        except json.JSONDecodeError as error:
            raise InputError(f"{path}:{number}: not JSON ({error})") from None
    answered = [p for p in lines if "skip" not in p]
    key = EVALUATORS[task].reference
    missing = [p.get("id", i) for i, p in enumerate(answered) if key not in p or "answer" not in p]
    if missing:
        raise InputError(f"{path}: lines without 'answer' or {key!r}: {missing[:5]}")
    if task == "emotion_classification":
        classes = list(cfg.score.classes or spec.classes)
        synonyms = spec.get("synonyms")
        out = scoring.classification_scores([p["answer"] for p in answered], [p["label"] for p in answered],
                                            classes, synonyms.to_dict() if synonyms is not None else None)
        out = {k: out[k] for k in ("uar", "war", "unmapped", "strict_uar", "strict_war", "recall")}
    else:
        # eval's own file with the judge's grouping (grouping="llm") carries each clip's groups: the same figures
        groups = iter([p["groups"] for p in answered]) if all("groups" in p for p in answered) else None
        out = scoring.open_vocabulary_scores([p["answer"] for p in answered], [p["labels"] for p in answered],
                                             group_of=(lambda true, predicted: next(groups)) if groups else None)
        out = {k: out[k] for k in ("precision", "recall", "avg")}
    return {"evaluator": name, **out, "clips": len(answered), "skipped": len(lines) - len(answered)}

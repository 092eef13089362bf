"""make demo: the whole job on this machine — synthetic clips → phase 1 → phase 2 → phase 3 →
the modality ablation → an answer — through the commands a user runs at scale.

1. `omni-jax synth`: clips whose class sets the drawn face's expression and the voice (some
   classes differ only in the face, others only in the voice; the scene is a weak cue) and
   the manifests of every phase and of held-out evaluation.
2. The starting checkpoint as a user builds one: a tiny LLaVA-OneVision (with the demo's
   word-level tokenizer) and a tiny Whisper written by transformers (random weights,
   `save_pretrained`), `omni-jax convert`ed; a FaceXFormer-shaped face encoder; the towers
   briefly pretrained on the training clips' own cues and their outputs calibrated
   (`prepare_towers`: the real towers come pretrained); `omni-jax assemble`.
3. `omni-jax train` three times (audio_alignment → face_alignment → instruction_tuning, each
   `--init` the previous workdir) on 8 simulated devices; the paper's phase settings scaled
   down (`PHASES`; the towers stay frozen, as the phases require).
4. `omni-jax eval` of the final checkpoint for the modality subsets v, v+a, v+f, v+a+f (which
   also asks the held-out clips with their voices silenced: the config's `dfew_silenced`
   evaluator); `omni-jax infer` on one held-out clip; `omni-jax export`.
5. A summary: UAR, WAR and EMER-OV per subset, how well the class pairs that only the voice
   (or only the face) tells apart are told apart, and PNGs (loss per phase, confusion, ablation).

Everything lives under outputs/demo/ (replaced by each run; `cache/` keeps XLA's compiled
programs for the next). Each command's output goes to outputs/demo/logs/; a failing step
names its command and log. `--seed S` changes the data and every initialisation.

`--seeds 0,1,2` runs all of it once per seed, each a whole run with that seed (its own data,
parts, towers, phases and evaluations: nothing but XLA's compiled programs is shared) in
outputs/demo/seed_S/ (laid out as a single run's outputs/demo/), then prints the table over the
seeds: per subset and figure the first seed's value, the mean and the min–max range, from each
seed's seed_S/summary.json; written to outputs/demo/seeds.md and seeds.json. The seeds share
outputs/demo/cache/ (JAX keys a compiled program by its whole HLO and flags, so the cache only
skips compiling a program again; it changes no figure).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "omni_emotion:demo"  # the package's Omni-Emotion config, its "demo" variant
SUBSETS = {"v": "v", "v+a": "v,a", "v+f": "v,f", "v+a+f": "v,a,f"}
# Pairs of classes that only the voice tells apart, and pairs that only the face does (synth.CUES).
VOICE_PAIRS = (("surprise", "fear"), ("angry", "disgust"))
FACE_PAIRS = (("happy", "surprise"), ("sad", "disgust"))
# The paper's phases (§4.4) scaled to the demo: what trains and the modalities are the paper's;
# the global batch is 16 (paper 256/256/128) and the learning rates fit models that start random.
# Phase 3 leaves audio and faces each out of 30 % of its prompts, so that the one final
# checkpoint answers every subset of the ablation (without, a subset it never saw is noise).
PHASES = {
    "audio_alignment": dict(manifest="audio_captions", epochs=2, learning_rate=3e-3, modality_dropout=0.0),
    "face_alignment": dict(manifest="face_classification", epochs=2, learning_rate=3e-3, modality_dropout=0.0),
    "instruction_tuning": dict(manifest="instructions", epochs=10, learning_rate=2e-3, modality_dropout=0.3),
}
BATCH = 16
DEVICES = 8  # simulated CPU devices of every command (--devices)
# `prepare_towers`: each tower's pretraining steps and Adam learning rate
PRETRAIN = {"facexformer": dict(steps=200, learning_rate=3e-3), "whisper": dict(steps=100, learning_rate=1e-2)}
# The summary table's figures: summary()'s key, the column's name, decimals
FIGURES = (("uar", "UAR", 3), ("war", "WAR", 3), ("emer_ov", "EMER-OV avg", 3), ("voice_pairs", "voice-only pairs", 2),
           ("face_pairs", "face-only pairs", 2))
CACHE: Path | None = None  # XLA's compilation cache of every command (`run`); default: out/cache


def log_line(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class StepFailed(RuntimeError):
    pass


def eval_mesh(devices: int) -> list[str]:
    """Generation data-parallel over the devices (the tiny parameters fit each): XLA:CPU runs
    independent collectives of one program concurrently and, with 8 simulated devices on 2
    cores, its shared thread pool can starve (docs/evaluation.md: generation sharded over fsdp hung here)."""
    return [f"--config.mesh.data={devices}", "--config.mesh.fsdp=1"]


def run(name: str, args: list[str], out: Path, progress: Path | None = None, total: int = 0) -> None:
    """Runs `omni-jax ARGS` on DEVICES simulated devices, its output into out/logs/NAME.log; a progress
    bar counts the lines of `progress` (a metrics.jsonl) up to `total`; StepFailed names the
    command and the log."""
    from tqdm import tqdm

    log = out / "logs" / f"{name}.log"
    command = [sys.executable, "-m", "omni_jax.cli", *args]
    flags = (f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={DEVICES} "  # yours, then ours
             "--xla_cpu_collective_call_terminate_timeout_seconds=900 --xla_cpu_collective_timeout_seconds=900")
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(CACHE or out / "cache"), TRANSFORMERS_VERBOSITY="error",
               JAX_PLATFORMS="cpu", XLA_FLAGS=flags)
    start = time.perf_counter()
    with open(log, "w") as sink, tqdm(total=total or None, desc=f"  {name}", unit="step", leave=False, disable=None,
                                      bar_format=None if total else "{desc}: {elapsed}") as bar:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=out)
        while process.poll() is None:
            time.sleep(0.5)
            if progress is not None and progress.exists():
                bar.update(min(total, sum(1 for _ in progress.open())) - bar.n)
            else:
                bar.refresh()
    if process.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-12:])
        raise StepFailed(f"{name} failed (exit {process.returncode}) after {time.perf_counter() - start:.0f} s.\n"
                         f"  command: omni-jax {shlex.join(args)}\n  log: {log}\n  last lines:\n{tail}")
    log_line(f"{name}: {time.perf_counter() - start:.0f} s")


def run_side_by_side(commands: dict[str, list[str]], out: Path, at_once: int = 2) -> None:
    """`run`s independent commands `at_once` at a time: much of each is single-threaded (starting
    Python, tracing, compiling), so two share the cores better than one."""
    with concurrent.futures.ThreadPoolExecutor(at_once) as pool:
        for done in [pool.submit(run, name, args, out) for name, args in commands.items()]:
            done.result()  # the first failure, once the others have ended


def transformers_parts(out: Path, seed: int) -> Path:
    """transformers' tiny LLaVA-OneVision (with the demo's word-level tokenizer) and Whisper
    with random weights, `save_pretrained` into out/parts/{llava,whisper}-hf; returns out/parts."""
    import ml_collections
    import torch
    import transformers

    from omni_jax.configs import omni_emotion
    from omni_jax.models import llava_onevision, whisper
    from omni_jax.synth import clips as synth
    from omni_jax.synth.tokenizer import word_tokenizer

    transformers.utils.logging.disable_progress_bar()  # "Writing model shards", per tiny file
    cfg = omni_emotion.get_config("demo").model
    parts = out / "parts"
    tokenizer = word_tokenizer(synth.vocabulary(), cfg.image_token_id - 3)  # <image>, <video> at the config's ids
    llava_cfg = ml_collections.ConfigDict({k: cfg[k] for k in ("text", "vision", "vision_feature_layers",
                                                               "vision_feature_select_strategy", "projector_hidden_act",
                                                               "projector_bias", "image_token_id", "video_token_id")})
    for offset, (name, hf_config) in enumerate((("llava", llava_onevision.config_to_hf(llava_cfg)),
                                                ("whisper", whisper.config_to_hf(cfg.audio)))):
        torch.manual_seed(seed * 10 + offset)
        config = transformers.AutoConfig.for_model(**hf_config)
        getattr(transformers, hf_config["architectures"][0])(config).save_pretrained(parts / f"{name}-hf")
        if name == "llava":
            tokenizer.save_pretrained(parts / f"{name}-hf")  # travels into the assembled checkpoint
    return parts


def prepare_towers(parts: Path, data: Path, seed: int, steps: int = 0) -> dict[str, float]:
    """The towers as the real ones come: pretrained (FaceXFormer on faces, Whisper on speech).
    Random towers keep the cues, but as small differences riding on large components every clip
    shares (Whisper's positions, the face crop's scene), which the phases' projectors would need
    thousands of steps to amplify. So (1) each tower is briefly pretrained to tell the training
    clips' own cue apart — Whisper (converted) the voice, through a linear head on every output
    token; the face encoder (FaceXFormer-shaped, random) the expression, its fusion head and
    projector on the frozen random Swin's features, through a linear head on the mean token;
    the heads are dropped and the emotion labels never used — and (2) both towers' output
    layers are calibrated: each channel standardized over the training clips' tokens (folded
    into the last layer's scale and bias, an LSUV-style data-dependent initialisation). Writes
    parts/facexformer and parts/whisper-tuned; returns the share of each tower's per-clip
    output variance that the clip's own cue (expression, voice) explains."""
    import flax.linen as nn
    import jax

    import omni_jax
    from omni_jax import registry
    from omni_jax.checkpoint_dir import save_params
    from omni_jax.configs import omni_emotion
    from omni_jax.data import pipeline
    from omni_jax.data.manifest import ManifestSource
    from omni_jax.models import facexformer

    cfg = omni_emotion.get_config("demo")
    cfg.model.face.dtype = "float32"  # as the demo's runs compute
    source = ManifestSource(data / "face_classification.jsonl")
    cues = [json.loads(line)["cues"] for line in (data / "face_classification.jsonl").open()]
    examples = [pipeline.media_inputs(source.parse(source[i]), cfg, ("f", "a")) for i in range(len(source))]
    expressions = np.repeat([c["face"] for c in cues], cfg.model.num_frames)
    voices = np.array([c["voice"] for c in cues])

    face_model = facexformer.FaceXFormerEncoder(cfg.model.face)
    family = registry.FAMILIES["facexformer"]
    face_params = nn.unbox(face_model.init(jax.random.key(seed), **family.dummy_inputs(cfg.model.face))["params"])
    crops = np.concatenate([e["face_pixels"] for e in examples])
    stages = jax.jit(
        lambda p, x: face_model.apply({"params": p}, x, method=lambda m, x: m.backbone(x)["stage_outputs"])
    )
    features = jax.tree.map(lambda *b: np.concatenate(b), *[stages(face_params, crops[i:i + 32])
                                                             for i in range(0, len(crops), 32)])
    backbone = {"backbone": face_params["backbone"]}
    face_head = lambda head, x: face_model.apply({"params": {**head, **backbone}}, x,
                                                 method=facexformer.FaceXFormerEncoder.head)["last_hidden_state"]
    settings = {name: {**value, **({"steps": steps} if steps else {})} for name, value in PRETRAIN.items()}
    head = pretrain(face_head, {k: v for k, v in face_params.items() if k != "backbone"}, features, expressions,
                    seed, False, **settings["facexformer"])

    whisper_model, whisper_params = omni_jax.load_pretrained(parts / "whisper", dtype="float32")
    whisper_encode = lambda p, x: whisper_model.apply({"params": p}, x)["last_hidden_state"]
    log_mels = np.concatenate([e["input_features"] for e in examples])
    towers = {  # name: encode, parameters, inputs, each input's cue, the output layer
        "facexformer": (face_head, head, features, expressions, ("projector", "linear_2")),
        "whisper-tuned": (whisper_encode, pretrain(whisper_encode, whisper_params, log_mels, voices, seed, True,
                                                   **settings["whisper"]), log_mels, voices, ("layer_norm",)),
    }
    explained = {}
    for name, (encode, params, inputs, labels, layer) in towers.items():
        encode = jax.jit(encode)
        outputs = np.concatenate([np.asarray(encode(params, jax.tree.map(lambda x: x[i:i + 32], inputs)))
                                  for i in range(0, len(labels), 32)])
        mean, std = outputs.mean((0, 1)), outputs.std((0, 1)) + 1e-6
        params = jax.device_get(params)
        last = params
        for key in layer:
            last = last[key]
        weight = "kernel" if "kernel" in last else "scale"
        last[weight], last["bias"] = last[weight] / std, (last["bias"] - mean) / std
        per_clip = ((outputs - mean) / std).mean(1)
        per_clip -= per_clip.mean(0)
        between = sum((per_clip[labels == c].mean(0) ** 2).sum() * (labels == c).sum() for c in set(labels))
        explained[name] = float(between / (per_clip ** 2).sum())
        if name == "facexformer":
            save_params(parts / name, name, cfg.model.face, {**params, **jax.device_get(backbone)})
        else:
            save_params(parts / name, "whisper", whisper_model.config, params)
    return explained


def pretrain(encode, params, inputs, labels, seed: int, per_token: bool, steps: int, learning_rate: float):
    """`params` after `steps` of Adam (16 examples a step) teaching a linear head on
    encode(params, inputs) [batch, tokens, width] — on every token, or on their mean — to name
    each example's label."""
    import jax
    import jax.numpy as jnp
    import optax

    classes = sorted(set(labels))
    targets = np.array([classes.index(label) for label in labels])
    width = jax.eval_shape(encode, params, jax.tree.map(lambda x: x[:1], inputs)).shape[-1]
    trained = (params, {"kernel": jnp.zeros((width, len(classes))), "bias": jnp.zeros(len(classes))})
    optimizer = optax.adam(learning_rate)

    @jax.jit
    def step(trained, opt_state, x, y):
        def loss(trained):
            tokens = encode(trained[0], x)
            tokens = tokens if per_token else tokens.mean(1, keepdims=True)
            logits = tokens @ trained[1]["kernel"] + trained[1]["bias"]
            return optax.softmax_cross_entropy_with_integer_labels(
                logits, jnp.broadcast_to(y[:, None], logits.shape[:2])).mean()

        updates, opt_state = optimizer.update(jax.grad(loss)(trained), opt_state)
        return optax.apply_updates(trained, updates), opt_state

    opt_state, rng = optimizer.init(trained), np.random.default_rng(seed)
    for _ in range(steps):
        batch = rng.choice(len(targets), min(16, len(targets)), replace=False)
        trained, opt_state = step(trained, opt_state, jax.tree.map(lambda x: x[batch], inputs), targets[batch])
    return trained[0]


def train_steps(manifest: Path, epochs: int) -> int:
    return epochs * sum(1 for _ in manifest.open()) // BATCH


def summary(out: Path, subsets: list[str]) -> dict[str, Any]:
    """The table's figures from the eval workdirs of `subsets` (and the silenced run); the PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {}
    for subset, evaluator in [*((s, "dfew") for s in subsets), ("v+a+f, voice silenced", "dfew_silenced")]:
        folder = out / "eval" / subset.replace("+", "").replace(", voice silenced", "")
        figures = json.loads((folder / "metrics.json").read_text())
        predictions = [json.loads(line) for line in (folder / "predictions" / f"{evaluator}.jsonl").open()]
        pair = lambda pairs: float(np.mean([_pair_separation(predictions, p) for p in pairs]))
        rows[subset] = dict(uar=figures[evaluator]["uar"], war=figures[evaluator]["war"],
                            emer_ov=figures.get("emer_ov", {}).get("avg") if evaluator == "dfew" else None,
                            voice_pairs=pair(VOICE_PAIRS), face_pairs=pair(FACE_PAIRS))
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, phase in zip(axes, PHASES):
        steps = [json.loads(line) for line in (out / "runs" / phase / "metrics.jsonl").open()]
        ax.plot([s["step"] for s in steps], [s["loss"] for s in steps])
        ax.set(title=phase, xlabel="step", ylabel="loss")
    figure.tight_layout()
    figure.savefig(out / "loss.png", dpi=80)
    figure, ax = plt.subplots(figsize=(6, 3.2))
    names = list(rows)
    ax.bar(range(len(names)), [rows[n]["uar"] for n in names], color="tab:blue")
    ax.axhline(1 / 7, color="grey", linestyle="--", label="chance")
    ax.set_xticks(range(len(names)), [n.replace(", voice silenced", "\nsilenced") for n in names])
    ax.set(ylabel="UAR", ylim=(0, 1), title="held-out UAR by modalities")
    ax.legend()
    figure.tight_layout()
    figure.savefig(out / "ablation.png", dpi=80)
    shutil.copy(out / "eval" / "vaf" / "dfew_confusion.png", out / "confusion.png")
    return rows


def _pair_separation(predictions: list[dict[str, Any]], pair: tuple[str, str]) -> float:
    """How differently the model answers the two classes' clips: 0.5 + (P(a | a) − P(a | b) +
    P(b | b) − P(b | a)) / 4, P(x | y) the share of y's clips answered x. 1: always its own
    class; 0.5 (chance): the same answers whatever the class, whichever they are."""
    rate = lambda answer, label: float(np.mean([p.get("predicted") == answer for p in predictions
                                                if p.get("label") == label]))
    (a, b) = pair
    return 0.5 + (rate(a, a) - rate(a, b) + rate(b, b) - rate(b, a)) / 4


def table(rows: dict[str, dict[str, Any]], cell=lambda value, digits: f"{value:.{digits}f}") -> str:
    """The Markdown table of `rows` (subset: FIGURES' key: value), each cell `cell(value, decimals)`; "—" where None."""
    lines = ["| modalities | " + " | ".join(title for _, title, _ in FIGURES) + " |", "|---" * (len(FIGURES) + 1) + "|"]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join("—" if row[key] is None else cell(row[key], digits)
                                                 for key, _, digits in FIGURES) + " |")
    return "\n".join(lines)


def over_seeds(summaries: dict[int, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per subset and figure of the seeds' summaries ({seed: summary.json}, the first seed first): the
    first seed's value, the mean, min and max over the seeds, and each seed's value; None where a
    seed has none (EMER-OV of the silenced run)."""
    first = next(iter(summaries.values()))["rows"]
    rows = {}
    for name in first:
        rows[name] = {}
        for key, _, _ in FIGURES:
            values = [summary["rows"][name][key] for summary in summaries.values()]
            rows[name][key] = None if None in values else dict(
                first=values[0], mean=float(np.mean(values)), min=min(values), max=max(values),
                seeds=dict(zip(summaries, values)))
    return rows


def over_seeds_cell(value: dict[str, Any], digits: int) -> str:
    low, high = f"{value['min']:.{digits}f}", f"{value['max']:.{digits}f}"
    return f"{value['first']:.{digits}f} · {value['mean']:.{digits}f} ({low}–{high})"


def demo(args: argparse.Namespace, seed: int, out: Path) -> dict[str, Any]:
    """The whole demo with `seed` into `out` (fresh); prints its table, writes and returns summary.json's content."""
    subsets = args.subsets.split(",")
    (out / "logs").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = out / "data"
    # The commands run in `out` with paths relative to it, as a user types them.
    here = lambda path: os.path.relpath(path, out)
    config = CONFIG
    log_line(f"1/5 data: {args.clips} training clips, {args.clips // 4} held out (omni-jax synth)")
    run("synth", ["synth", "--out", here(data), f"--config.synth.clips={args.clips}", f"--config.synth.seed={seed}"],
        out)

    log_line("2/5 starting checkpoint: transformers' tiny LLaVA-OneVision and Whisper converted, a "
             "FaceXFormer-shaped face encoder, the towers prepared, assembled")
    parts = transformers_parts(out, seed)
    for name in ("llava", "whisper"):
        run(f"convert_{name}", ["convert", "--src", here(parts / f"{name}-hf"), "--dst", here(parts / name)], out)
    explained = prepare_towers(parts, data, seed, args.tower_steps)
    log_line("towers pretrained on their cues, outputs calibrated; share of their per-clip variance the "
             "clip's cue explains: "
             + ", ".join(f"{name} {value:.2f}" for name, value in explained.items()))
    run("assemble", ["assemble", "--llava", here(parts / "llava"), "--whisper", here(parts / "whisper-tuned"),
                     "--face", here(parts / "facexformer"), "--config", config, "--dst", here(out / "start"),
                     f"--config.convert.seed={seed}"], out)

    log_line(f"3/5 training, three phases on {DEVICES} simulated devices (omni-jax train)")
    init = out / "start"
    for phase, settings in PHASES.items():
        manifest = data / f"{settings['manifest']}.jsonl"
        steps = args.steps or train_steps(manifest, settings["epochs"])
        workdir = out / "runs" / phase
        run(phase, ["train", "--config", f"{config},{phase}", "--workdir", here(workdir), "--init", here(init),
                    f"--config.data.manifest={here(manifest)}", f"--config.train.steps={steps}",
                    f"--config.train.global_batch_size={BATCH}",
                    f"--config.train.learning_rate={settings['learning_rate']}",
                    f"--config.data.modality_dropout={settings['modality_dropout']}",
                    f"--config.train.seed={seed}", f"--config.data.seed={seed}",
                    "--config.train.checkpoint_every=0", "--config.train.log_every=1",
                    "--config.data.workers=1", "--config.data.min_examples=1"],
            out, workdir / "metrics.jsonl", steps)
        init = workdir

    log_line("4/5 evaluation of the final checkpoint by modalities (omni-jax eval), one answer (omni-jax infer)")
    # v+a+f also asks the clips with their voices silenced (the config's dfew_silenced evaluator)
    silenced = [f"--config.evals.dfew_silenced.manifest={here(data / 'eval_classification_silenced.jsonl')}"]
    commands = {f"eval_{name.replace('+', '')}": [
        "eval", "--config", config, "--checkpoint", here(init), *eval_mesh(DEVICES),
        "--workdir", here(out / "eval" / name.replace("+", "")), f"--config.eval.modalities={SUBSETS[name]}",
        f"--config.evals.dfew.manifest={here(data / 'eval_classification.jsonl')}",
        f"--config.evals.emer_ov.manifest={here(data / 'eval_open_vocabulary.jsonl')}",
        *(silenced if name == "v+a+f" else [])] for name in subsets}
    commands["infer"] = ["infer", "--config", config, "--checkpoint", here(init), "--video",
                         here(data / "infer.jsonl"), *eval_mesh(DEVICES)]
    commands["export"] = ["export", "--src", here(init / "final"), "--dst", here(out / "exported")]
    run_side_by_side(commands, out)
    # the answer's line, among the progress bars on standard error the log holds too
    answer = re.search(r"^(eval_\d+: .*)$", (out / "logs" / "infer.log").read_text().replace("\r", "\n"),
                       re.MULTILINE).group(1)

    log_line("5/5 summary")
    rows = summary(out, subsets)
    print(f"\nHeld-out clips ({args.clips // 4}, 7 classes, chance UAR 0.14); seed {seed}\n")
    print(table(rows))
    print("\n(pairs: how differently the clips of surprise/fear and angry/disgust (only the voice tells them "
          "apart) and of happy/surprise and sad/disgust (only the face) are answered; 1 = each its own class, "
          "0.5 = chance)")
    print(f"\ninfer: {answer}")
    print(f"\nImages: {out / 'loss.png'}, {out / 'confusion.png'}, {out / 'ablation.png'}")
    print(f"Workdirs: {out / 'runs'} (final checkpoint: {init / 'final'}), {out / 'eval'}; logs: {out / 'logs'}")
    result = {"seed": seed, "rows": rows, "infer": answer, "seconds": round(time.perf_counter() - start)}
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    log_line(f"seed {seed} done in {time.perf_counter() - start:.0f} s")
    return result


def seeds_list(text: str) -> list[int]:
    seeds = [int(seed) for seed in text.split(",")]
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"a seed twice in {text}")
    return seeds


def main(argv: list[str] | None = None) -> int:
    global DEVICES, CACHE  # every command's (`run`)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "outputs" / "demo"))
    seed = parser.add_mutually_exclusive_group()
    seed.add_argument("--seed", type=int, default=0)
    seed.add_argument("--seeds", type=seeds_list, default=None,
                      help="S1,S2,...: a whole run per seed in OUT/seed_S/, then the table over the seeds")
    parser.add_argument("--clips", type=int, default=336, help="training clips (held out: a quarter as many)")
    parser.add_argument("--steps", type=int, default=0, help="steps of every phase (default: the phases' epochs)")
    parser.add_argument("--tower-steps", type=int, default=0, help="each tower's pretraining steps (default: PRETRAIN)")
    parser.add_argument("--subsets", default=",".join(SUBSETS), help="modality subsets to evaluate (default: all)")
    parser.add_argument("--devices", type=int, default=8, help="simulated CPU devices of every command")
    args = parser.parse_args(argv)
    DEVICES = args.devices
    from omni_jax import xla_cpu

    xla_cpu.configure()  # for the towers' preparation here (the commands configure themselves)
    if not set(args.subsets.split(",")) <= set(SUBSETS) or "v+a+f" not in args.subsets.split(","):
        parser.error(f"--subsets: some of {', '.join(SUBSETS)}, v+a+f among them")
    out = Path(args.out)
    for child in out.iterdir() if out.exists() else ():  # the previous run's outputs; the compile cache stays
        if child.name != "cache":
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    CACHE = out / "cache"
    start = time.perf_counter()
    try:
        if args.seeds is None:
            demo(args, args.seed, out)
        else:
            for i, seed in enumerate(args.seeds):
                log_line(f"seed {seed} ({i + 1} of {len(args.seeds)}): {out / f'seed_{seed}'}")
                demo(args, seed, out / f"seed_{seed}")
    except StepFailed as failure:
        print(f"\nFAILED: {failure}", file=sys.stderr)
        return 1
    if args.seeds is not None:
        summaries = {seed: json.loads((out / f"seed_{seed}" / "summary.json").read_text()) for seed in args.seeds}
        rows = over_seeds(summaries)
        names = ", ".join(map(str, args.seeds))
        text = (f"Held-out clips ({args.clips // 4}, 7 classes, chance UAR 0.14); each cell: seed {args.seeds[0]}'s "
                f"figure · the mean (min–max) over seeds {names}\n\n{table(rows, over_seeds_cell)}\n")
        print(f"\n{text}")
        (out / "seeds.md").write_text(text)
        (out / "seeds.json").write_text(json.dumps(
            {"seeds": args.seeds, "rows": rows, "summaries": {seed: str(out / f"seed_{seed}" / "summary.json")
                                                              for seed in args.seeds}}, indent=2))
        print(f"Table: {out / 'seeds.md'}, {out / 'seeds.json'}; each seed's run: "
              + ", ".join(str(out / f"seed_{seed}") for seed in args.seeds))
    log_line(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

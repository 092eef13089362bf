"""The README's commands "From the demo to the real 7B", run as written (relative paths, from a
folder laid out like the repository root) on the tiny config with tiny parts, then the other
subcommands a user runs on their output (data-check, score, plan), relative paths only."""
import json
import re
import shlex
from pathlib import Path

import ml_collections
import pytest

from omni_jax.configs import omni_emotion
from omni_jax import cli
from tests import media
from tests.conversion.test_assemble import LLAVA_FIELDS, _random_part
from tests.tokenizer import qwen2_test_tokenizer

REPO = Path(__file__).resolve().parents[1]
# What running them on the tiny config changes: the variant; the block trains phase 1 only, so
# eval takes that workdir; no data worker processes (faster here); the classes a tiny
# tokenizer's answers are mapped to. Nothing else is added to a command.
SUBSTITUTIONS = ((":7b", ":tiny"), ("runs/p3", "runs/p1"))
EXTRA = {"train": ["--config.data.workers=0"], "eval": ["--config.data.workers=0"]}


def readme_commands() -> list[list[str]]:
    """The bash block under "From the demo to the real 7B": one argv a command (continuation
    lines joined, comments dropped)."""
    section = (REPO / "README.md").read_text().split("## From the demo to the real 7B", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
    lines = re.sub(r"\\\n\s*", " ", block).splitlines()
    commands = [shlex.split(line.split("#", 1)[0]) for line in lines if line.strip()]
    return [command[1:] for command in commands if command and command[0] == "omni-jax"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A user's folder: the downloads the README names (tiny, with random weights), their clips
    and manifests, and configs/ as in the repository."""
    import torch
    import transformers

    from omni_jax.models import llava_onevision, whisper

    root = tmp_path_factory.mktemp("user")
    (root / "configs").symlink_to(REPO / "configs")
    model = omni_emotion.get_config("tiny").model
    llava = ml_collections.ConfigDict({k: model[k] for k in LLAVA_FIELDS})
    for offset, (folder, hf) in enumerate((("llava-onevision-qwen2-7b-ov-hf", llava_onevision.config_to_hf(llava)),
                                           ("whisper-large-v3", whisper.config_to_hf(model.audio)))):
        torch.manual_seed(offset)
        getattr(transformers, hf["architectures"][0])(transformers.AutoConfig.for_model(**hf)).save_pretrained(
            root / folder)
    qwen2_test_tokenizer(model).save_pretrained(root / "llava-onevision-qwen2-7b-ov-hf")
    # FaceXFormer's release is Swin-B only (convert-facexformer reads it; its relative-path run is
    # tests/conversion/test_facexformer.py's): the tiny face encoder comes converted already.
    _random_part(root / "ckpt" / "face", "facexformer", model.face, 2)
    (root / "data").mkdir()
    lines = []
    for i in range(8):
        media.write_audio(root / "data" / f"voice{i}.m4a", media.tone(200.0 + 40 * i, 0.6, 16000), 16000)
        lines.append({"id": f"voice{i}", "audio": f"voice{i}.m4a", "conversations": [
            {"from": "human", "value": "<audio>\nw12 ."}, {"from": "gpt", "value": f"w{40 + i % 3} ."}]})
    (root / "data" / "audio_text.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    for i in range(2):
        media.write_clip(root / f"clip{i}.mp4", seconds=0.6, fps=10, size=(64, 48), face=True)
    (root / "dfew_test.jsonl").write_text("".join(json.dumps({"id": f"clip{i}", "video": f"clip{i}.mp4", "label": label})
                                                  + "\n" for i, label in enumerate(("happy", "Sad"))))
    return root


def test_the_readmes_commands_run_as_written(root, monkeypatch, capsys):
    monkeypatch.chdir(root)
    commands = readme_commands()
    assert [c[0] for c in commands] == ["convert", "convert", "convert-facexformer", "assemble", "train", "eval"]
    for command in commands:
        if command[0] == "convert-facexformer":
            continue
        argv = shlex.split(" ".join(shlex.quote(a) for a in command).replace(*SUBSTITUTIONS[0]).replace(
            *SUBSTITUTIONS[1]))
        assert cli.main(["--json", *argv, *EXTRA.get(argv[0], [])]) == 0, (argv, capsys.readouterr().err[-3000:])
        result = json.loads(capsys.readouterr().out)
        assert result["ok"], result
    assert (root / "ckpt" / "omni-emotion-7b" / "omni_jax.json").exists() and (root / "runs" / "p1" / "final").exists()
    metrics = json.loads((root / "runs" / "eval" / "metrics.json").read_text())["dfew"]
    assert (metrics["clips"], metrics["skipped"]) == (2, 0)  # "Sad" is the class sad

    # what a user runs next on these files, relative paths again
    assert cli.main(["--json", "score", "--task", "emotion_classification", "--predictions",
                     "runs/eval/predictions/dfew.jsonl"]) == 0
    assert json.loads(capsys.readouterr().out)["war"] == metrics["war"]
    assert cli.main(["--json", "data-check", "--manifest", "data/audio_text.jsonl", "--config",
                     "omni_emotion:tiny,audio_alignment", "--tokenizer", "ckpt/omni-emotion-7b",
                     "--workers", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["usable"] == 8
    assert cli.main(["--json", "plan", "--config", "omni_emotion:tiny", "--mesh", "fsdp=8", "--batch", "8",
                     "--seq", "128"]) == 0
    assert json.loads(capsys.readouterr().out)["model_flops_per_step"] > 0
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["configs", "llava-onevision-qwen2-7b-ov-hf", "whisper-large-v3", "ckpt", "data", "runs", "clip0.mp4",
         "clip1.mp4", "dfew_test.jsonl"])  # everything written where the relative paths said

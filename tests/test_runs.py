"""What a run starts from (omni_jax.runs): the model under `cfg.model`, a checkpoint's model
over the config file's, the one rule for `--config.model.*` overrides, the workdirs a job takes."""
from pathlib import Path

import pytest

from omni_jax.configs import omni_emotion
from omni_jax.errors import CheckpointRefused, InputError
from omni_jax.runs import FINE_TUNABLE, check_own_workdir, load_tokenizer, run_config
from tests.conftest import random_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny Omni-Emotion checkpoint with random parameters."""
    return random_checkpoint(tmp_path_factory.mktemp("runs") / "ckpt", "omni_emotion",
                             omni_emotion.get_config("tiny").model)


def test_the_model_is_a_section_beside_the_runs():
    cfg = omni_emotion.get_config("tiny,face_alignment")
    assert sorted(cfg) == ["check", "convert", "data", "eval", "evals", "infer", "mesh", "model", "plan", "score",
                           "train"]
    assert cfg.model.num_frames == 2 and cfg.model.text.hidden_size == 64 and cfg.train.phase == "face_alignment"
    cfg.model.num_frames = 3
    assert cfg.data.num_frames == 3  # the pipeline's frames follow the model's


def test_variants_name_their_fields():
    variant = omni_emotion.VARIANTS["7b"]
    cfg = omni_emotion.get_config("7b").model
    assert (
        (cfg.num_frames, cfg.audio_windows, cfg.face.face_grid, cfg.loss_chunk_size)
        == (variant.num_frames, variant.audio_windows, [variant.face_grid] * 2, variant.loss_chunk_size)
        == (8, 1, [14, 14], 1024)
    )
    assert [cfg[f] for f in ("audio_token_id", "vi_start_token_id", "vi_end_token_id", "au_start_token_id",
                             "au_end_token_id")] == list(range(151648, 151653))


def test_from_a_checkpoint_the_model_is_the_checkpoints(checkpoint, caplog):
    """The 7B config file with a tiny checkpoint: the checkpoint's model, nothing to warn about."""
    caplog.set_level("INFO")
    run = run_config(omni_emotion.get_config("7b"), checkpoint)
    assert run.model.text.hidden_size == 64 and run.data.num_frames == 2 and run.data.image_size == 56
    assert run.train.learning_rate == 1e-5 and not caplog.records  # the run's sections are the file's


def test_overrides_a_fine_tune_may_change_are_applied(checkpoint):
    cfg = omni_emotion.get_config("tiny")
    cfg.model.update(loss_chunk_size=8, audio_windows=1)
    run = run_config(cfg, checkpoint, model_overrides=["loss_chunk_size", "audio_windows"])
    assert (run.model.loss_chunk_size, run.model.audio_windows) == (8, 1) and set(FINE_TUNABLE) == {
        "loss_chunk_size", "audio_windows"}
    assert run_config(cfg, checkpoint).model.loss_chunk_size == 16  # not set on the command line: the checkpoint's


@pytest.mark.parametrize("field,value", [("text.rope_theta", 1e6), ("num_frames", 4), ("fusion", "frame_concat")])
def test_overrides_of_the_architecture_are_refused_naming_them(checkpoint, field, value):
    cfg = omni_emotion.get_config("tiny")
    *parents, name = field.split(".")
    section = cfg.model
    for part in parents:
        section = section[part]
    section[name] = value
    with pytest.raises(CheckpointRefused, match=rf"not model\.{field}={value!r} \(the checkpoint's: "):
        run_config(cfg, checkpoint, model_overrides=[field])


def test_an_override_equal_to_the_checkpoints_value_is_no_change(checkpoint):
    cfg = omni_emotion.get_config("7b")
    cfg.model.text.hidden_size = 64  # the tiny checkpoint's width, typed out
    assert run_config(cfg, checkpoint, model_overrides=["text.hidden_size"]).model.text.hidden_size == 64


def test_a_tokenizer_that_is_not_there_is_named(tmp_path):
    cfg = omni_emotion.get_config("tiny")
    cfg.data.tokenizer = str(tmp_path / "nothing")
    with pytest.raises(InputError, match="nothing: the tokenizer is a folder"):
        load_tokenizer(cfg, None)
    (tmp_path / "empty").mkdir()
    cfg.data.tokenizer = str(tmp_path / "empty")
    with pytest.raises(InputError, match="empty: no tokenizer in this folder"):
        load_tokenizer(cfg, None)
    cfg.data.tokenizer = ""
    with pytest.raises(InputError, match="no tokenizer: start from a checkpoint"):
        load_tokenizer(cfg, None)


def test_a_workdir_is_new_empty_of_files_or_the_jobs_own(tmp_path):
    """Only empty folders (a disk mounted at checkpoints/) or a writer's hidden temporary names:
    taken; a file anywhere else: refused; the job's record: taken (resumed)."""
    workdir = tmp_path / "run"
    check_own_workdir(workdir, "config.json", "training run")  # new
    (workdir / "checkpoints" / "mounted").mkdir(parents=True)
    (workdir / ".config.json.7-1.tmp").write_text("{")
    (workdir / ".tokenizer.7-1.tmp").mkdir()
    (workdir / ".tokenizer.7-1.tmp" / "tokenizer.json").write_text("{}")
    check_own_workdir(workdir, "config.json", "training run")
    (workdir / "checkpoints" / "mounted" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointRefused, match="holds files but no training run"):
        check_own_workdir(workdir, "config.json", "training run")
    (workdir / "config.json").write_text("{}")
    check_own_workdir(workdir, "config.json", "training run")
    with pytest.raises(InputError, match="a file, where the training run's folder is expected"):
        check_own_workdir(workdir / "config.json", "config.json", "training run")

"""The converter: round trips, input formats, output dtypes and every error path."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch

import omni_jax
from omni_jax import cli
from omni_jax.conversion import ConversionError, export_orbax_to_hf
from omni_jax.conversion.io import CheckpointReader, write_safetensors
from tests.conftest import RTOL, build_hf, convert, rel_err, tiny_qwen2_config

REPO = Path(__file__).resolve().parents[2]


def _state(path):
    reader = CheckpointReader(path)
    return {k: reader.read(k) for k in reader.keys()}


def _assert_same_tensors(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("fixture", ["qwen2_untied", "qwen2_tied", "llava"])
def test_round_trip_is_bit_exact_and_loads_in_transformers(fixture, request, tmp_path):
    hf, root = request.getfixturevalue(fixture)
    export_orbax_to_hf(root / "ox", tmp_path / "back")
    _assert_same_tensors(_state(root / "hf"), _state(tmp_path / "back"))
    reloaded = type(hf).from_pretrained(tmp_path / "back").eval()
    for (name, p), (_, q) in zip(hf.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(p, q), name


def test_sharded_writer_output_loads_in_transformers(qwen2_untied, tmp_path):
    hf, root = qwen2_untied
    (tmp_path / "out").mkdir()
    files = write_safetensors(tmp_path / "out", _state(root / "hf"), shard_bytes=60_000)
    assert len(files) > 2 and (tmp_path / "out" / "model.safetensors.index.json").exists()
    shutil.copy(root / "hf" / "config.json", tmp_path / "out" / "config.json")
    reloaded = type(hf).from_pretrained(tmp_path / "out")
    for (name, p), (_, q) in zip(hf.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(p, q), name


def test_export_from_llava_next_writes_transformers_names(llava, tmp_path):
    """A checkpoint that came from the original release exports under names transformers reads."""
    from tests.models.test_llava_onevision import _llava_next_name, _llava_qwen_config, _renamed_checkpoint

    hf, root = llava
    _renamed_checkpoint(root / "hf", tmp_path / "src", _llava_next_name, _llava_qwen_config(hf))
    convert(tmp_path / "src", tmp_path / "ox")
    export_orbax_to_hf(tmp_path / "ox", tmp_path / "back")
    _assert_same_tensors(_state(root / "hf"), _state(tmp_path / "back"))
    reloaded = type(hf).from_pretrained(tmp_path / "back")
    assert reloaded.config.video_token_index == hf.config.video_token_index


def test_sharded_safetensors_and_bin_inputs(qwen2_untied, tmp_path):
    hf, root = qwen2_untied
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    # transformers 5 writes safetensors only; older releases shipped pytorch_model.bin.
    (tmp_path / "bin").mkdir()
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    shutil.copy(root / "hf" / "config.json", tmp_path / "bin" / "config.json")
    ids = jnp.asarray(np.arange(12)[None] % 160)
    ref = None
    for name in ("sharded", "bin"):
        convert(tmp_path / name, tmp_path / f"ox_{name}")
        model, params = omni_jax.load_pretrained(tmp_path / f"ox_{name}")
        logits = np.asarray(model.apply({"params": params}, input_ids=ids)["logits"])
        if ref is None:
            ref = logits
        np.testing.assert_array_equal(logits, ref)
    with torch.no_grad():
        assert rel_err(ref, hf(torch.tensor(np.asarray(ids))).logits) < RTOL


def test_bf16_source_and_output_dtypes(tmp_path):
    from transformers import Qwen2ForCausalLM

    hf = build_hf(Qwen2ForCausalLM, tiny_qwen2_config(), tmp_path / "f32")
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    convert(tmp_path / "bf16", tmp_path / "ox_bf16")  # keeps the source dtype
    convert(tmp_path / "f32", tmp_path / "ox_cast", dtype="bfloat16")
    convert(tmp_path / "bf16", tmp_path / "ox_up", dtype="float32")
    import orbax.checkpoint.experimental.v1 as ocp

    kept = ocp.load(tmp_path / "ox_bf16" / "params")
    cast = ocp.load(tmp_path / "ox_cast" / "params")
    up = ocp.load(tmp_path / "ox_up" / "params")
    assert {x.dtype for x in jax.tree.leaves(kept)} == {np.dtype(ml_dtypes.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(up)} == {np.dtype(np.float32)}
    for a, b, c in zip(jax.tree.leaves(kept), jax.tree.leaves(cast), jax.tree.leaves(up)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_array_equal(np.asarray(a).astype(np.float32), np.asarray(c))
    export_orbax_to_hf(tmp_path / "ox_bf16", tmp_path / "back")
    _assert_same_tensors(_state(tmp_path / "bf16"), _state(tmp_path / "back"))


# --- error paths: a named error and nothing left behind ------------------------------------

def _edited(src: Path, dst: Path, edit) -> Path:
    """A copy of checkpoint `src` whose {key: array} dict went through `edit`."""
    dst.mkdir()
    write_safetensors(dst, edit(_state(src)))
    shutil.copy(src / "config.json", dst / "config.json")
    return dst


def _assert_fails_cleanly(src, dst, *fragments):
    with pytest.raises(ConversionError) as info:
        convert(src, dst)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert not dst.exists()
    assert not [p for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}")]
    return info.value


def test_missing_tensor(qwen2_untied, tmp_path):
    _, root = qwen2_untied
    key = "model.layers.1.mlp.up_proj.weight"
    src = _edited(root / "hf", tmp_path / "src", lambda s: {k: v for k, v in s.items() if k != key})
    _assert_fails_cleanly(src, tmp_path / "out", f"missing key '{key}'", "expected [96, 64]")


def test_unexpected_tensor(qwen2_untied, tmp_path):
    _, root = qwen2_untied
    src = _edited(root / "hf", tmp_path / "src", lambda s: {**s, "model.extra.weight": np.zeros((3, 4), np.float32)})
    _assert_fails_cleanly(src, tmp_path / "out", "unexpected key 'model.extra.weight' [3, 4]")


def test_extra_layer_is_unexpected(qwen2_untied, tmp_path):
    _, root = qwen2_untied
    src = _edited(root / "hf", tmp_path / "src",
                  lambda s: {**s, "model.layers.3.input_layernorm.weight": np.ones(64, np.float32)})
    _assert_fails_cleanly(src, tmp_path / "out", "'model.layers.3.input_layernorm.weight': layer 3",
                          "config has 3 layers")


def test_mis_shaped_tensors_are_all_named(qwen2_untied, tmp_path):
    _, root = qwen2_untied

    def edit(s):
        s["model.layers.0.self_attn.k_proj.weight"] = np.zeros((64, 64), np.float32)
        s["model.norm.weight"] = np.zeros(63, np.float32)
        return s

    error = _assert_fails_cleanly(
        _edited(root / "hf", tmp_path / "src", edit), tmp_path / "out",
        "shape mismatch for 'model.layers.0.self_attn.k_proj.weight': expected [32, 64], found [64, 64]",
        "shape mismatch for 'model.norm.weight': expected [64], found [63]")
    assert len(error.problems) == 2


def test_untied_head_missing_from_tied_looking_checkpoint(qwen2_untied, tmp_path):
    _, root = qwen2_untied
    src = _edited(root / "hf", tmp_path / "src", lambda s: {k: v for k, v in s.items() if k != "lm_head.weight"})
    _assert_fails_cleanly(src, tmp_path / "out", "missing key 'lm_head.weight': expected [160, 64]")


def test_truncated_file_fails_cleanly(qwen2_untied, tmp_path):
    _, root = qwen2_untied
    src = tmp_path / "src"
    shutil.copytree(root / "hf", src)
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[:len(data) - 1000])
    with pytest.raises(ValueError, match="truncated"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_existing_destination_is_never_touched(qwen2_untied, tmp_path):
    _, root = qwen2_untied
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        convert(root / "hf", dst)
    assert (dst / "keep.txt").read_text() == "user data"


def test_unsupported_model_type(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="unsupported model_type 'bert'"):
        convert(tmp_path / "src", tmp_path / "out")


def test_bin_is_loaded_without_unpickling_code(qwen2_untied, tmp_path):
    """A .bin whose pickle would run code is refused (torch.load weights_only=True)."""
    import pickle

    _, root = qwen2_untied
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(root / "hf" / "config.json", src / "config.json")

    class Exploit:
        def __reduce__(self):
            return (Path(tmp_path / "pwned").touch, ())

    with open(src / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.norm.weight": Exploit()}, f)
    with pytest.raises(Exception):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "out").exists()


def test_command_line_scripts(qwen2_untied, tmp_path, capsys):
    """convert/*.py are `omni-jax convert` and `export` (each run once as a script); the
    command's summary."""
    _, root = qwen2_untied
    run = lambda *args: subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO)
    ok = run("convert/hf_to_orbax.py", "--src", str(root / "hf"), "--dst", str(tmp_path / "ox"),
             "--config.convert.dtype=float32")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "ox" / "omni_jax.json").exists()
    back = run("convert/orbax_to_hf.py", "--src", str(tmp_path / "ox"), "--dst", str(tmp_path / "back"))
    assert back.returncode == 0, back.stderr
    _assert_same_tensors(_state(root / "hf"), _state(tmp_path / "back"))
    assert cli.main(["--json", "convert", "--src", str(root / "hf"), "--dst", str(tmp_path / "ox2")]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["ok"] and result["model_type"] == "qwen2" and result["source_format"] == "qwen2"


class Payload:
    """Stands for pickled code: unpickling it would call os.system."""

    def __reduce__(self):
        import os

        return os.system, ("touch PWNED",)


@pytest.mark.parametrize("content,message", [
    ("code", "holds posix.system, not only tensors, so it was not loaded"),
    ("garbage", "not a readable PyTorch checkpoint"),
])
def test_a_refused_bin_checkpoint_is_one_line_and_nothing_runs(qwen2_untied, tmp_path, capsys, monkeypatch,
                                                               content, message):
    """A pytorch_model.bin holding code (or not a checkpoint at all): one line naming the file,
    saying it was not loaded and how to make a safe file; no traceback, nothing executed."""
    from omni_jax import cli

    _, root = qwen2_untied
    src = tmp_path / "bin"
    src.mkdir()
    shutil.copy(root / "hf" / "config.json", src / "config.json")
    if content == "code":
        torch.save({"model.embed_tokens.weight": torch.zeros(2), "trap": Payload()}, src / "pytorch_model.bin")
    else:
        (src / "pytorch_model.bin").write_bytes(b"\x00" * 64)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["convert", "--src", str(src), "--dst", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pytorch_model.bin" in err and message in err and "Traceback" not in err
    assert content == "garbage" or "safetensors" in err
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "out").exists()

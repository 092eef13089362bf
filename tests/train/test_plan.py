"""`omni-jax plan`: the sharded train step compiled ahead of time, without weights."""
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from configs import omni_emotion
from omni_jax import registry
from omni_jax.sharding import make_mesh
from omni_jax.train.plan import bytes_per_device, sharded_params
from omni_jax.train.step import trainable_labels

REPO = Path(__file__).resolve().parents[2]


def test_plan_reports_fsdp_sharded_bytes_and_flops():
    out = subprocess.run([sys.executable, "-m", "omni_jax.cli", "--json", "plan", "--config",
                          "configs/omni_emotion.py:tiny", "--mesh", "fsdp=8", "--batch", "8", "--seq", "128"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["ok"] and result["devices"] == 8 and result["flops_per_step"] > 0
    shapes = registry.abstract_params(registry.FAMILIES["omni_emotion"], omni_emotion.get_config("tiny"))
    total = sum(int(np.prod(s.shape)) * s.dtype.itemsize for s in jax.tree.leaves(shapes))
    # tiny: norm scales and odd-sized leaves (replicated) are a visible share; the 7B test is tight
    assert total / 8 <= result["params_bytes_per_device"] < 1.1 * total / 8
    assert result["temp_bytes_per_device"] > 0
    # Adam's two moments exist for the trainable leaves only, sharded like them.
    labels = jax.tree.leaves(trainable_labels(shapes, "instruction_tuning"))
    trainable = sum(int(np.prod(s.shape)) * 4 for s, l in zip(jax.tree.leaves(shapes), labels) if l == "train")
    assert 2 * trainable / 8 <= result["optimizer_bytes_per_device"] < 1.1 * 2 * trainable / 8


def test_full_size_fsdp_holds_one_eighth_of_the_parameters_per_device():
    """The 8.8B model on fsdp=8, from shardings alone (nothing compiled or materialised)."""
    cfg = omni_emotion.get_config("7b")
    params = sharded_params(cfg, make_mesh(1, 8, 1))
    total = sum(int(np.prod(s.shape)) * s.dtype.itemsize for s in jax.tree.leaves(params))
    assert total / 8 <= bytes_per_device(params) < 1.05 * total / 8


def test_plan_rejects_a_sequence_too_short_for_the_clip():
    out = subprocess.run([sys.executable, "-m", "omni_jax.cli", "plan", "--config", "configs/omni_emotion.py:tiny",
                          "--mesh", "fsdp=2", "--batch", "2", "--seq", "8"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 1 and "shorter than the" in out.stderr

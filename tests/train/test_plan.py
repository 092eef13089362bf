"""`omni-jax plan`: the sharded train step compiled ahead of time, without weights."""
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from configs import omni_emotion
from omni_jax import registry
from omni_jax.sharding import make_mesh
from omni_jax.train.plan import abstract_batch, bytes_per_device, matmul_flops
from omni_jax.train.step import make_trainer, merge_params, trainable_mask, training_model_config

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
    mask = jax.tree.leaves(trainable_mask(shapes, "instruction_tuning"))
    trainable = sum(int(np.prod(s.shape)) * 4 for s, trained in zip(jax.tree.leaves(shapes), mask) if trained)
    assert 2 * trainable / 8 <= result["optimizer_bytes_per_device"] < 1.1 * 2 * trainable / 8


def test_full_size_fsdp_holds_one_eighth_of_the_parameters_per_device():
    """The 8.8B model on fsdp=8, from shardings alone (nothing compiled or materialised)."""
    cfg = omni_emotion.get_config("7b")
    trainer = make_trainer(training_model_config(cfg), make_mesh(1, 8, 1), cfg.train, total_steps=1)
    params = merge_params(trainer.abstract_state["trainable"], trainer.abstract_frozen)
    total = sum(int(np.prod(s.shape)) * s.dtype.itemsize for s in jax.tree.leaves(params))
    assert total / 8 <= bytes_per_device(params) < 1.05 * total / 8


def test_plan_rejects_a_sequence_too_short_for_the_clip():
    out = subprocess.run([sys.executable, "-m", "omni_jax.cli", "plan", "--config", "configs/omni_emotion.py:tiny",
                          "--mesh", "fsdp=2", "--batch", "2", "--seq", "8"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 1 and "shorter than the" in out.stderr


def test_matmul_flops_count_scans_remat_and_convolutions():
    """A scanned, rematerialised layer: 3 forward products, then per step a recomputed forward
    and two backward products; a convolution counts as its equivalent matrix product."""
    def loss(w, x):
        step = jax.checkpoint(lambda c, _: (jnp.tanh(c @ w), None))
        return jax.lax.scan(step, x, None, length=3)[0].sum()

    product = 2 * 4 * 8 * 8  # [4, 8] @ [8, 8]
    jaxpr = jax.make_jaxpr(jax.value_and_grad(loss))(jnp.ones((8, 8)), jnp.ones((4, 8))).jaxpr
    assert matmul_flops(jaxpr) == 3 * product + 3 * 3 * product
    conv = jax.make_jaxpr(lambda x, k: jax.lax.conv_general_dilated(x, k, (1,), "VALID", dimension_numbers=(
        "NWC", "WIO", "NWC")))(jnp.ones((2, 10, 3)), jnp.ones((5, 3, 4))).jaxpr
    assert matmul_flops(conv) == 2 * (2 * 6 * 4) * (5 * 3)  # out [2, 6, 4], each a 15-term dot product


def test_step_flops_are_independent_of_microbatches_and_cover_the_language_model():
    cfg = omni_emotion.get_config("tiny")
    batch, seq = 4, 128
    inputs = abstract_batch(cfg, batch, seq)
    flops = []
    for microbatches in (1, 2):
        cfg.train.microbatches = microbatches
        trainer = make_trainer(training_model_config(cfg), make_mesh(1, 1, 1, devices=jax.devices()[:1]), cfg.train,
                               10)
        with trainer.activate():
            jaxpr = trainer.step.trace(trainer.abstract_state, trainer.abstract_frozen, inputs).jaxpr.jaxpr
        flops.append(matmul_flops(jaxpr))
    assert flops[0] == flops[1]
    # Forward and backward of every LM matrix (embedding lookup aside) for each token: ≥ 6 N T.
    lm = registry.abstract_params(registry.FAMILIES["omni_emotion"], cfg)["language_model"]
    lm_matrices = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(lm) if len(x.shape) >= 2) - int(
        np.prod(lm["model"]["embed_tokens"]["embedding"].shape))
    assert flops[0] >= 6 * lm_matrices * batch * seq

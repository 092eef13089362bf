"""`omni-jax plan`: the sharded train step compiled ahead of time, without weights."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from omni_jax import cli, registry
from omni_jax.configs import omni_emotion
from omni_jax.flops import count_flops
from omni_jax.sharding import dcn_granules, make_mesh
from omni_jax.train.plan import (
    COLLECTIVES,
    abstract_batch,
    bytes_per_device,
    collective_bytes,
    dcn_collective_bytes,
    device_groups,
)
from omni_jax.train.step import make_trainer, merge_params, trainable_mask, training_model_config

REPO = Path(__file__).resolve().parents[2]


def plan(capsys, *argv: str) -> tuple[int, dict]:
    """`omni-jax --json plan ARGV` in this process (8 simulated devices already: JAX started)."""
    capsys.readouterr()
    status = cli.main(["--json", "plan", "--config", "omni_emotion:tiny", *argv])
    return status, json.loads(capsys.readouterr().out.splitlines()[-1])


def test_plan_reports_fsdp_sharded_bytes_and_flops(capsys):
    status, result = plan(capsys)  # tiny: fsdp over the 8 devices, a batch of 8 clips of 128 tokens
    assert status == 0
    assert result["ok"] and result["devices"] == 8
    assert 0 < result["model_flops_per_step"] < result["hardware_flops_per_step"]  # remat "full"
    shapes = registry.abstract_params(registry.FAMILIES["omni_emotion"], omni_emotion.get_config("tiny").model)
    total = sum(int(np.prod(s.shape)) * s.dtype.itemsize for s in jax.tree.leaves(shapes))
    # tiny: norm scales and odd-sized leaves (replicated) are a visible share; the 7B test is tight
    assert total / 8 <= result["params_bytes_per_device"] < 1.1 * total / 8
    assert result["temp_bytes_per_device"] > 0
    # FSDP gathers the weights and sums the gradients; the tiny model's odd leaves are whole
    assert result["all-gather_bytes_per_device"] > 0 and result["all-reduce_bytes_per_device"] > 0
    assert 0 < result["replicated_params_bytes_per_device"] < 0.1 * total / 8
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


FSDP_256 = """
import json, jax, numpy as np
from omni_jax.configs import omni_emotion
from omni_jax.sharding import make_mesh
from omni_jax.train.plan import bytes_per_device, replicated_bytes_per_device
from omni_jax.train.step import make_trainer, training_model_config
cfg = omni_emotion.get_config("7b")
mesh = make_mesh(1, 256, 1)
trainer = make_trainer(training_model_config(cfg), mesh, cfg.train, total_steps=1)
stored = (trainer.abstract_state["trainable"], trainer.abstract_frozen)
total = sum(int(np.prod(s.shape)) * s.dtype.itemsize
            for s in jax.tree.leaves((trainer.abstract_state["trainable"], trainer.frozen_shapes)))
print(json.dumps({"total": total, "per_device": bytes_per_device(stored),
                  "replicated": replicated_bytes_per_device(stored, mesh)}))
"""


def test_full_size_fsdp_256_splits_the_parameters_that_do_not_divide_it():
    """SigLIP's 1152-wide layers and the projector's 1152 rows on fsdp=256 (shardings only, on
    256 simulated devices in a fresh process): split along another dimension or stored padded."""
    out = subprocess.run([sys.executable, "-c", FSDP_256], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=256"})
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["total"] / 256 <= result["per_device"] < 1.1 * result["total"] / 256
    # what remains whole: norm scales and biases, which the rules replicate (5.7 MB)
    assert result["replicated"] < 0.05 * result["total"] / 256


def test_collective_bytes_count_loops_and_the_costliest_branch():
    """An all-gather in a 3-step scan, an all-reduce after it and another in one branch of a
    cond, written with shard_map so the compiled collectives are exactly these."""
    mesh = jax.make_mesh((8,), ("x",))

    def body(c, _):
        gathered = jax.lax.all_gather(c, "x", tiled=True)  # [16, 16] f32: 1024 bytes
        return c + gathered[:2] * gathered[-2:], None

    def f(x):
        y = jax.lax.psum(jax.lax.scan(body, x, None, length=3)[0], "x")  # [2, 16]: 128 bytes
        return jax.lax.cond(y.sum() > 0, lambda v: jax.lax.psum(jnp.concatenate([v] * 4), "x")[:2],  # 512
                            lambda v: v * 2, y)

    step = jax.jit(jax.shard_map(f, mesh=mesh, in_specs=P("x"), out_specs=P("x")))
    spec = jax.ShapeDtypeStruct((16, 16), jnp.float32, sharding=jax.sharding.NamedSharding(mesh, P("x")))
    counts = collective_bytes(step.lower(spec).compile().as_text())
    assert counts == {"all-gather": 3 * 1024, "all-reduce": 128 + 512, "reduce-scatter": 0, "all-to-all": 0,
                      "collective-permute": 0}


def test_plan_reports_the_collectives_that_cross_dcn(capsys):
    """The fsdp=8 plan above with its 8 devices standing for 2 slices of 4 along fsdp: every
    weight all-gather spans both slices, and the plan says which axis crosses and how much."""
    status, result = plan(capsys, "--config.mesh.fsdp=4", "--config.mesh.dcn_fsdp=2")
    assert status == 0
    assert result["devices"] == 8 and result["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    assert result["ici_mesh"] == {"data": 1, "fsdp": 4, "tensor": 1} and result["dcn_axes"] == ["fsdp"]
    assert result["dcn_all-gather_bytes_per_device"] == result["all-gather_bytes_per_device"] > 0
    assert 0 < result["dcn_all-reduce_bytes_per_device"] <= result["all-reduce_bytes_per_device"]
    spanning = sum(result[f"dcn_{kind}_bytes_per_device"] for kind in COLLECTIVES)
    # an all-gather over 8 devices in 2 slices sends 1/8 of its buffer across, an all-reduce 2/8
    assert result["dcn_all-gather_bytes_per_device"] / 8 <= result["dcn_sent_bytes_per_device"] < spanning / 2


def test_dcn_bytes_are_the_collectives_whose_device_groups_span_slices():
    """On data=2 × fsdp=4: a jit's sums over fsdp (512 bytes) then data (128), as the SPMD
    partitioner writes them (a list and mesh axes), and shard_map's all-gather over fsdp (512)
    and permute over data (128): each counted where DCN splits its axis, sent as estimated."""
    mesh = make_mesh(2, 4, 1)
    spec = lambda shape, *axes: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=NamedSharding(mesh, P(*axes)))
    sums = jax.jit(lambda x, w: (x @ w).sum(0), out_shardings=NamedSharding(mesh, P()))
    moves = jax.jit(jax.shard_map(lambda x: (jax.lax.all_gather(x, "fsdp", tiled=True),
                                            jax.lax.ppermute(x, "data", [(0, 1), (1, 0)])),
                                  mesh=mesh, in_specs=P(("data", "fsdp")), out_specs=P(("data", "fsdp"))))
    hlos = (sums.lower(spec((8, 64), "data", "fsdp"), spec((64, 32), "fsdp")).compile().as_text(),
            moves.lower(spec((16, 16), ("data", "fsdp"))).compile().as_text())
    crossing = lambda hlo, dcn: {kind: n for kind, n in dcn_collective_bytes(
        hlo, dcn_granules((2, 4, 1), dcn).reshape(-1)).items() if n}
    assert [collective_bytes(hlo)["all-reduce"] for hlo in hlos] == [640, 0]
    assert [crossing(hlo, (1, 1, 1)) for hlo in hlos] == [{}, {}]
    # data over DCN: 2 devices, one per slice, so an all-reduce sends 2 × 1/2 of its buffer
    assert [crossing(hlo, (2, 1, 1)) for hlo in hlos] == [
        {"all-reduce": 128, "sent": 128}, {"collective-permute": 128, "sent": 128}]
    # fsdp over DCN: groups of 4 in 2 slices; (g - 1) / n of the buffer, twice for an all-reduce
    assert [crossing(hlo, (1, 2, 1)) for hlo in hlos] == [{"all-reduce": 512, "sent": 256},
                                                           {"all-gather": 512, "sent": 128}]
    assert crossing(hlos[1], (2, 2, 1)) == {"all-gather": 512, "collective-permute": 128, "sent": 256}


@pytest.mark.parametrize("attributes,groups", [
    ("replica_groups={{0,4},{1,5},{2,6},{3,7}}, use_global_device_ids=true", [[0, 4], [1, 5], [2, 6], [3, 7]]),
    ("replica_groups={}, to_apply=%add", [list(range(8))]),
    ("source_target_pairs={{0,4},{4,0}}, metadata={}", [[0, 4], [0, 4]]),
    ("replica_groups=[2,4]<=[8], dimensions={0}", [[0, 1, 2, 3], [4, 5, 6, 7]]),
    ("replica_groups=[4,2]<=[2,4]T(1,0), dimensions={0}", [[0, 4], [1, 5], [2, 6], [3, 7]]),
    ("replica_groups=mesh['axis_0'=4,'axis_1'=2], device_ids=([2,4]T(1,0)) {'axis_0'}, dimensions={0}",
     [[0, 1, 2, 3], [4, 5, 6, 7]]),
    ("replica_groups=mesh['axis_0'=2,'axis_1'=1,'axis_2'=4] {'axis_0'}, use_global_device_ids=true",
     [[0, 4], [1, 5], [2, 6], [3, 7]]),
    ("replica_groups=mesh['a'=8] {'a':(1)2}", [[0, 4], [1, 5], [2, 6], [3, 7]]),  # the major 2 of a's 8
    ("replica_groups=mesh['a'=8] {'a':(4)2}", [[0, 1], [2, 3], [4, 5], [6, 7]]),  # the minor 2
    ("replica_groups=mesh['a'=2,'b'=4] {'a','b':(2)2}", [[0, 1, 4, 5], [2, 3, 6, 7]]),
])
def test_device_groups_read_each_form_xla_prints(attributes, groups):
    assert sorted(sorted(g.tolist()) for g in device_groups(attributes, 8)) == groups


def test_plan_rejects_a_sequence_too_short_for_the_clip_and_a_mesh_larger_than_this_process(capsys):
    status, result = plan(capsys, "--config.plan.seq_len=8")
    assert status == 1 and "--config.plan.seq_len=8 is shorter than the" in result["error"]
    status, result = plan(capsys, "--config.mesh.fsdp=16")  # JAX started here with 8: a plan's own process has 16
    assert status == 1 and "needs 16 simulated devices, and JAX started with 8" in result["error"]


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
        flops.append(count_flops(jaxpr).model)
    assert flops[0] == flops[1]
    # Forward and backward of every LM matrix (embedding lookup aside) for each token: ≥ 6 N T.
    lm = registry.abstract_params(registry.FAMILIES["omni_emotion"], cfg.model)["language_model"]
    lm_matrices = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(lm) if len(x.shape) >= 2) - int(
        np.prod(lm["model"]["embed_tokens"]["embedding"].shape))
    assert flops[0] >= 6 * lm_matrices * batch * seq

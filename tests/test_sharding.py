"""Sharded equals unsharded on meshes of the 8 simulated devices: LLaVA-OneVision restored
straight onto each mesh; a checkpoint saved from one mesh restores onto another. (The whole
Omni-Emotion model's loss and gradients sharded: tests/train/test_step.py, through the train
step itself.)"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import omni_jax
from omni_jax import registry
from omni_jax.conversion.engine import save_params
from omni_jax.sharding import LOGICAL_AXIS_RULES, make_mesh, param_shardings
from tests.conftest import on_first_device, rel_err
from tests.models.test_llava_onevision import video_inputs

MESHES = [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4)]


def _batch_sharding(mesh):
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))


@pytest.fixture(scope="module")
def unsharded(llava):
    hf, root = llava
    model, params = omni_jax.load_pretrained(root / "ox")
    ids, pixels = video_inputs(hf, model.config, batch=8, seed=5)
    logits = model.apply({"params": params}, input_ids=jnp.asarray(ids), pixel_values_videos=jnp.asarray(pixels))
    return ids, pixels, np.asarray(logits["logits"])


@pytest.mark.parametrize("data,fsdp,tensor", MESHES)
def test_sharded_forward_equals_unsharded(llava, unsharded, data, fsdp, tensor):
    _, root = llava
    ids, pixels, expected = unsharded
    mesh = make_mesh(data, fsdp, tensor)
    model, params = omni_jax.load_pretrained(root / "ox", mesh=mesh)
    if data == 1:  # fsdp and tensor split the parameters; data alone replicates them
        assert on_first_device(params) < sum(x.size for x in jax.tree.leaves(params)) / 2
    batch = _batch_sharding(mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        forward = jax.jit(lambda p, i, v: model.apply({"params": p}, input_ids=i, pixel_values_videos=v)["logits"])
        logits = forward(params, jax.device_put(ids, batch), jax.device_put(pixels, batch))
    assert rel_err(logits, expected) < 1e-5


def test_checkpoint_saved_on_one_mesh_restores_on_another(llava, tmp_path):
    """Parameters sharded fsdp=8 are written shard by shard and restored onto tensor=4 × fsdp=2."""
    _, root = llava
    source_mesh, target_mesh = make_mesh(1, 8, 1), make_mesh(1, 2, 4)
    model, params = omni_jax.load_pretrained(root / "ox", mesh=source_mesh)
    family = registry.FAMILIES["llava_onevision"]
    save_params(tmp_path / "saved", family, model.config, params)
    _, restored = omni_jax.load_pretrained(tmp_path / "saved", mesh=target_mesh)
    expected = param_shardings(registry.abstract_params(family, model.config, boxed=True), target_mesh)
    for a, b, sharding in zip(jax.tree.leaves(params), jax.tree.leaves(restored), jax.tree.leaves(expected)):
        assert b.sharding == sharding
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(s.spec != a.sharding.spec for s, a in zip(jax.tree.leaves(expected), jax.tree.leaves(params)))


def test_fresh_parameters_are_created_in_their_shards(llava):
    """`init_params` on fsdp=2 x tensor=4 equals the same init on one device, already split."""
    _, root = llava
    model, _ = omni_jax.load_pretrained(root / "ox")
    family = registry.FAMILIES["llava_onevision"]
    mesh = make_mesh(1, 2, 4)
    sharded = registry.init_params(family, model.config, mesh, seed=3)
    single = registry.init_params(family, model.config, make_mesh(1, 1, 1, devices=jax.devices()[:1]), seed=3)
    expected = param_shardings(registry.abstract_params(family, model.config, boxed=True), mesh)
    assert on_first_device(sharded) < sum(x.size for x in jax.tree.leaves(sharded)) / 2
    for a, b, sharding in zip(jax.tree.leaves(sharded), jax.tree.leaves(single), jax.tree.leaves(expected)):
        assert a.sharding == sharding
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

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
from jax.sharding import AbstractMesh, PartitionSpec as P

from omni_jax.sharding import LOGICAL_AXIS_RULES, fit_spec, make_mesh, param_shardings, stored_layout
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


def _mesh(data=1, fsdp=1, tensor=1):
    return AbstractMesh((data, fsdp, tensor), ("data", "fsdp", "tensor"))


@pytest.mark.parametrize("spec,shape,mesh,fixed,expected", [
    # 4 KV heads on tensor=8: tensor moves to head_dim, the whole dimension it divides
    (P("fsdp", "tensor", None), (3584, 4, 128), _mesh(fsdp=2, tensor=8), (), P("fsdp", None, "tensor")),
    # two names on one dimension: the subset that divides it (tensor) stays, fsdp moves on
    (P(("fsdp", "tensor"), None), (6, 64), _mesh(fsdp=4, tensor=2), (), P("tensor", "fsdp")),
    # the scanned layers never take an axis (a scan slicing them would gather them whole)
    (P(None, "fsdp"), (16, 3), _mesh(fsdp=8), (True, False), P(None, None)),
    (P(None, "fsdp"), (16, 3), _mesh(fsdp=8), (), P("fsdp", None)),
    # SigLIP's 1152 × 4304 MLP kernel on fsdp=256: nothing divides (padding is stored_layout's)
    (P(None, "fsdp", "tensor"), (26, 1152, 4304), _mesh(fsdp=256), (True,), P(None, None, "tensor")),
])
def test_a_dimension_its_axes_do_not_divide_passes_them_on(spec, shape, mesh, fixed, expected):
    assert fit_spec(spec, shape, mesh, fixed) == expected


def test_frozen_leaves_are_stored_padded_when_nothing_else_splits_them():
    fsdp256 = _mesh(fsdp=256)
    assert stored_layout(P(None, "fsdp", "tensor"), (26, 1152, 4304), fsdp256, (True,)) == (
        (26, 1280, 4304), P(None, "fsdp", "tensor"))
    # split by another dimension: no padding; padding 3 → 256 rows: kept whole
    assert stored_layout(P("fsdp", None), (1152, 3584), fsdp256) == ((1152, 3584), P(None, "fsdp"))
    assert stored_layout(P("fsdp", None), (3, 5), fsdp256) == ((3, 5), P(None, None))

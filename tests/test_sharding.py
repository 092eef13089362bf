"""Sharded equals unsharded: parameters restored straight onto meshes of 8 simulated devices."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import omni_jax
from omni_jax.sharding import LOGICAL_AXIS_RULES, make_mesh
from tests.conftest import rel_err
from tests.models.test_llava_onevision import video_inputs


@pytest.fixture(scope="module")
def unsharded(llava):
    hf, root = llava
    model, params = omni_jax.load_pretrained(root / "ox")
    ids, pixels = video_inputs(hf, model.config, batch=8, seed=5)
    logits = model.apply({"params": params}, input_ids=jnp.asarray(ids), pixel_values_videos=jnp.asarray(pixels))
    return ids, pixels, np.asarray(logits["logits"])


@pytest.mark.parametrize("data,fsdp,tensor", [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4)])
def test_sharded_forward_equals_unsharded(llava, unsharded, data, fsdp, tensor):
    _, root = llava
    ids, pixels, expected = unsharded
    mesh = make_mesh(data, fsdp, tensor)
    model, params = omni_jax.load_pretrained(root / "ox", mesh=mesh)
    total = sum(x.size for x in jax.tree.leaves(params))
    per_device = sum(s.data.size for x in jax.tree.leaves(params) for s in x.addressable_shards
                     if s.device == jax.devices()[0])
    if data == 1:  # fsdp and tensor split the parameters; data alone replicates them
        assert per_device < total / 2
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        forward = jax.jit(lambda p, i, v: model.apply({"params": p}, input_ids=i, pixel_values_videos=v)["logits"])
        logits = forward(params, jax.device_put(ids, batch), jax.device_put(pixels, batch))
    assert rel_err(logits, expected) < 1e-5

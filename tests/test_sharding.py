"""Sharded equals unsharded on meshes of the 8 simulated devices: LLaVA-OneVision restored
straight onto each mesh, and the whole Omni-Emotion model's logits, loss and gradients; a
checkpoint saved from one mesh restores onto another."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import omni_jax
from omni_jax import registry
from omni_jax.conversion.engine import save_params
from omni_jax.prompt import IGNORE
from omni_jax.train.loss import next_token_loss
from omni_jax.sharding import LOGICAL_AXIS_RULES, make_mesh, param_shardings
from tests.conftest import rel_err
from tests.models.test_llava_onevision import video_inputs
from tests.models.test_omni_emotion import clip_inputs, tiny_model

MESHES = [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4)]


def _on_first_device(tree) -> int:
    return sum(s.data.size for x in jax.tree.leaves(tree) for s in x.addressable_shards if s.device == jax.devices()[0])


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
        assert _on_first_device(params) < sum(x.size for x in jax.tree.leaves(params)) / 2
    batch = _batch_sharding(mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        forward = jax.jit(lambda p, i, v: model.apply({"params": p}, input_ids=i, pixel_values_videos=v)["logits"])
        logits = forward(params, jax.device_put(ids, batch), jax.device_put(pixels, batch))
    assert rel_err(logits, expected) < 1e-5


def omni_batch(cfg, batch: int = 8) -> dict[str, np.ndarray]:
    """Every modality, one face absent, padded rows, assistant labels at each row's end."""
    inputs = clip_inputs(cfg, batch=batch, seed=4)
    inputs["has_face"][1] = False
    inputs["has_audio"][2] = False
    mask = np.ones_like(inputs["input_ids"])
    mask[3, -2:] = 0
    labels = np.where(np.arange(mask.shape[1]) >= mask.shape[1] - 5, inputs["input_ids"], IGNORE)
    return {**inputs, "attention_mask": mask, "labels": np.where(mask == 1, labels, IGNORE)}


def logits_loss_and_grads(model, params, batch):
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model.apply({"params": params}, **inputs)["logits"]
    (loss, tokens), grads = jax.value_and_grad(lambda p: next_token_loss(model, p, batch), has_aux=True)(params)
    return logits, loss, tokens, grads


@pytest.fixture(scope="module")
def omni_unsharded():
    cfg, model, params = tiny_model("frame_cross_attention")  # every parameter kind
    batch = omni_batch(cfg)
    return model, params, batch, jax.jit(logits_loss_and_grads, static_argnums=0)(model, params, batch)


# One mesh with every axis (each compile of the whole model's gradients costs ~30 s on 2 cores):
# the forward test above covers the other meshes, the data-parallel 2-process training run
# (tests/train/test_train.py) pure data parallelism, test_step a 2×2×2 train step.
def test_omni_emotion_logits_loss_and_gradients_sharded(omni_unsharded):
    model, params, batch, (logits, loss, tokens, grads) = omni_unsharded
    mesh = make_mesh(2, 2, 2)
    shardings = param_shardings(registry.abstract_params(registry.FAMILIES["omni_emotion"], model.config,
                                                         boxed=True), mesh)
    sharded = jax.device_put(params, shardings)
    assert _on_first_device(sharded) < sum(x.size for x in jax.tree.leaves(params)) / 2
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        step = jax.jit(lambda p, b: logits_loss_and_grads(model, p, b),
                       in_shardings=(shardings, jax.tree.map(lambda _: _batch_sharding(mesh), batch)),
                       out_shardings=(_batch_sharding(mesh), replicated, replicated, shardings))
        got_logits, got_loss, got_tokens, got_grads = step(sharded, batch)
    assert int(got_tokens) == int(tokens) > 0
    assert rel_err(got_logits, logits) < 1e-5
    np.testing.assert_allclose(float(got_loss), float(loss), rtol=1e-5)
    # Leaves whose gradient is zero in exact arithmetic (e.g. a key bias: softmax ignores a
    # per-row constant) hold rounding noise, allowed up to 1e-7 of the largest gradient.
    floor = 1e-7 * max(float(np.abs(g).max()) for g in jax.tree.leaves(grads))
    flat_expected = jax.tree_util.tree_flatten_with_path(grads)[0]
    for (path, expected), got, sharding in zip(flat_expected, jax.tree.leaves(got_grads), jax.tree.leaves(shardings)):
        assert got.sharding == sharding, jax.tree_util.keystr(path)
        error = float(np.abs(np.asarray(got) - np.asarray(expected)).max())
        assert error <= 1e-4 * float(np.abs(expected).max()) + floor, jax.tree_util.keystr(path)


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
    assert _on_first_device(sharded) < sum(x.size for x in jax.tree.leaves(sharded)) / 2
    for a, b, sharding in zip(jax.tree.leaves(sharded), jax.tree.leaves(single), jax.tree.leaves(expected)):
        assert a.sharding == sharding
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

"""The phase-masked train step: only the phase's subtrees move, and sharded equals unsharded."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from omni_jax import registry
from omni_jax.sharding import LOGICAL_AXIS_RULES, make_mesh, param_shardings
from omni_jax.train.step import PHASES, make_optimizer, train_step, trainable_labels
from tests.models.test_omni_emotion import clip_inputs, tiny_model


@pytest.fixture(scope="module")
def setup():
    cfg, model, params = tiny_model()
    batch = {k: jnp.asarray(v) for k, v in clip_inputs(cfg, batch=4).items()}  # divisible by data × fsdp
    labels = np.full(batch["input_ids"].shape, -100)
    labels[:, -6:] = np.asarray(batch["input_ids"])[:, -6:]  # the "assistant" tail
    return cfg, model, params, {**batch, "labels": jnp.asarray(labels)}


def _step(model, params, batch, phase):
    optimizer = make_optimizer(params, phase)
    labels = trainable_labels(params, phase)
    step = jax.jit(functools.partial(train_step, model, optimizer, labels))
    return step, optimizer, labels


@pytest.mark.parametrize("phase", ["audio_alignment", "instruction_tuning"])
def test_only_the_phase_subtrees_change(setup, phase):
    _, model, params, batch = setup
    step, optimizer, labels = _step(model, params, batch, phase)
    new_params, opt_state, metrics = step(params, optimizer.init(params), batch)
    assert np.isfinite(metrics["loss"]) and int(metrics["tokens"]) == 4 * 6
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), params, new_params)
    pairs = list(zip(jax.tree.leaves(labels), jax.tree.leaves(moved)))
    assert not any(changed for label, changed in pairs if label == "freeze")
    assert all(changed for label, changed in pairs if label == "train")
    # Frozen leaves carry no Adam moments.
    moments = sum(x.size for x in jax.tree.leaves(opt_state))
    trainable = sum(np.size(p) for p, l in zip(jax.tree.leaves(params), jax.tree.leaves(labels)) if l == "train")
    assert moments <= 2 * trainable + 8
    if phase == "audio_alignment":
        assert set(PHASES[phase][0]) == {"audio_projector"}


def test_sharded_train_step_equals_unsharded(setup):
    _, model, params, batch = setup
    step, optimizer, labels = _step(model, params, batch, "instruction_tuning")
    expected_params, _, expected = step(params, optimizer.init(params), batch)
    mesh = make_mesh(2, 2, 2)
    shardings = param_shardings(registry.abstract_params(registry.FAMILIES["omni_emotion"], model.config, boxed=True),
                                mesh)
    data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        sharded_params = jax.device_put(params, shardings)
        opt_state = jax.jit(optimizer.init)(sharded_params)
        opt_shardings = jax.tree.map(lambda x: x.sharding, opt_state)
        sharded_step = jax.jit(functools.partial(train_step, model, optimizer, labels),
                               in_shardings=(shardings, opt_shardings, jax.tree.map(lambda _: data, batch)),
                               out_shardings=(shardings, opt_shardings, None))
        new_params, _, metrics = sharded_step(sharded_params, opt_state, jax.device_put(batch, data))
    np.testing.assert_allclose(float(metrics["loss"]), float(expected["loss"]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(expected_params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-6)


def test_gradient_accumulation_equals_the_whole_batch(setup):
    """4 rows as 2 microbatches of 2 (different assistant-token counts per row): the same loss,
    token count and gradients as the whole batch. SGD with lr 1 makes the update the gradient
    (Adam's first step is ±lr wherever a gradient is non-zero, however small: ill-conditioned)."""
    _, model, params, batch = setup
    labels = np.asarray(batch["labels"]).copy()
    labels[1, -6:-3] = -100  # rows now carry 6, 3, 6, 6 assistant tokens: token weighting matters
    batch = {**batch, "labels": jnp.asarray(labels)}
    phase_labels = trainable_labels(params, "instruction_tuning")
    optimizer = optax.multi_transform({"train": optax.sgd(1.0), "freeze": optax.set_to_zero()}, phase_labels)
    whole = jax.jit(functools.partial(train_step, model, optimizer, phase_labels))
    split = jax.jit(functools.partial(train_step, model, optimizer, phase_labels, microbatches=2))
    opt_state = optimizer.init(params)
    expected_params, _, expected = whole(params, opt_state, batch)
    got_params, _, got = split(params, opt_state, batch)
    assert int(got["tokens"]) == int(expected["tokens"]) == 21
    np.testing.assert_allclose(float(got["loss"]), float(expected["loss"]), rtol=1e-5)
    moved = 0
    for a, b, p in zip(jax.tree.leaves(got_params), jax.tree.leaves(expected_params), jax.tree.leaves(params)):
        grad, expected_grad = np.asarray(p) - np.asarray(a), np.asarray(p) - np.asarray(b)
        scale = np.abs(expected_grad).max()
        moved += bool(scale > 0)
        assert np.abs(grad - expected_grad).max() <= 1e-4 * scale + 1e-8  # (+ the rounding of p - grad)
    assert moved > 10
    with pytest.raises(ValueError, match="a batch of 4 does not split into 3 microbatches"):
        train_step(model, optimizer, phase_labels, params, opt_state, batch, microbatches=3)

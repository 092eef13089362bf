"""The sharded train step: each phase moves exactly the paper's subtrees, a non-finite step
changes nothing, accumulation equals the whole batch, sharded equals unsharded."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util
from jax.sharding import PartitionSpec

from omni_jax import sharding
from omni_jax.configs import omni_emotion as omni_configs
from omni_jax.modality_tokens import IGNORE
from omni_jax.models.omni_emotion import OmniEmotion
from omni_jax.sharding import make_mesh
from omni_jax.train.step import (
    learning_rate_schedule,
    make_trainer,
    merge_params,
    split_params,
    train_step,
    trainable_mask,
)
from tests.conftest import on_first_device
from tests.models.test_omni_emotion import clip_inputs, superset_params, tiny_config

# The paper (§4.4), written out: what each phase trains (parameter subtrees of the model with
# every parameter kind). Everything else, the three towers above all, stays frozen.
PAPER = {
    "audio_alignment": {"audio_projector"},  # "train the audio projector only"
    "face_alignment": {"face_encoder/projector"},  # "train the face projector only"
    # "the three projectors, frame embeddings, new token rows and the LLM"; with per-frame
    # cross-attention fusion its attention is new too, so it trains with them
    "instruction_tuning": {"multi_modal_projector", "audio_projector", "face_encoder/projector", "frame_embedding",
                           "face_cross_attention", "language_model"},
}
TOWERS = ("vision_tower", "audio_encoder", "face_encoder/backbone", "face_encoder/linear_c", "face_encoder/linear_fuse")


def train_config(phase: str, **fields) -> ml_collections.ConfigDict:
    train = omni_configs.get_config("tiny").train
    train.update({"phase": phase, "learning_rate": 1e-3, "warmup_fraction": 0.0, **fields})
    return train


def omni_batch(cfg, batch: int = 8) -> dict[str, np.ndarray]:
    """Every modality, one face absent, padded rows, assistant labels at each row's end."""
    inputs = clip_inputs(cfg, batch=batch, seed=4)
    inputs["has_face"][1] = False
    inputs["has_audio"][2] = False
    mask = np.ones_like(inputs["input_ids"])
    mask[3, -2:] = 0
    labels = np.where(np.arange(mask.shape[1]) >= mask.shape[1] - 5, inputs["input_ids"], IGNORE)
    return {**inputs, "attention_mask": mask, "labels": np.where(mask == 1, labels, IGNORE)}


@functools.cache
def one_device_trainer(phase: str):
    """Shared by the tests of a phase, so its step compiles once."""
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    trainer = make_trainer(tiny_config("frame_cross_attention"), mesh, train_config(phase), 10)
    batch = {k: jnp.asarray(v) for k, v in omni_batch(trainer.config, batch=4).items()}
    return trainer, batch


def fresh(params):
    """A copy: the step donates the state, and superset_params() is shared by the session."""
    return jax.tree.map(jnp.copy, params)


def in_subtrees(path: str, subtrees) -> bool:
    return any(path == s or path.startswith(s + "/") for s in subtrees)


@pytest.mark.parametrize("phase", sorted(PAPER))
def test_each_phase_trains_exactly_the_papers_subtrees(phase):
    """The phase's trainer holds exactly the paper's subtrees as its state, never a tower, with
    Adam moments for those leaves only; every other leaf is frozen (the step's input, not its
    output). What the step does with that state is the next test's."""
    trainer = make_trainer(tiny_config("frame_cross_attention"), make_mesh(1, 1, 1, devices=jax.devices()[:1]),
                           train_config(phase), 10)
    every = traverse_util.flatten_dict(superset_params(), sep="/")
    trained = traverse_util.flatten_dict(trainer.abstract_state["trainable"], sep="/")
    frozen = traverse_util.flatten_dict(trainer.frozen_shapes, sep="/")
    assert set(trained) == {path for path in every if in_subtrees(path, PAPER[phase])}
    assert set(trained) | set(frozen) == set(every) and not set(trained) & set(frozen)
    assert not any(in_subtrees(path, TOWERS) for path in trained)
    size = sum(np.prod(leaf.shape) for leaf in trained.values())
    moments = sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(trainer.abstract_state["opt_state"]))
    assert 2 * size <= moments <= 2 * size + 8


def test_two_steps_move_every_trained_leaf_and_no_frozen_one():
    """Phase 3's trainer (the most subtrees; a gradient does not depend on what else trains, so
    the other phases' subtrees get theirs too): after two steps every trained leaf has moved,
    every frozen one is bit-identical, and Adam's moments hold exactly the trained leaves."""
    trainer, batch = one_device_trainer("instruction_tuning")
    params = superset_params()
    state, frozen = trainer.init_state(fresh(params))
    with trainer.activate():
        for _ in range(2):
            state, metrics = trainer.step(state, frozen, batch)
    assert bool(metrics["finite"]) and int(state["step"]) == 2 and int(state["nonfinite"]) == 0
    before = traverse_util.flatten_dict(params, sep="/")
    trained = traverse_util.flatten_dict(state["trainable"], sep="/")
    after = traverse_util.flatten_dict(trainer.params(state, frozen), sep="/")
    assert set(after) == set(before)
    for path, value in before.items():
        moved = bool(np.any(np.asarray(after[path]) != np.asarray(value)))
        assert moved == (path in trained), path
    moments = sum(x.size for x in jax.tree.leaves(state["opt_state"]))
    size = sum(np.size(v) for v in trained.values())
    assert 2 * size <= moments <= 2 * size + 8


def test_a_non_finite_step_is_skipped_and_counted():
    trainer, batch = one_device_trainer("instruction_tuning")
    state, frozen = trainer.init_state(fresh(superset_params()))
    before = jax.tree.map(np.asarray, state)
    poisoned = {**batch, "input_features": batch["input_features"].at[0, 0, 0, 0].set(jnp.nan)}
    with trainer.activate():
        state, metrics = trainer.step(state, frozen, poisoned)
        assert not bool(metrics["finite"]) and int(metrics["nonfinite"]) == 1
        assert int(state["step"]) == 1 and int(state["nonfinite"]) == 1
        for a, b in zip(jax.tree.leaves(state["trainable"]) + jax.tree.leaves(state["opt_state"]),
                        jax.tree.leaves(before["trainable"]) + jax.tree.leaves(before["opt_state"])):
            np.testing.assert_array_equal(np.asarray(a), b)
        # The schedule counts applied updates: the next (good) step gets the first step's rate.
        state, metrics = trainer.step(state, frozen, batch)
    assert bool(metrics["finite"]) and int(state["nonfinite"]) == 1
    assert float(metrics["learning_rate"]) == pytest.approx(float(trainer.schedule(0)))


def test_schedule_warms_up_linearly_then_decays_as_a_cosine():
    train = train_config("instruction_tuning", warmup_fraction=0.1, final_learning_rate_fraction=0.1)
    schedule = learning_rate_schedule(train, total_steps=100)
    peak, end = 1e-3, 1e-4
    for step, expected in [(0, 0.0), (5, 0.5 * peak), (10, peak), (100, end),
                           (55, end + (peak - end) * 0.5 * (1 + np.cos(np.pi * 45 / 90)))]:
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-12), step


def padded_by_one_shard(spec, shape, mesh, fixed=()):
    """`sharding.stored_layout` as if no split dimension divided: each grows by one shard."""
    ways = [sharding.split_ways(PartitionSpec(axes), mesh) for axes in tuple(spec) + (None,) * len(shape)]
    return tuple(-(-n // w) * w + w if w > 1 else n for n, w in zip(shape, ways)), spec


def test_sharded_train_step_equals_unsharded(monkeypatch):
    """Two phase-3 steps of the model with every parameter kind on a 2×2×2 mesh and on one
    device, with SGD at lr 1 so that each step's update is its gradient: loss, gradient norm and
    every trained leaf's gradient, placed like its parameter. (Adam's update is ±lr wherever a
    gradient is non-zero: it would hide a gradient scaled wrongly across shards.) The frozen
    leaves are stored padded, as a mesh whose axes do not divide them stores them."""
    _, batch = one_device_trainer("instruction_tuning")
    monkeypatch.setattr(sharding, "stored_layout", padded_by_one_shard)
    results = []
    for mesh in (make_mesh(1, 1, 1, devices=jax.devices()[:1]), make_mesh(2, 2, 2)):
        trainer = make_trainer(tiny_config("frame_cross_attention"), mesh, train_config("instruction_tuning"), 10,
                               optimizer=optax.sgd(1.0))
        shardings = jax.tree.map(lambda s: s.sharding, merge_params(trainer.abstract_state["trainable"],
                                                                   trainer.frozen_shapes))
        params = jax.device_put(fresh(superset_params()), shardings)
        split = on_first_device(params) < sum(x.size for x in jax.tree.leaves(params)) / 2
        assert split == (mesh.size > 1)  # split over the mesh, not copied to every device
        state, frozen = trainer.init_state(params)
        padded = [a.shape != b.shape for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(trainer.frozen_shapes))]
        assert any(padded) == (mesh.size > 1)
        whole = trainer.params(state, frozen)  # padding sliced off again
        for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(params)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        with trainer.activate():
            steps = []
            for _ in range(2):
                before = jax.tree.map(np.asarray, state["trainable"])
                state, metrics = trainer.step(state, frozen, jax.device_put(batch, trainer.batch_sharding))
                for leaf, abstract in zip(jax.tree.leaves(state["trainable"]),
                                          jax.tree.leaves(trainer.abstract_state["trainable"])):
                    assert leaf.sharding.is_equivalent_to(abstract.sharding, leaf.ndim)
                grads = jax.tree.map(lambda b, a: b - np.asarray(a), before, state["trainable"])
                steps.append((float(metrics["loss"]), float(metrics["grad_norm"]), grads))
        results.append(steps)
    for (loss, norm, grads), (sharded_loss, sharded_norm, sharded_grads) in zip(*results):
        np.testing.assert_allclose([sharded_loss, sharded_norm], [loss, norm], rtol=1e-5)
        for path, g in traverse_util.flatten_dict(grads, sep="/").items():
            got = traverse_util.flatten_dict(sharded_grads, sep="/")[path]
            assert np.abs(got - g).max() <= 1e-4 * np.abs(g).max() + 2.4e-7, path  # (+ the rounding of p - g)


def test_gradient_accumulation_equals_the_whole_batch():
    """4 rows as 2 microbatches of 2 (different assistant-token counts per row): the same loss,
    token count and gradients as the whole batch, and those equal the gradients of the loss
    written out directly. SGD with lr 1 makes the update the gradient
    (Adam's first step is ±lr wherever a gradient is non-zero, however small: ill-conditioned)."""
    config = tiny_config("frame_cross_attention")
    model = OmniEmotion(config)
    batch = {k: jnp.asarray(v) for k, v in omni_batch(config, batch=4).items()}
    labels = np.asarray(batch["labels"]).copy()
    labels[1, -5:-3] = -100  # rows now carry different assistant-token counts: token weighting matters
    batch["labels"] = jnp.asarray(labels)
    params = superset_params()
    trainable, frozen = split_params(params, trainable_mask(params, "instruction_tuning"))
    optimizer, schedule = optax.sgd(1.0), optax.constant_schedule(1.0)
    zero = jnp.zeros((), jnp.int32)
    state = {"step": zero, "nonfinite": zero, "trainable": trainable, "opt_state": optimizer.init(trainable)}
    whole = jax.jit(functools.partial(train_step, model, optimizer, schedule))
    split = jax.jit(functools.partial(train_step, model, optimizer, schedule, microbatches=2))
    expected_state, expected = whole(state, frozen, batch)
    got_state, got = split(state, frozen, batch)
    assert int(got["tokens"]) == int(expected["tokens"]) == np.sum(labels[:, 1:] != -100)
    np.testing.assert_allclose(float(got["loss"]), float(expected["loss"]), rtol=1e-5)
    moved = 0
    for a, b, p in zip(jax.tree.leaves(got_state["trainable"]), jax.tree.leaves(expected_state["trainable"]),
                       jax.tree.leaves(trainable)):
        grad, expected_grad = np.asarray(p) - np.asarray(a), np.asarray(p) - np.asarray(b)
        scale = np.abs(expected_grad).max()
        moved += bool(scale > 0)
        assert np.abs(grad - expected_grad).max() <= 1e-4 * scale + 1e-8  # (+ the rounding of p - grad)
    assert moved > 10
    # The normalisation, against a reference loss differentiated directly: the mean next-token
    # cross-entropy over the assistant tokens, from the model's full logits (a gradient scaled
    # by any factor, which Adam would hide, fails here).
    targets = jnp.asarray(labels[:, 1:])

    def reference_loss(trainable):
        logits = model.apply({"params": merge_params(trainable, frozen)},
                             **{k: v for k, v in batch.items() if k != "labels"})["logits"][:, :-1]
        picked = jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.maximum(targets, 0)[..., None], -1)[..., 0]
        return -jnp.sum(jnp.where(targets != -100, picked, 0.0)) / jnp.sum(targets != -100)

    loss, reference = jax.jit(jax.value_and_grad(reference_loss))(trainable)
    np.testing.assert_allclose(float(expected["loss"]), float(loss), rtol=1e-5)
    for p, b, g in zip(jax.tree.leaves(trainable), jax.tree.leaves(expected_state["trainable"]),
                       jax.tree.leaves(reference)):
        g, p = np.asarray(g), np.asarray(p)  # (+ two roundings at the parameter's magnitude: p - g, then p - that)
        assert np.abs((p - np.asarray(b)) - g).max() <= 1e-4 * np.abs(g).max() + 2.4e-7 * np.abs(p).max()
    with pytest.raises(ValueError, match="a batch of 4 does not split into 3 microbatches"):
        train_step(model, optimizer, schedule, state, frozen, batch, microbatches=3)

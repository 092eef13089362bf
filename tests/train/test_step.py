"""The sharded train step: each phase trains exactly the paper's subtrees, a step moves exactly
those, a non-finite step changes nothing, sharded and accumulated steps equal the unsharded whole
batch, whose gradient is the mean assistant-token loss's. The one-device step compiles once for
all of them."""
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
from omni_jax.sharding import make_mesh
from omni_jax.train.step import (
    learning_rate_schedule,
    make_trainer,
    merge_params,
    split_params,
    train_step,
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


def step_batch(config) -> dict[str, jnp.ndarray]:
    """4 rows of `omni_batch` whose assistant-token counts differ (token weighting matters
    wherever the rows are split: over shards, into microbatches)."""
    batch = omni_batch(config, batch=4)
    batch["labels"][1, -5:-3] = IGNORE
    return {k: jnp.asarray(v) for k, v in batch.items()}


@functools.cache
def one_device_trainer():
    """Phase 3's step (the most subtrees: a gradient does not depend on what else trains, so
    the other phases' subtrees get theirs too) on one device, with SGD at lr 1 so that each
    step's update is its gradient (Adam's is ±lr wherever a gradient is non-zero: it would hide
    a gradient scaled wrongly); shared by the tests, so it compiles once."""
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    trainer = make_trainer(tiny_config("frame_cross_attention"), mesh, train_config("instruction_tuning"), 10,
                           optimizer=optax.sgd(1.0))
    return trainer, step_batch(trainer.config)


def gradient(trainer, state, frozen, batch):
    """One step: (the new state, its metrics, each trained leaf's update on the host: its
    gradient, under SGD at lr 1)."""
    before = jax.tree.map(np.asarray, state["trainable"])
    with trainer.activate():
        state, metrics = trainer.step(state, frozen, jax.device_put(batch, trainer.batch_sharding))
    return state, metrics, jax.tree.map(lambda b, a: b - np.asarray(a), before, state["trainable"])


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
    """After two steps every trained leaf has moved and every frozen one is bit-identical — but
    the face cross-attention's key bias: it adds the same amount to every score of a query
    (no rotary positions there), which the softmax cancels, so its gradient is exactly zero
    (Adam turned rounding noise in it into steps of ±lr)."""
    trainer, batch = one_device_trainer()
    params = superset_params()
    state, frozen = trainer.init_state(fresh(params))
    for _ in range(2):
        state, metrics, _ = gradient(trainer, state, frozen, batch)
    assert bool(metrics["finite"]) and int(state["step"]) == 2 and int(state["nonfinite"]) == 0
    before = traverse_util.flatten_dict(params, sep="/")
    trained = traverse_util.flatten_dict(state["trainable"], sep="/")
    after = traverse_util.flatten_dict(trainer.params(state, frozen), sep="/")
    assert set(after) == set(before)
    unmoved = {path for path, value in before.items() if np.array_equal(np.asarray(after[path]), np.asarray(value))}
    assert unmoved == set(before) - set(trained) | {"face_cross_attention/attention/k_proj/bias"}


def test_a_non_finite_step_is_skipped_and_counted():
    trainer, batch = one_device_trainer()
    state, frozen = trainer.init_state(fresh(superset_params()))
    before = jax.tree.map(np.asarray, state)
    poisoned = {**batch, "input_features": batch["input_features"].at[0, 0, 0, 0].set(jnp.nan)}
    with trainer.activate():
        state, metrics = trainer.step(state, frozen, jax.device_put(poisoned, trainer.batch_sharding))
        assert not bool(metrics["finite"]) and int(metrics["nonfinite"]) == 1
        assert int(state["step"]) == 1 and int(state["nonfinite"]) == 1
        for a, b in zip(jax.tree.leaves(state["trainable"]) + jax.tree.leaves(state["opt_state"]),
                        jax.tree.leaves(before["trainable"]) + jax.tree.leaves(before["opt_state"])):
            np.testing.assert_array_equal(np.asarray(a), b)
        # The schedule counts applied updates: the next (good) step gets the first step's rate.
        state, metrics = trainer.step(state, frozen, jax.device_put(batch, trainer.batch_sharding))
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


def test_sharded_accumulated_steps_equal_the_unsharded_whole_batch(monkeypatch):
    """Two phase-3 steps on a 2×2×2 mesh, each batch of 4 rows as 2 microbatches of 2, against
    the one-device step on the whole batch: loss, assistant-token count, gradient norm and every
    trained leaf's gradient, placed like its parameter. The frozen leaves are stored padded, as a
    mesh whose axes do not divide them stores them. (Sharding and accumulation each change how
    the rows' tokens are counted and summed: either done wrong fails here; the next test pins
    the gradient itself.)"""
    reference, batch = one_device_trainer()
    monkeypatch.setattr(sharding, "stored_layout", padded_by_one_shard)
    sharded = make_trainer(tiny_config("frame_cross_attention"), make_mesh(2, 2, 2),
                           train_config("instruction_tuning", microbatches=2), 10, optimizer=optax.sgd(1.0))
    results = []
    for trainer in (reference, sharded):
        shardings = jax.tree.map(lambda s: s.sharding, merge_params(trainer.abstract_state["trainable"],
                                                                   trainer.frozen_shapes))
        params = jax.device_put(fresh(superset_params()), shardings)
        split = on_first_device(params) < sum(x.size for x in jax.tree.leaves(params)) / 2
        assert split == (trainer is sharded)  # split over the mesh, not copied to every device
        state, frozen = trainer.init_state(params)
        padded = [a.shape != b.shape for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(trainer.frozen_shapes))]
        assert any(padded) == (trainer is sharded)
        whole = trainer.params(state, frozen)  # padding sliced off again
        for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(params)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        steps = []
        for _ in range(2):
            state, metrics, grads = gradient(trainer, state, frozen, batch)
            for leaf, abstract in zip(jax.tree.leaves(state["trainable"]),
                                      jax.tree.leaves(trainer.abstract_state["trainable"])):
                assert leaf.sharding.is_equivalent_to(abstract.sharding, leaf.ndim)
            steps.append((float(metrics["loss"]), float(metrics["grad_norm"]), int(metrics["tokens"]), grads))
        results.append(steps)
    assert results[0][0][2] == np.sum(np.asarray(batch["labels"])[:, 1:] != IGNORE)
    for (loss, norm, tokens, grads), (sharded_loss, sharded_norm, sharded_tokens, sharded_grads) in zip(*results):
        np.testing.assert_allclose([sharded_loss, sharded_norm], [loss, norm], rtol=1e-5)
        assert sharded_tokens == tokens
        moved = 0
        for path, g in traverse_util.flatten_dict(grads, sep="/").items():
            got = traverse_util.flatten_dict(sharded_grads, sep="/")[path]
            moved += bool(np.abs(g).max() > 0)
            assert np.abs(got - g).max() <= 1e-4 * np.abs(g).max() + 2.4e-7, path  # (+ the rounding of p - g)
        assert moved > 10


def test_the_gradient_is_the_mean_assistant_token_loss_differentiated():
    """The step's gradient against a reference loss differentiated directly: the mean next-token
    cross-entropy over the assistant tokens, from the model's full logits (a gradient scaled by
    any factor, which Adam would hide, fails here)."""
    trainer, batch = one_device_trainer()
    params = superset_params()
    trainable, frozen_params = split_params(params, trainer.mask)
    state, frozen = trainer.init_state(fresh(params))
    _, metrics, grads = gradient(trainer, state, frozen, batch)
    targets = batch["labels"][:, 1:]

    def reference_loss(trainable):
        logits = trainer.model.apply({"params": merge_params(trainable, frozen_params)},
                                     **{k: v for k, v in batch.items() if k != "labels"})["logits"][:, :-1]
        picked = jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.maximum(targets, 0)[..., None], -1)[..., 0]
        return -jnp.sum(jnp.where(targets != IGNORE, picked, 0.0)) / jnp.sum(targets != IGNORE)

    loss, reference = jax.jit(jax.value_and_grad(reference_loss))(trainable)
    np.testing.assert_allclose(float(metrics["loss"]), float(loss), rtol=1e-5)
    for p, got, g in zip(jax.tree.leaves(trainable), jax.tree.leaves(grads), jax.tree.leaves(reference)):
        g, p = np.asarray(g), np.asarray(p)  # (+ two roundings at the parameter's magnitude: p - g, then p - that)
        assert np.abs(got - g).max() <= 1e-4 * np.abs(g).max() + 2.4e-7 * np.abs(p).max()


def test_a_batch_that_does_not_split_into_the_microbatches_is_refused():
    trainer, batch = one_device_trainer()
    state, frozen = trainer.init_state(fresh(superset_params()))
    with pytest.raises(ValueError, match="a batch of 4 does not split into 3 microbatches"):
        train_step(trainer.model, trainer.optimizer, trainer.schedule, state, frozen, batch, microbatches=3)

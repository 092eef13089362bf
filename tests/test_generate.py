"""Sampling in `generate`: the filters equal transformers' warpers, draws are seeded and do not
depend on the sharding, stop tokens end rows. (Greedy parity with transformers' `generate`:
tests/models/test_qwen2.py and test_llava_onevision.py.)"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.sharding import NamedSharding, PartitionSpec

import omni_jax
from omni_jax.generate import filter_logits, generate
from omni_jax.sharding import activate, make_mesh


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 0, 1.0), (1.0, 5, 1.0), (1.3, 0, 0.8), (0.9, 20, 0.5)])
def test_filters_equal_transformers_warpers(temperature, top_k, top_p):
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = np.random.RandomState(0).randn(4, 64).astype(np.float32) * 3
    ref = torch.from_numpy(logits)
    for warper in [TemperatureLogitsWarper(temperature)] + ([TopKLogitsWarper(top_k)] if top_k else []) + (
            [TopPLogitsWarper(top_p)] if top_p < 1 else []):
        ref = warper(None, ref)
    ours = np.asarray(filter_logits(jnp.asarray(logits), temperature, top_k, top_p))
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(ref.numpy()))
    kept = ~np.isinf(ours)
    np.testing.assert_allclose(ours[kept], ref.numpy()[kept], rtol=1e-6)
    assert 0 < kept.sum(axis=1).min() and (not top_k or kept.sum(axis=1).max() <= top_k)


def _prompt(vocab, seed=0):
    ids = np.random.RandomState(seed).randint(0, vocab, (8, 7)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[3, :2], ids[3, :2] = 0, 0
    return jnp.asarray(ids), jnp.asarray(mask)


def test_sampling_is_seeded_and_top_k_1_is_greedy(qwen2_tied):
    hf, root = qwen2_tied
    model, params = omni_jax.load_pretrained(root / "ox")
    ids, mask = _prompt(hf.config.vocab_size)
    run = lambda **kw: np.asarray(generate(model, params, ids, mask, max_new_tokens=8, **kw))
    greedy = run()
    np.testing.assert_array_equal(run(temperature=1.0, top_k=1, rng=jax.random.key(3)), greedy)
    first = run(temperature=2.0, rng=jax.random.key(1))
    np.testing.assert_array_equal(run(temperature=2.0, rng=jax.random.key(1)), first)
    assert (run(temperature=2.0, rng=jax.random.key(2)) != first).any()
    assert (first != greedy).any()
    with pytest.raises(ValueError, match="rng"):
        run(temperature=1.0)


def test_sampled_tokens_do_not_depend_on_the_sharding(qwen2_tied):
    hf, root = qwen2_tied
    model, params = omni_jax.load_pretrained(root / "ox")
    ids, mask = _prompt(hf.config.vocab_size, seed=1)
    kwargs = dict(max_new_tokens=6, temperature=1.5, top_p=0.9, rng=jax.random.key(7))
    single = np.asarray(generate(model, params, ids, mask, **kwargs))
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    _, sharded_params = omni_jax.load_pretrained(root / "ox", mesh=mesh)
    rows = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    with activate(mesh):
        sharded = generate(model, sharded_params, jax.device_put(ids, rows), jax.device_put(mask, rows), **kwargs)
    assert len(sharded.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(sharded), single)


def test_any_stop_token_ends_a_row(qwen2_tied):
    hf, root = qwen2_tied
    model, params = omni_jax.load_pretrained(root / "ox")
    ids, mask = _prompt(hf.config.vocab_size, seed=2)
    free = np.asarray(generate(model, params, ids, mask, max_new_tokens=6))
    stops = (int(free[0, 1]), int(free[1, 2]))
    stopped = np.asarray(generate(model, params, ids, mask, max_new_tokens=6, eos_token_ids=stops, pad_token_id=-1))
    for row, tokens in enumerate(free):
        hits = np.flatnonzero(np.isin(tokens, stops))
        end = hits[0] + 1 if len(hits) else len(tokens)
        np.testing.assert_array_equal(stopped[row, :end], tokens[:end])
        assert (stopped[row, end:] == -1).all()

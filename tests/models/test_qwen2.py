"""Qwen2ForCausalLM parity with transformers through the real converter."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import omni_jax
from omni_jax.generate import generate, init_cache
from omni_jax.models.qwen2 import positions_from_mask
from tests.conftest import RTOL, rel_err


def _ids(batch, length, vocab, seed=0):
    return np.random.RandomState(seed).randint(0, vocab, (batch, length))


@pytest.mark.parametrize("fixture", ["qwen2_untied", "qwen2_tied"])
def test_logits_and_hidden_states_match_transformers(fixture, request):
    hf, root = request.getfixturevalue(fixture)
    model, params = omni_jax.load_pretrained(root / "ox")
    ids = _ids(2, 17, hf.config.vocab_size)
    with torch.no_grad():
        ref = hf(torch.tensor(ids), output_hidden_states=True)
    out = model.apply({"params": params}, input_ids=jnp.asarray(ids), output_hidden_states=True)
    assert rel_err(out["logits"], ref.logits) < RTOL
    assert len(out["hidden_states"]) == len(ref.hidden_states)
    for ours, theirs in zip(out["hidden_states"], ref.hidden_states):
        assert rel_err(ours, theirs) < RTOL


def test_rope_theta_comes_from_the_checkpoint(tmp_path):
    """Qwen2-7B's θ = 1e6, not the default 1e4: at positions up to 120 the two rotate the
    queries and keys far apart, so a model that ignored the checkpoint's θ would not match."""
    from transformers import Qwen2ForCausalLM

    from tests.conftest import build_hf, convert, tiny_qwen2_config

    hf = build_hf(Qwen2ForCausalLM, tiny_qwen2_config(rope_theta=1e6), tmp_path / "hf")
    assert hf.config.rope_parameters["rope_theta"] == 1e6
    convert(tmp_path / "hf", tmp_path / "ox")
    model, params = omni_jax.load_pretrained(tmp_path / "ox")
    ids = _ids(1, 120, hf.config.vocab_size, seed=9)
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits
    assert rel_err(model.apply({"params": params}, input_ids=jnp.asarray(ids))["logits"], ref) < RTOL


def test_tied_checkpoint_has_no_head(qwen2_tied):
    _, root = qwen2_tied
    _, params = omni_jax.load_pretrained(root / "ox")
    assert "lm_head" not in params


def test_left_padding_equals_unpadded(qwen2_untied):
    """Positions come from the attention mask: a left-padded row equals the same row alone,
    and equals transformers given the same position ids."""
    hf, root = qwen2_untied
    model, params = omni_jax.load_pretrained(root / "ox")
    ids = _ids(2, 12, hf.config.vocab_size, seed=1)
    mask = np.ones_like(ids)
    mask[1, :5] = 0
    out = model.apply({"params": params}, input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask))["logits"]
    alone = model.apply({"params": params}, input_ids=jnp.asarray(ids[1:, 5:]))["logits"]
    assert rel_err(out[1, 5:], alone[0]) < RTOL
    positions = np.clip(mask.cumsum(-1) - 1, 0, None)
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions)).logits
    assert rel_err(np.asarray(out)[mask == 1], ref.numpy()[mask == 1]) < RTOL


def test_packed_row_equals_its_examples_alone(qwen2_untied):
    """attention_mask as segment ids: each packed example sees only itself and starts at position 0."""
    hf, root = qwen2_untied
    model, params = omni_jax.load_pretrained(root / "ox")
    ids = _ids(1, 16, hf.config.vocab_size, seed=2)
    segments = np.array([[1] * 5 + [2] * 7 + [3] * 2 + [0] * 2])
    np.testing.assert_array_equal(positions_from_mask(jnp.asarray(segments)),
                                  [[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6, 0, 1, 13, 13]])
    packed = model.apply({"params": params}, input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(segments))["logits"]
    for start, stop in [(0, 5), (5, 12), (12, 14)]:
        alone = model.apply({"params": params}, input_ids=jnp.asarray(ids[:, start:stop]))["logits"]
        assert rel_err(packed[:, start:stop], alone) < RTOL


def _decoded_logits(model, params, ids, mask, prompt, prefill):
    """Logits of `ids` fed through the KV cache: the first `prompt` tokens at once, then one by one."""
    cache = init_cache(model, ids.shape[0], ids.shape[1])
    step = jax.jit(lambda cache, tokens, prefill: model.apply(
        {"params": params, "cache": cache}, input_ids=tokens, attention_mask=jnp.asarray(mask), decode=True,
        prefill=prefill, mutable=["cache"]), static_argnums=2)
    out, variables = step(cache, jnp.asarray(ids[:, :prompt]), prefill)
    logits = [out["logits"]]
    for t in range(prompt, ids.shape[1]):
        out, variables = step(variables["cache"], jnp.asarray(ids[:, t:t + 1]), False)
        logits.append(out["logits"])
    return np.concatenate([np.asarray(x) for x in logits], axis=1)


@pytest.mark.parametrize("prefill", [False, True])
def test_kv_cache_decoding_equals_full_forward(qwen2_untied, prefill):
    """The first call fills the cache as any step (attending over the whole cache) or as a
    prefill (over its own keys, causal from the start): the same logits either way."""
    hf, root = qwen2_untied
    model, params = omni_jax.load_pretrained(root / "ox")
    ids = _ids(2, 14, hf.config.vocab_size, seed=2)
    mask = np.ones_like(ids)
    mask[0, :3] = 0
    full = model.apply({"params": params}, input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask))["logits"]
    cached = _decoded_logits(model, params, ids, mask, 6, prefill)
    real = mask == 1
    assert rel_err(cached[real], np.asarray(full)[real]) < RTOL


def test_prefill_runs_the_attention_kernel(qwen2_untied):
    """attention_impl="splash" (interpret mode): a 128-token left-padded prefill runs the kernel
    and then decoding continues from the cache it wrote, as the XLA model's full forward."""
    hf, root = qwen2_untied
    xla_model, params = omni_jax.load_pretrained(root / "ox", attention_impl="xla")
    splash_model, _ = omni_jax.load_pretrained(root / "ox", attention_impl="splash")
    ids = _ids(2, 130, hf.config.vocab_size, seed=4)
    mask = np.ones_like(ids)
    mask[1, :10] = 0
    full = xla_model.apply({"params": params}, input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask))["logits"]
    cache = init_cache(splash_model, 2, 130)
    prefill = jax.make_jaxpr(lambda c: splash_model.apply({"params": params, "cache": c}, input_ids=ids[:, :128],
                                                          attention_mask=mask, decode=True, prefill=True,
                                                          mutable=["cache"]))(cache)
    assert "pallas_call" in str(prefill)
    cached = _decoded_logits(splash_model, params, ids, mask, 128, prefill=True)
    real = mask == 1
    assert rel_err(cached[real], np.asarray(full)[real]) < RTOL


def test_generate_equals_transformers(qwen2_tied):
    hf, root = qwen2_tied
    model, params = omni_jax.load_pretrained(root / "ox")
    ids = _ids(2, 9, hf.config.vocab_size, seed=3)
    mask = np.ones_like(ids)
    mask[1, :4] = 0
    ids[1, :4] = 0
    with torch.no_grad():
        ref = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=10, min_new_tokens=10,
                          do_sample=False, pad_token_id=0)[:, ids.shape[1]:].numpy()
    ours = np.asarray(generate(model, params, jnp.asarray(ids), jnp.asarray(mask), max_new_tokens=10))
    np.testing.assert_array_equal(ours, ref)


def test_generation_stops_at_eos_and_pads(qwen2_tied):
    hf, root = qwen2_tied
    model, params = omni_jax.load_pretrained(root / "ox")
    ids = jnp.asarray(_ids(1, 5, hf.config.vocab_size, seed=4))
    free = np.asarray(generate(model, params, ids, max_new_tokens=6))
    eos = int(free[0, 2])
    stopped = np.asarray(generate(model, params, ids, max_new_tokens=6, eos_token_ids=(eos,), pad_token_id=-1))
    first = list(free[0]).index(eos)
    np.testing.assert_array_equal(stopped[0, :first + 1], free[0, :first + 1])
    assert (stopped[0, first + 1:] == -1).all()


def test_bfloat16_forward_within_bound(qwen2_untied):
    """bf16 parameters and compute: logits within 2e-2 of the float32 reference (relative to
    max|ref|; measured ≤ 0.9e-2): bf16 has 8 mantissa bits, and each layer adds a few ulps."""
    hf, root = qwen2_untied
    model, params = omni_jax.load_pretrained(root / "ox", dtype="bfloat16")
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    ids = _ids(2, 16, hf.config.vocab_size, seed=5)
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    out = model.apply({"params": params}, input_ids=jnp.asarray(ids))["logits"]
    assert out.dtype == jnp.float32
    assert rel_err(out, ref) < 2e-2


def test_inputs_embeds_equal_input_ids(qwen2_untied):
    _, root = qwen2_untied
    model, params = omni_jax.load_pretrained(root / "ox")
    ids = jnp.asarray(_ids(1, 8, 160, seed=6))
    embeds = model.apply({"params": params}, ids, method=lambda m, x: m.embed(x))
    a = model.apply({"params": params}, input_ids=ids)["logits"]
    b = model.apply({"params": params}, inputs_embeds=embeds)["logits"]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_remat_and_scan_give_same_gradients(qwen2_untied):
    """Rematerialisation changes memory, never numbers."""
    import ml_collections

    from omni_jax.models.qwen2 import Qwen2ForCausalLM

    _, root = qwen2_untied
    model, params = omni_jax.load_pretrained(root / "ox")
    ids = jnp.asarray(_ids(2, 8, 160, seed=7))

    def loss(m, p):
        return jnp.mean(jax.nn.log_softmax(m.apply({"params": p}, input_ids=ids)["logits"])[..., 0])

    base = jax.grad(lambda p: loss(model, p))(params)
    for policy in ("full", "dots"):
        cfg = ml_collections.FrozenConfigDict({**model.config.as_configdict().to_dict(), "remat_policy": policy})
        grads = jax.grad(lambda p: loss(Qwen2ForCausalLM(cfg), p))(params)
        for g, b in zip(jax.tree.leaves(grads), jax.tree.leaves(base)):
            np.testing.assert_allclose(np.asarray(g), np.asarray(b), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("fixture", ["qwen2_untied", "llava"])
def test_unrolled_layers_equal_scanned(fixture, request):
    """load_pretrained(scan_layers=False) unstacks the stored layers; numbers do not change."""
    _, root = request.getfixturevalue(fixture)
    model, params = omni_jax.load_pretrained(root / "ox")
    unrolled, unrolled_params = omni_jax.load_pretrained(root / "ox", scan_layers=False)
    lm = unrolled_params["model"] if fixture == "qwen2_untied" else unrolled_params["language_model"]["model"]
    assert "layers" not in lm and sorted(k for k in lm if k.startswith("layers_")) == ["layers_0", "layers_1",
                                                                                       "layers_2"]
    ids = jnp.asarray(_ids(2, 9, 140, seed=8))
    mask = jnp.asarray(np.array([[0, 0] + [1] * 7, [1] * 9]))
    a = generate(model, params, ids, mask, max_new_tokens=5)
    b = generate(unrolled, unrolled_params, ids, mask, max_new_tokens=5)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    la = model.apply({"params": params}, input_ids=ids, attention_mask=mask)["logits"]
    lb = unrolled.apply({"params": unrolled_params}, input_ids=ids, attention_mask=mask)["logits"]
    assert rel_err(lb, la) < 1e-6


def test_splash_attention_gives_the_same_loss_and_gradients(qwen2_untied):
    """attention_impl="splash" (Pallas' interpret mode on the CPU) through the model: packed and
    padded rows of 128 tokens (its tile), loss and gradients as with the XLA path."""
    _, root = qwen2_untied
    segments = np.zeros((2, 128), np.int32)
    segments[0, :70], segments[0, 70:120] = 1, 2
    segments[1, :100] = 1
    ids = jnp.asarray(_ids(2, 128, 160, seed=8))

    def loss(model, params):
        log_probs = jax.nn.log_softmax(model.apply({"params": params}, input_ids=ids,
                                                   attention_mask=jnp.asarray(segments))["logits"])
        return jnp.sum(jnp.where(segments[..., None] != 0, log_probs, 0.0)[..., :8])

    results = []
    for implementation in ("xla", "splash"):
        model, params = omni_jax.load_pretrained(root / "ox", attention_impl=implementation)
        assert model.config.attention_impl == implementation
        kernels = str(jax.make_jaxpr(lambda p: loss(model, p))(params)).count("pallas_call")
        assert kernels == (1 if implementation == "splash" else 0)  # once, in the scanned layer
        results.append(jax.value_and_grad(lambda p: loss(model, p))(params))
    (xla_loss, xla_grads), (splash_loss, splash_grads) = results
    assert abs(float(splash_loss) - float(xla_loss)) < 1e-5 * abs(float(xla_loss))
    for ours, ref in zip(jax.tree.leaves(splash_grads), jax.tree.leaves(xla_grads)):
        assert rel_err(ours, ref) < 1e-4

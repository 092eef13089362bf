"""The FLOP counter (omni_jax.flops): exact on small programs whose count is known, the train
step's the same whichever attention kernel runs."""
import jax
import jax.extend as jex
import jax.numpy as jnp
import pytest
from jax._src.cudnn import fused_attention_stablehlo

from omni_jax.configs import omni_emotion, qwen2
from omni_jax.flops import Flops, attention_flops, count_flops
from omni_jax.layers.attention import dot_product_attention
from omni_jax.models.qwen2 import Qwen2ForCausalLM
from omni_jax.sharding import make_mesh
from omni_jax.train.plan import abstract_batch
from omni_jax.train.step import make_trainer, training_model_config


@pytest.fixture
def traceable_cudnn(monkeypatch):
    """cuDNN's path traced on the CPU (counted, never run): a GPU backend and a cuDNN version
    for the kernel's checks at trace time."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(fused_attention_stablehlo, "check_cudnn_version", lambda: 91000)


def test_scans_remat_and_convolutions():
    """A scanned, rematerialised layer: 3 forward products, then per step a recomputed forward
    (hardware only) and two backward products; a convolution counts as its matrix product."""
    def loss(w, x):
        step = jax.checkpoint(lambda c, _: (jnp.tanh(c @ w), None))
        return jax.lax.scan(step, x, None, length=3)[0].sum()

    product = 2 * 4 * 8 * 8  # [4, 8] @ [8, 8]
    jaxpr = jax.make_jaxpr(jax.value_and_grad(loss))(jnp.ones((8, 8)), jnp.ones((4, 8))).jaxpr
    assert count_flops(jaxpr) == Flops(model=3 * product + 3 * 2 * product, hardware=3 * product + 3 * 3 * product)
    conv = jax.make_jaxpr(lambda x, k: jax.lax.conv_general_dilated(x, k, (1,), "VALID", dimension_numbers=(
        "NWC", "WIO", "NWC")))(jnp.ones((2, 10, 3)), jnp.ones((5, 3, 4))).jaxpr
    assert count_flops(conv) == Flops(*[2 * (2 * 6 * 4) * (5 * 3)] * 2)  # out [2, 6, 4], each a 15-term dot product


@pytest.mark.parametrize("differentiated", ["query", "keys", "all"])
def test_attention_backward_counts_the_products_its_gradients_need(differentiated):
    """Non-causal, so the XLA path computes exactly what is counted: the unit's analytic count
    equals its products' — forward QKᵀ, PV; backward dP and dQ (queries), dV, dP, dK (keys and
    values from one source), all four."""
    b, t, s, h, kv_heads, d = 2, 16, 24, 4, 2, 8
    forward = 2 * (2 * b * t * s * h * d)
    backward = {"query": 2, "keys": 3, "all": 4}[differentiated] * (2 * b * t * s * h * d)

    def loss(scale, q, k):
        q = q * scale if differentiated in ("query", "all") else q
        k = k * scale if differentiated in ("keys", "all") else k
        return dot_product_attention(q, k, 2 * k, None, implementation="xla").sum()

    jaxpr = jax.make_jaxpr(jax.grad(loss))(1.0, jnp.ones((b, t, h, d)), jnp.ones((b, s, kv_heads, d))).jaxpr
    assert count_flops(jaxpr) == Flops(forward + backward, forward + backward)
    assert attention_flops((b, t, h, d), (b, t), causal=True) == 2 * b * t * t * h * d  # the masked half not counted


def _kernels(jaxpr: jex.core.Jaxpr) -> set[str]:
    """The fused attention kernels `jaxpr` calls (to show a count's kernel really ran)."""
    names = {eqn.primitive.name for eqn in jaxpr.eqns} & {"pallas_call", "dot_product_attention_fwd_wrapper"}
    return names.union(*(_kernels(sub) for eqn in jaxpr.eqns for sub in jex.core.jaxprs_in_params(eqn.params)))


KERNELS = {"xla": set(), "splash": {"pallas_call"}, "cudnn": {"dot_product_attention_fwd_wrapper"}}


def _lm_flops(impl: str, remat: str, frozen: bool) -> Flops:
    """The tiny Qwen2's training FLOPs at batch 2 × 128: every parameter differentiated, or
    (frozen) the input embeddings only, as phase 1 differentiates the LM's audio inputs."""
    cfg = qwen2.get_config("tiny")
    cfg.attention_impl, cfg.remat_policy = impl, remat
    model = Qwen2ForCausalLM(cfg)
    embeds = jax.ShapeDtypeStruct((2, 128, cfg.hidden_size), jnp.bfloat16)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), inputs_embeds=jnp.zeros(embeds.shape)))["params"]
    loss = lambda p, x: jnp.mean(jax.nn.log_softmax(model.apply({"params": p}, inputs_embeds=x)["logits"]))
    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=1 if frozen else 0))(params, embeds).jaxpr
    assert _kernels(jaxpr) == KERNELS[impl]
    return count_flops(jaxpr)


def test_a_language_model_step_equals_its_hand_count(traceable_cudnn):
    """Qwen2 tiny (embed 64, mlp 96, 3 layers, 4 heads of 16, 2 KV heads, vocab 160), batch 2 ×
    128 tokens, written out: the same under every kernel; trained, 3 × the forward; frozen
    between the loss and its inputs, the dense layers' forward and input gradients (2 ×) and
    attention's forward and full backward (3 ×); the hardware FLOPs per remat policy."""
    tokens = 2 * 128
    projections = 2 * tokens * (64 * 4 * 16 + 2 * (64 * 2 * 16) + 4 * 16 * 64)  # q, k and v, o
    gate_up, down = 2 * tokens * 2 * (64 * 96), 2 * tokens * 96 * 64
    attention = 4 * 2 * 128 * 128 * 4 * 16 / 2  # QKᵀ and PV, causal: half
    layer = projections + gate_up + down + attention
    head = 2 * tokens * 64 * 160
    forward = 3 * layer + head
    # remat "full": the backward pass recomputes each layer's forward but for its last product
    # (nothing in the layer's backward reads down_proj's output, so JAX leaves it out)
    recomputed = 3 * (layer - down)
    for impl in ("xla", "splash", "cudnn"):
        assert _lm_flops(impl, "full", frozen=False) == Flops(3 * forward, 3 * forward + recomputed)
    # "dots_no_batch" saves the dense layers' products, so only attention is recomputed; "dots"
    # saves the XLA path's attention products too, but not a kernel's
    assert _lm_flops("xla", "dots_no_batch", frozen=False) == Flops(3 * forward, 3 * forward + 3 * attention)
    assert _lm_flops("xla", "dots", frozen=False) == Flops(3 * forward, 3 * forward)
    assert _lm_flops("splash", "dots", frozen=False) == Flops(3 * forward, 3 * forward + 3 * attention)
    assert _lm_flops("xla", "none", frozen=True) == Flops(
        *[2 * (3 * (layer - attention) + head) + 3 * 3 * attention] * 2
    )


def test_the_train_step_counts_the_same_whichever_kernel_runs(traceable_cudnn):
    """The tiny Omni-Emotion's phase-3 step in bf16, batch 2 × 128 (the towers' attentions, the
    LM's, cuDNN's custom calls, splash's Pallas kernels): one count; the model FLOPs the same
    without remat, the hardware FLOPs lower (only the loss chunks are recomputed then)."""
    cfg = omni_emotion.get_config("tiny")
    cfg.train.compute_dtype = "bfloat16"  # cuDNN's kernel is half precision
    mesh, inputs = make_mesh(1, 1, 1, devices=jax.devices()[:1]), abstract_batch(cfg, 2, 128)

    def step_flops(impl: str, remat: str) -> Flops:
        cfg.train.attention_impl, cfg.train.remat = impl, remat
        trainer = make_trainer(training_model_config(cfg), mesh, cfg.train, 10)
        with trainer.activate():
            jaxpr = trainer.step.trace(trainer.abstract_state, trainer.abstract_frozen, inputs).jaxpr.jaxpr
        assert _kernels(jaxpr) == KERNELS[impl]
        return count_flops(jaxpr)

    xla = step_flops("xla", "full")
    assert step_flops("splash", "full") == xla and step_flops("cudnn", "full") == xla
    unrematerialised = step_flops("xla", "none")
    assert unrematerialised.model == xla.model and xla.model < unrematerialised.hardware < xla.hardware

"""The token embedding sharded on the test meshes: lookup, tied head and their gradients equal
the unsharded ones, and the partitioner never falls back to replicating the table. The layers'
products in bf16: bf16 operands, a float32 result on the CPU, rounded once."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from omni_jax import sharding
from omni_jax.layers import Conv, DenseGeneral, Embed
from tests.conftest import rel_err
from tests.test_sharding import MESHES

VOCAB, WIDTH, BATCH, LENGTH = 96, 32, 8, 6


def _loss(embed, params, ids, targets):
    hidden = embed.apply({"params": params}, ids)
    logits = embed.apply({"params": params}, jnp.tanh(hidden), method=Embed.attend)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


@pytest.fixture(scope="module")
def unsharded():
    embed = Embed(VOCAB, WIDTH)
    rng = np.random.default_rng(0)
    ids, targets = (rng.integers(0, VOCAB, (BATCH, LENGTH)) for _ in range(2))
    boxed = embed.init(jax.random.key(0), jnp.asarray(ids))["params"]
    params = nn.unbox(boxed)
    loss, grads = jax.value_and_grad(lambda p: _loss(embed, p, ids, targets))(params)
    return embed, boxed, params, ids, targets, loss, grads


@pytest.mark.parametrize("data,fsdp,tensor", MESHES)
def test_sharded_embedding_and_its_gradient_equal_unsharded(unsharded, data, fsdp, tensor, capfd):
    embed, boxed, params, ids, targets, loss, grads = unsharded
    mesh = sharding.make_mesh(data, fsdp, tensor)
    shardings = sharding.param_shardings(jax.eval_shape(lambda: boxed), mesh)
    placed = jax.device_put(params, shardings)
    batch = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    with sharding.activate(mesh):
        step = jax.jit(jax.value_and_grad(lambda p, i, t: _loss(embed, p, i, t)), out_shardings=(None, shardings))
        sharded_loss, sharded_grads = step(placed, jax.device_put(ids, batch), jax.device_put(targets, batch))
    assert rel_err(sharded_loss, loss) < 1e-6
    assert rel_err(sharded_grads["embedding"], grads["embedding"]) < 1e-6
    assert "Involuntary full rematerialization" not in capfd.readouterr().err


# bf16 compute: the products take bf16 operands and return float32 on the CPU (what sends them
# to YNNPACK's bf16 kernels instead of a float32 product of converted operands), rounded to bf16
# once, after the bias.

def _products(jaxpr):
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
            yield eqn
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _products(sub)


@pytest.mark.parametrize("layer,x", [
    (DenseGeneral((4, 8), ("embed", "heads", "head_dim"), use_bias=True), jnp.ones((2, 5, 16))),
    (Conv(8, (3, 3), (None, None, "embed", "mlp"), padding=(1, 1)), jnp.ones((2, 6, 6, 5))),
    (Embed(VOCAB, WIDTH), jnp.ones((2, 5, WIDTH))),
])
def test_bf16_layers_multiply_bf16_into_float32_once(layer, x):
    for name, dtype in (("dtype", jnp.bfloat16), ("param_dtype", jnp.float32)):
        layer = layer.clone(**{name: dtype})
    method = Embed.attend if isinstance(layer, Embed) else None
    params = layer.init(jax.random.key(0), jnp.ones((2, 5), jnp.int32) if method else x)
    params = jax.tree.map(lambda p: jax.random.normal(jax.random.key(1), p.shape, p.dtype), params)
    apply = lambda p, x: layer.apply(p, x, method=method)
    eqns = list(_products(jax.make_jaxpr(apply)(params, x).jaxpr))
    assert eqns and all(e.invars[0].aval.dtype == e.invars[1].aval.dtype == jnp.bfloat16 for e in eqns)
    assert all(e.outvars[0].aval.dtype == jnp.float32 for e in eqns)
    out = apply(params, x)
    assert out.dtype == jnp.bfloat16
    # equals the float32 layer on bf16-rounded parameters and inputs, rounded once
    rounded = jax.tree.map(lambda p: p.astype(jnp.bfloat16).astype(jnp.float32), params)
    ref = layer.clone(dtype=jnp.float32).apply(rounded, x.astype(jnp.bfloat16).astype(jnp.float32), method=method)
    assert rel_err(out, ref) < 2 ** -8


@pytest.mark.parametrize(
    "groups,inputs,features,stride", [(1, 3, 8, 2), (16, 16, 16, 1), (16, 16, 16, 2), (1, 1, 4, 1)]
)
def test_shifted_sums_equal_the_convolution(groups, inputs, features, stride):
    """The CPU's paths for depthwise and few-input 3×3 convolutions (sums of shifted copies) and
    for 1×1 ones (a matrix product) equal XLA's convolution; in bf16 they sum in float32."""
    x = jax.random.normal(jax.random.key(0), (2, 9, 11, inputs))
    for kernel_size, padding in (((3, 3), (1, 1)), ((1, 1), None)):
        layer = Conv(features, kernel_size, (None, None, None, "mlp"), strides=(stride, stride), padding=padding,
                     groups=groups)
        params = nn.unbox(layer.init(jax.random.key(1), x))
        params = jax.tree.map(lambda p: jax.random.normal(jax.random.key(2), p.shape), params)
        kernel, bias = params["params"]["kernel"], params["params"]["bias"]
        expected = jax.lax.conv_general_dilated(x, kernel, (stride, stride), [(p, p) for p in (padding or (0, 0))],
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                                feature_group_count=groups) + bias
        np.testing.assert_allclose(layer.apply(params, x), expected, rtol=1e-5, atol=1e-5)
        bf16 = layer.clone(dtype=jnp.bfloat16).apply(params, x)
        assert bf16.dtype == jnp.bfloat16
        np.testing.assert_allclose(bf16.astype(np.float32), expected, rtol=0.05, atol=0.1)

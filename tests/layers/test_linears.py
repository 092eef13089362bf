"""The token embedding sharded on the test meshes: lookup, tied head and their gradients equal
the unsharded ones, and the partitioner never falls back to replicating the table."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from omni_jax import sharding
from omni_jax.layers import Embed
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

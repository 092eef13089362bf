"""The FLOP counter (omni_jax.flops) on small programs whose count is known."""
import jax
import jax.numpy as jnp

from omni_jax.flops import matmul_flops


def test_matmul_flops_count_scans_remat_and_convolutions():
    """A scanned, rematerialised layer: 3 forward products, then per step a recomputed forward
    and two backward products; a convolution counts as its equivalent matrix product."""
    def loss(w, x):
        step = jax.checkpoint(lambda c, _: (jnp.tanh(c @ w), None))
        return jax.lax.scan(step, x, None, length=3)[0].sum()

    product = 2 * 4 * 8 * 8  # [4, 8] @ [8, 8]
    jaxpr = jax.make_jaxpr(jax.value_and_grad(loss))(jnp.ones((8, 8)), jnp.ones((4, 8))).jaxpr
    assert matmul_flops(jaxpr) == 3 * product + 3 * 3 * product
    conv = jax.make_jaxpr(lambda x, k: jax.lax.conv_general_dilated(x, k, (1,), "VALID", dimension_numbers=(
        "NWC", "WIO", "NWC")))(jnp.ones((2, 10, 3)), jnp.ones((5, 3, 4))).jaxpr
    assert matmul_flops(conv) == 2 * (2 * 6 * 4) * (5 * 3)  # out [2, 6, 4], each a 15-term dot product

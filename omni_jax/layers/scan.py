"""Scanning repeated layers with a rematerialisation policy.

Every tower stacks its layers with `nn.scan`, so compile time does not grow with depth and
parameters get a leading "layers" axis; `nn.remat` wraps the layer by a named policy.
`apply_layers` can also unroll them (`layers_0`, `layers_1`, ...): on CPU, XLA copies each
scanned layer's weight slice before its matmuls, which halves memory-bound decoding speed.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from omni_jax.errors import InputError

REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,  # no rematerialisation: keep every activation
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_policy(name: str) -> Callable | None:
    if name not in REMAT_POLICIES:
        raise InputError(f"unknown remat policy {name!r}; choose one of {sorted(REMAT_POLICIES)}")
    return REMAT_POLICIES[name]


def scan_layers(layer_cls: type[nn.Module], num_layers: int, remat: str = "none",
                num_broadcast_args: int = 1) -> type[nn.Module]:
    """Returns a module class applying `layer_cls` `num_layers` times.

    `layer_cls.__call__(carry, *broadcast_args)` must return `(carry, per_layer_output)`;
    parameters and the KV cache get a leading layer axis named "layers".
    """
    if remat != "none":
        layer_cls = nn.remat(layer_cls, policy=remat_policy(remat), prevent_cse=False)
    return nn.scan(
        layer_cls,
        variable_axes={"params": 0, "cache": 0, "intermediates": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast,) * num_broadcast_args,
        length=num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )


def apply_layers(layer_cls: type[nn.Module], num_layers: int, carry: Any, *broadcast_args: Any,
                 remat: str = "none", scan: bool = True, name: str = "layers",
                 **attributes: Any) -> tuple[Any, Any]:
    """Runs `num_layers` layers built as `layer_cls(**attributes)` (call from a compact method).

    Scanned: parameters stacked under `name`. Unrolled: one subtree per layer, "{name}_{i}"
    (load_pretrained(..., scan_layers=False) unstacks a stored checkpoint into that layout).
    Returns (carry, per-layer outputs stacked on a leading axis, or None).
    """
    if scan:
        stack = scan_layers(layer_cls, num_layers, remat, num_broadcast_args=len(broadcast_args))
        return stack(**attributes, name=name)(carry, *broadcast_args)
    if remat != "none":
        layer_cls = nn.remat(layer_cls, policy=remat_policy(remat))
    outputs = []
    for i in range(num_layers):
        carry, out = layer_cls(**attributes, name=f"{name}_{i}")(carry, *broadcast_args)
        outputs.append(out)
    return carry, None if outputs[0] is None else jnp.stack(outputs)

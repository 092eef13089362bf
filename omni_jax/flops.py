"""FLOPs of a program, counted on its jaxpr: the train step's (`omni-jax plan`, `mfu` and `hfu` in
metrics.jsonl) and the benchmarks' forward passes.

Two figures, as PaLM defines them (Chowdhery et al. 2022, appendix B):
  model FLOPs     every operation of the forward pass and of the backward pass once: what MFU
                  divides, the same whatever the rematerialisation policy or attention kernel.
  hardware FLOPs  also the forwards the backward pass recomputes (remat): what HFU divides.

Matrix products count 2·m·n·k (a dot_general: 2 × its output's elements × the contracted
size) and convolutions as their equivalent products, read from the jaxpr, so a dense layer
counts exactly the passes JAX traces for it: its forward; in the backward pass its weights'
gradient (one product of the forward's size) if its weights are trained, and its input's (one
more) if a trained parameter lies upstream. In the train step (train.step.PHASES) the frozen
towers run forward only, while a frozen LM between the loss and a trained projector computes
its activations' gradients but not its weights'. Elementwise work (norms, softmax, rotary) is
left out (a few % of a transformer's), as are gathers (the embedding lookup).

Attention is counted analytically, per call site: `layers.attention.dot_product_attention`
runs each call as one unit of the jaxpr (`attention_unit`: a jit named for its shapes and
mask), whose count replaces whatever its kernel traces (the XLA path's products, cuDNN's custom
call, which counts nothing, a Pallas kernel's body, which would count once rather than once per
grid step). Forward: QKᵀ and PV, 4·B·T·S·H·D (H the query heads), halved when causal from the
start — MaxText's `calculate_tflops_training_per_device` and Megatron's convention, and what the
fused kernels compute; PaLM's 12·L·H·Q·T per token counts the masked half too. Like MaxText's,
the count is static: padding and packed segments count as computed (the padded length T).
Backward: dV = Pᵀ·dO, dP = dO·Vᵀ, dQ = dS·K, dK = dSᵀ·Q, each half the forward, for the gradients
the step takes (all four for self-attention; dP and dQ for a cross-attention whose keys and
values have no trained parameter upstream). A kernel's own recomputation (flash attention's
backward recomputes QKᵀ) and the masked half the XLA path computes are in neither figure, so
both are the same whichever kernel runs — but for the hardware FLOPs under remat "dots", which
saves the XLA path's attention products and cannot save a kernel's.

Not taken from XLA's cost analysis, which counts a loop body once: the scanned layers, the loss
chunks and the microbatches would be undercounted by their trip counts.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import jax
import jax.extend as jex
import numpy as np

_UNIT = re.compile(r"counted_attention_(\d+)x(\d+)x(\d+)x(\d+)x(\d+)x(\d+)_(causal|full)")
# JAX's own labels in a jaxpr's name stacks: the backward pass is traced under "transpose(…)";
# what it recomputes of a jax.checkpoint'ed forward, under "rematted_computation".
_BACKWARD, _RECOMPUTED = "transpose(", "rematted_computation"
# Primitives that multiply matrices: XLA's, and the attention kernels' (Pallas; cuDNN's custom
# calls, jax._src.cudnn's dot_product_attention_{fwd,bwd}… primitives).
_PRODUCTS, _KERNEL_PREFIXES = ("dot_general", "conv_general_dilated"), ("pallas_call", "dot_product_attention")


@dataclasses.dataclass(frozen=True)
class Flops:
    """model: forward and backward passes, each operation once; hardware: also what the
    backward pass recomputes (rematerialisation). Both for all devices together."""
    model: float
    hardware: float


def attention_flops(query_shape: tuple[int, ...], key_shape: tuple[int, ...], causal: bool) -> float:
    """The forward FLOPs of one attention call: query [batch, q, heads, head_dim], key [batch, kv,
    kv_heads, head_dim] → QKᵀ and PV, 2 · 2·B·T·S·H·D, halved when causal from the start."""
    batch, q_len, heads, head_dim = query_shape
    full = 4.0 * batch * q_len * key_shape[1] * heads * head_dim
    return full / 2 if causal else full


def attention_unit(attend: Callable[..., jax.Array], query: jax.Array, key: jax.Array, value: jax.Array,
                   *rest: Any, causal: bool) -> jax.Array:
    """attend(query, key, value, *rest) (query [batch, q, heads, head_dim], key/value [batch, kv,
    kv_heads, head_dim], rest: masks and the like) traced as one unit of the jaxpr: a jit named
    for the shapes and `causal`, which `count_flops` counts by `attention_flops` (in its forward,
    recomputed and backward forms) instead of its contents. A fresh jit per call: its trace is
    never served from JAX's cache, which would keep a kernel chosen before (a monkeypatched
    backend in a test, a changed config)."""
    batch, q_len, heads, head_dim = query.shape
    kv_len, kv_heads = key.shape[1:3]

    def unit(*args):
        return attend(*args)

    unit.__name__ = unit.__qualname__ = (f"counted_attention_{batch}x{q_len}x{kv_len}x{heads}x{kv_heads}x{head_dim}_"
                                         f"{'causal' if causal else 'full'}")
    return jax.jit(unit)(query, key, value, *rest)


def count_flops(jaxpr: jex.core.Jaxpr) -> Flops:
    """Model and hardware FLOPs of `jaxpr` (all devices together): sub-jaxprs included, a scan
    body times its length, a cond's costliest branch, each attention unit analytically."""
    return Flops(*map(float, _count(jaxpr, backward=False, recomputed=False)))


def _count(jaxpr: jex.core.Jaxpr, backward: bool, recomputed: bool) -> tuple[float, float]:
    """(model, hardware) FLOPs; backward / recomputed: the jaxpr runs in the backward pass / is
    a rematerialised forward (sub-jaxprs' name stacks are relative to their equation's)."""
    model = hardware = 0.0
    for eqn in jaxpr.eqns:
        stack = str(eqn.source_info.name_stack)
        eqn_backward, eqn_recomputed = backward or _BACKWARD in stack, recomputed or _RECOMPUTED in stack
        unit = _UNIT.fullmatch(str(eqn.params.get("name", "")))
        if unit is not None:
            own = _unit_flops(unit, eqn, eqn_backward)
        elif eqn.primitive.name == "cond":
            branch = max((_count(b.jaxpr, eqn_backward, eqn_recomputed) for b in eqn.params["branches"]),
                         key=lambda counts: counts[1])
            model, hardware = model + branch[0], hardware + branch[1]
            continue
        else:
            own = _product_flops(eqn)
            repeats = eqn.params["length"] if eqn.primitive.name == "scan" else 1
            for sub in jex.core.jaxprs_in_params(eqn.params):
                sub_model, sub_hardware = _count(sub, eqn_backward, eqn_recomputed)
                model, hardware = model + repeats * sub_model, hardware + repeats * sub_hardware
        model, hardware = model + (0.0 if eqn_recomputed else own), hardware + own
    return model, hardware


def _product_flops(eqn: jex.core.JaxprEqn) -> float:
    """A matrix product's or convolution's FLOPs; 0 for anything else."""
    if eqn.primitive.name == "dot_general":
        (contracting, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        return 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[d] for d in contracting])
    if eqn.primitive.name == "conv_general_dilated":
        kernel = eqn.invars[1].aval.shape  # out features × in features per group × window
        out_features = kernel[eqn.params["dimension_numbers"].rhs_spec[0]]
        return 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod(kernel) / out_features
    return 0.0


def _unit_flops(unit: re.Match, eqn: jex.core.JaxprEqn, backward: bool) -> float:
    """An attention unit's FLOPs: its forward (also when recomputed), or in the backward pass
    the products its gradients need.

    JAX's partial evaluation may split a unit into pieces of the same name: a scan hoists what
    depends on loop constants only (the mask) out of the layer loop, a remat policy that saves
    products ("dots") leaves the XLA path's out of the recomputation. A piece counts if it
    computes products: a dot_general, or a kernel (a Pallas call, cuDNN's custom calls).

    The transposed unit returns the cotangents of the inputs that need one, in the inputs' order
    (query, key, value, then a bias, whose gradient is dS itself); they are told apart by shape:
    keys and values share theirs, and where queries do too, a lone value gradient would be taken
    for the queries' (the model always differentiates keys and values together: one source,
    projections trained or frozen together)."""
    batch, q_len, kv_len, heads, kv_heads, head_dim = map(int, unit.groups()[:6])
    query = (batch, q_len, heads, head_dim)
    if not _computes_products(eqn.params["jaxpr"].jaxpr):
        return 0.0
    forward = attention_flops(query, (batch, kv_len), unit.group(7) == "causal")
    if not backward:
        return forward
    candidates = [("query", query), ("key", (batch, kv_len, kv_heads, head_dim)),
                  ("value", (batch, kv_len, kv_heads, head_dim))]
    grads = set()
    for out in eqn.outvars:
        match = next((i for i, (_, shape) in enumerate(candidates) if tuple(out.aval.shape) == shape), None)
        grads.add("bias" if match is None else candidates[match][0])
        candidates = candidates[match + 1:] if match is not None else []
    products = len(grads & {"query", "key", "value"}) + bool(grads & {"query", "key", "bias"})  # + dP
    return products * forward / 2


def _computes_products(jaxpr: jex.core.Jaxpr) -> bool:
    """Whether `jaxpr` (or a sub-jaxpr) multiplies matrices: a product or an attention kernel."""
    return any(eqn.primitive.name in _PRODUCTS or eqn.primitive.name.startswith(_KERNEL_PREFIXES)
               or any(_computes_products(sub) for sub in jex.core.jaxprs_in_params(eqn.params)) for eqn in jaxpr.eqns)

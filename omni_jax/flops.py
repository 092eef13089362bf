"""FLOPs of a program, counted on its jaxpr: the train step's (`omni-jax plan`, the MFU in
metrics.jsonl) and the benchmarks' forward passes.

Not taken from XLA's cost analysis, which counts a loop body once: the scanned layers, the loss
chunks and the microbatches would be undercounted by their trip counts.
"""
from __future__ import annotations

import jax.extend as jex
import numpy as np


def matmul_flops(jaxpr: jex.core.Jaxpr) -> float:
    """FLOPs of the matrix products and convolutions of `jaxpr` (all devices together):
    sub-jaxprs included, a scan body times its length, the forward passes the backward
    recomputes (remat) where they occur, a cond's costliest branch. Elementwise work is left
    out (a few % of a transformer's)."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (contracting, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[d] for d in contracting])
        elif name == "conv_general_dilated":
            kernel = eqn.invars[1].aval.shape  # out features × in features per group × window
            out_features = kernel[eqn.params["dimension_numbers"].rhs_spec[0]]
            total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod(kernel) / out_features
        elif name == "cond":
            total += max(matmul_flops(branch.jaxpr) for branch in eqn.params["branches"])
            continue
        repeats = eqn.params["length"] if name == "scan" else 1
        total += repeats * sum(matmul_flops(sub) for sub in jex.core.jaxprs_in_params(eqn.params))
    return total

"""Evaluation: sharded generation over manifests (`predict`), the paper's metrics (`metrics`),
evaluators named in the config (`evaluators`) and the eval / infer / score jobs (`job`)."""

"""`omni-jax annotate`: the paper's instruction data (§3) made from a team's labelled clips —
cues from served models, a reviewed reason, a score against the label (SRE), the human review
(HRE), and the manifests the training phases and evaluators read. docs/annotate.md."""

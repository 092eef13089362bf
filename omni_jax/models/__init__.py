"""One file per model; each mirrors its transformers module tree."""

#!/usr/bin/env python
"""Export an omni_jax checkpoint to a directory transformers' `from_pretrained` loads.

    python convert/orbax_to_hf.py --src OUT_DIR --dst HF_DIR [--config.convert.dtype=float32]
        [--config.convert.naming=NAME] [--json]

Same as `omni-jax export`: see `omni-jax export --help`.
"""
import sys

from omni_jax.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    json_flag = ["--json"] if "--json" in argv else []
    sys.exit(main(json_flag + ["export"] + [a for a in argv if a != "--json"]))

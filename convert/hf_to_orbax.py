#!/usr/bin/env python
"""Convert a Hugging Face checkpoint directory to an omni_jax (orbax) checkpoint.

    python convert/hf_to_orbax.py --src HF_DIR --dst OUT_DIR [--config.convert.dtype=bfloat16] [--json]

Same as `omni-jax convert`: see `omni-jax convert --help`.
"""
import sys

from omni_jax.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    json_flag = ["--json"] if "--json" in argv else []
    sys.exit(main(json_flag + ["convert"] + [a for a in argv if a != "--json"]))

#!/usr/bin/env python
"""Convert the FaceXFormer release (.pt) to an omni_jax face encoder checkpoint.

    python convert/facexformer_to_orbax.py --src facexformer.pt --dst OUT_DIR [--config omni_emotion:7b]
        [--config.convert.dtype=bfloat16] [--json]

Same as `omni-jax convert-facexformer`: see `omni-jax convert-facexformer --help`.
"""
import sys

from omni_jax.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    json_flag = ["--json"] if "--json" in argv else []
    sys.exit(main(json_flag + ["convert-facexformer"] + [a for a in argv if a != "--json"]))

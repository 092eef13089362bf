#!/usr/bin/env python
"""Convert a Hugging Face checkpoint directory to an omni_jax (orbax) checkpoint.

    python convert/hf_to_orbax.py --src HF_DIR --dst OUT_DIR [--dtype bfloat16]

The model is picked from config.json's model_type (qwen2, siglip_vision_model, siglip,
llava_onevision, llava_qwen). Tensors are streamed one at a time; on any mismatch the
command lists every offending key and leaves no output directory.
"""
import argparse
import logging
import sys

from omni_jax.conversion import ConversionError, convert_hf_to_orbax


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="directory with config.json and *.safetensors / *.bin")
    parser.add_argument("--dst", required=True, help="new output directory (must not exist)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="stored parameter dtype (default: keep the source dtype)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        dst = convert_hf_to_orbax(args.src, args.dst, dtype=args.dtype, progress=not args.no_progress)
    except (ConversionError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Export an omni_jax checkpoint back to a directory transformers' `from_pretrained` loads.

    python convert/orbax_to_hf.py --src OUT_DIR --dst HF_DIR [--dtype float32] [--naming NAME]
"""
import argparse
import sys

from omni_jax.conversion import export_orbax_to_hf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="directory written by hf_to_orbax.py")
    parser.add_argument("--dst", required=True, help="new output directory (must not exist)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="written dtype (default: as stored)")
    parser.add_argument("--naming", default=None,
                        help="key naming to write (default: the source's, if transformers reads it)")
    args = parser.parse_args(argv)
    try:
        dst = export_orbax_to_hf(args.src, args.dst, dtype=args.dtype, naming=args.naming)
    except (FileExistsError, FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

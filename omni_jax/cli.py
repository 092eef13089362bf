"""`omni-jax`: one command line, one subcommand per job.

    omni-jax convert --src HF_DIR --dst OUT_DIR [--dtype bfloat16]
    omni-jax export  --src OUT_DIR --dst HF_DIR [--dtype float32] [--naming NAME]

Each prints a readable result; with --json its last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

DTYPE_CHOICES = ["float32", "bfloat16", "float16"]


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _convert(args: argparse.Namespace) -> dict[str, Any]:
    from omni_jax.conversion import convert_hf_to_orbax
    from omni_jax.conversion.engine import read_converted_config

    start = time.perf_counter()
    dst = convert_hf_to_orbax(args.src, args.dst, dtype=args.dtype, progress=not args.json)
    meta = read_converted_config(dst)
    return {"dst": str(dst), "model_type": meta["model_type"], "source_format": meta["source_format"],
            "dtype": meta["dtype"], "bytes": _dir_bytes(dst), "seconds": round(time.perf_counter() - start, 2)}


def _export(args: argparse.Namespace) -> dict[str, Any]:
    from omni_jax.conversion import export_orbax_to_hf

    start = time.perf_counter()
    dst = export_orbax_to_hf(args.src, args.dst, dtype=args.dtype, naming=args.naming, progress=not args.json)
    return {"dst": str(dst), "files": sorted(p.name for p in dst.iterdir()), "bytes": _dir_bytes(dst),
            "seconds": round(time.perf_counter() - start, 2)}


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="Hugging Face checkpoint directory → omni_jax (orbax) checkpoint",
                       description="Streams tensors one at a time; the model comes from config.json's model_type "
                                   "(qwen2, siglip_vision_model, siglip, llava_onevision, llava_qwen). On any "
                                   "mismatch every offending key is listed and no output directory is left.")
    p.add_argument("--src", required=True, help="directory with config.json and *.safetensors / pytorch_model*.bin")
    p.add_argument("--dst", required=True, help="new output directory (must not exist)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default=None, help="stored dtype (default: the source's)")
    p.set_defaults(run=_convert)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="omni_jax checkpoint → directory transformers' from_pretrained loads")
    p.add_argument("--src", required=True, help="directory written by `omni-jax convert`")
    p.add_argument("--dst", required=True, help="new output directory (must not exist)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default=None, help="written dtype (default: as stored)")
    p.add_argument("--naming", default=None, help="key naming to write (default: the source's, if transformers "
                                                  "reads it, else transformers' own)")
    p.set_defaults(run=_export)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_convert, _add_export]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="omni-jax", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.json else logging.INFO, format="%(message)s")
    try:
        result = args.run(args)
    except (FileExistsError, FileNotFoundError, KeyError, ValueError) as e:  # ConversionError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        if args.json:
            print(json.dumps({"ok": False, "error": str(e)}))
        return 1
    for key, value in result.items():
        print(f"{key:>14}: {value}")
    if args.json:
        print(json.dumps({"ok": True, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Outputs that appear whole or not at all.

    with atomic_write(path) as tmp:      # a file or a folder: write it at `tmp`, by any means
        tmp.write_text(...)              # (open(), savefig(), orbax, a tree of files)

`tmp` lies beside `path` (same file system, so the rename is atomic) under a hidden name unique
to this process and thread. On a clean exit it is renamed onto `path` (replacing a file there;
a folder must not exist yet, or be empty); on any error, Ctrl-C included, it is removed and `path` is left as
it was. Readers therefore see the old file or the new one, never one cut open, and a job killed
mid-write leaves no output that looks complete.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import threading
from pathlib import Path
from typing import Iterator


def temporary_name(path: Path) -> Path:
    """The hidden name `atomic_write` writes `path` under."""
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")


def remove(path: Path) -> None:
    """A file or a folder tree, if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yields the temporary path to write; renamed onto `path` on success, removed on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    remove(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        remove(tmp)

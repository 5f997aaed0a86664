"""Writing outputs atomically: a temporary file in the target folder, then a rename.

A reader (or a run interrupted half-way) sees either the old file or the new one, never a
half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary file is removed if the block raises (or is interrupted).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Write text (UTF-8) atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically, keys sorted and indented, so equal data give equal bytes."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_with(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Atomically write a file produced by ``writer(tmp_path)`` (Parquet, NetCDF, images)."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)

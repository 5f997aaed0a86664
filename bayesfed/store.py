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

import numpy as np
import xarray as xr


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


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write bytes atomically (e.g. a PNG); returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically, keys sorted and indented, so equal data give equal bytes."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_with(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Atomically write a file produced by ``writer(tmp_path)`` (Parquet, NetCDF, images)."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def _netcdf_safe(tree: xr.DataTree) -> xr.DataTree:
    """Object-dtype variables (nutpie's divergence messages) become fixed-width text."""
    groups = {}
    for node in tree.subtree:
        ds = node.to_dataset(inherit=False)
        for name, da in ds.data_vars.items():
            if da.dtype == object:
                ds[name] = da.copy(data=np.array(["" if v is None else str(v)
                                                  for v in da.to_numpy().ravel()],
                                                 dtype=str).reshape(da.shape))
        groups[node.path] = ds
    out = xr.DataTree.from_dict(groups)
    out.attrs = dict(tree.attrs)
    return out


def save_fit(tree: xr.DataTree, path: str | Path) -> Path:
    """Save a fit (ArviZ DataTree) as NetCDF, atomically.

    Parameters
    ----------
    tree : xarray.DataTree
        Groups ``posterior``, ``sample_stats``, ``observed_data``, ``constant_data`` and the
        provenance attributes written by :func:`bayesfed.fit.fit_one`.
    path : str or Path
        Target ``.nc`` file.
    """
    safe = _netcdf_safe(tree)
    return write_with(path, lambda tmp: safe.to_netcdf(tmp, engine="h5netcdf"))


def load_fit(path: str | Path) -> xr.DataTree:
    """Read a fit saved by :func:`save_fit` fully into memory (the file is closed again)."""
    with xr.open_datatree(path, engine="h5netcdf") as tree:
        return tree.load().copy()

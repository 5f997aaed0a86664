"""Writing outputs atomically: a temporary file in the target folder, then a rename.

A reader (or a run interrupted half-way) sees either the old file or the new one, never a
half-written file. The temporary is flushed to disk (``fsync``) before the rename, and the
folder after it, so a power cut cannot leave a renamed but empty file either.

Temporaries are named ``.<name>.<pid>.<random>.tmp``: hidden, never ending in the target's
suffix (a ``*.nc`` glob cannot mistake one for a fit), and carrying the id of the process
writing it. A temporary outlives its writer only when that process was killed outright
(SIGKILL, power cut); :func:`remove_stale_temporaries` deletes those whose process no longer
runs, and leaves those of live writers alone.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import xarray as xr

from bayesfed.errors import OutputError

#: Suffix of every temporary :func:`atomic_path` creates.
TEMP_SUFFIX = ".tmp"

#: A temporary's name: ``.<target name>.<pid>.<random>.tmp``.
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.[^.]+\.tmp$")

@functools.cache
def _umask() -> int:
    """The process's umask, read at the first write (setting it is the only way to read it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary file (``.<name>.<pid>.<random>.tmp``) is removed if the block raises (or is
    interrupted by Ctrl-C); it is flushed to disk before the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX,
                               dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # as an ordinary file, not mkstemp's owner-only 0600
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(path.parent)


def _fsync(path: str | Path) -> None:
    """Flush a file's (or a folder's) content to disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a folder cannot be opened on some platforms: nothing to flush
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _running(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except PermissionError:  # someone else's process
        return True
    except (ProcessLookupError, OverflowError, ValueError):  # none, or an impossible id
        return False
    return True


def is_temporary(path: str | Path) -> bool:
    """Whether ``path`` is named like a temporary of :func:`atomic_path`."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def stale_temporaries(folder: str | Path) -> list[Path]:
    """Temporaries in ``folder`` left by writers that no longer run (killed mid-write).

    A temporary whose name carries no process id (an older bayesfed's) counts as stale.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = []
    for path in sorted(folder.iterdir()):
        if not (path.is_file() and is_temporary(path)):
            continue
        match = _TEMP_NAME.match(path.name)
        if match is None or not _running(int(match["pid"])):
            stale.append(path)
    return stale


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete :func:`stale_temporaries` of ``folder``; returns the paths removed."""
    removed = []
    for path in stale_temporaries(folder):
        try:
            path.unlink()
        except FileNotFoundError:  # removed meanwhile by another cleaner
            continue
        removed.append(path)
    return removed


def lock_path(folder: str | Path) -> Path:
    """The lock file of a folder a job writes to (:func:`folder_lock`): a hidden file beside
    it, so the folder holds only the job's outputs."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.bayesfed.lock"


@contextmanager
def folder_lock(folder: str | Path) -> Iterator[None]:
    """Hold a folder for one job: a second job aimed at it while this one runs is refused.

    The lock is an exclusive ``flock`` on :func:`lock_path`, which the operating system
    releases when the holder's process ends, however it ends: a killed job leaves no stuck
    lock (its file stays beside the folder, naming the last holder's pid, and means nothing by
    itself; the next job takes it). A job that ends removes the file. The folder itself is
    not created here.

    Raises
    ------
    OutputError
        Another process holds the folder; the message names it.
    """
    import fcntl

    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")  # held open: the lock lives with it
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise OutputError(f"another bayesfed job ({holder}) is writing to {folder}: wait "
                              "for it to finish, or give this job another output folder"
                              ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # still held: no other job has it
    finally:
        handle.close()  # closing the descriptor releases the lock


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


#: A fit whose arrays hold at least this many bytes is freed by a full cycle collection as soon
#: as it is dropped (:func:`release`).
RELEASE_BYTES = 64 * 2**20


def release(nbytes: int) -> None:
    """Free a just-dropped fit of ``nbytes`` bytes now if it is large.

    A DataTree's nodes refer to their parents, so only the cycle collector frees a fit, and it
    runs by object counts, not bytes: six national fits (hundreds of megabytes each) were kept
    alive at once. A full collection scans every object of the process (PyMC's and
    PyTensor's included: 0.1-0.3 s), so a small fit is left to the collector's own schedule.
    """
    if nbytes >= RELEASE_BYTES:
        gc.collect()


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
        provenance attributes written by :func:`bayesfed.jobs.fit_one.fit_one`.
    path : str or Path
        Target ``.nc`` file.
    """
    safe = _netcdf_safe(tree)
    return write_with(path, lambda tmp: safe.to_netcdf(tmp, engine="netcdf4"))


@contextmanager
def _reading_fit(path: str | Path) -> Iterator[None]:
    """Turn a fit file that cannot be read into an :class:`OutputError` naming it and the
    fix (a truncated copy or a foreign file fails deep inside netCDF4 or xarray)."""
    try:
        yield
    except (OSError, ValueError, KeyError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise OutputError(
            f"{path} is not a bayesfed fit that can be read ({reason}): the file is damaged "
            "(a copy cut short?) or was not written by bayesfed. Fit it again (`bayesfed fit "
            "... --force`, or --resume to refit only what is missing) or move it out of the "
            "folder") from None


def _check_fit(attrs: dict) -> None:
    if "bayesfed_model" not in attrs:
        raise KeyError("no bayesfed provenance attributes")


def load_fit(path: str | Path, posterior: Sequence[str] | None = None,
             skip: Sequence[str] = ()) -> xr.DataTree:
    """Read a fit saved by :func:`save_fit` into memory (the file is closed again).

    Parameters
    ----------
    path : str or Path
    posterior : sequence of str, optional
        Read only these posterior variables (those the fit has) and the fit's attributes: a
        tree with the one group ``posterior``. A national fit's school draws are hundreds of
        megabytes; a reference model's variances are a few kilobytes. Default: everything.
    skip : sequence of str
        Posterior variables not to read (those the fit has), when ``posterior`` is None.

    Raises
    ------
    OutputError
        The file is damaged or not a bayesfed fit.
    """
    with _reading_fit(path):
        if posterior is None:
            with xr.open_datatree(path, engine="netcdf4") as tree:
                _check_fit(tree.attrs)
                if "posterior" not in tree.children:
                    raise KeyError("no posterior group")
                if not skip:
                    return tree.load().copy()
                groups = {node.path: node.to_dataset(inherit=False) for node in tree.subtree}
                groups["/posterior"] = groups["/posterior"].drop_vars(
                    [v for v in skip if v in groups["/posterior"]])
                out = xr.DataTree.from_dict(groups).load()
                out.attrs = dict(tree.attrs)
                return out
        attrs = fit_attrs(path)
        with xr.open_dataset(path, group="posterior", engine="netcdf4") as post:
            out = xr.DataTree.from_dict(
                {"posterior": post[[v for v in posterior if v in post]].load()})
    out.attrs = attrs
    return out


def fit_attrs(path: str | Path) -> dict:
    """A saved fit's attributes (provenance: model, year, reference, ...), reading only the
    file's root group.

    Raises
    ------
    OutputError
        The file is damaged or not a bayesfed fit.
    """
    with _reading_fit(path), xr.open_dataset(path, engine="netcdf4") as root:
        attrs = dict(root.attrs)
        _check_fit(attrs)
        return attrs

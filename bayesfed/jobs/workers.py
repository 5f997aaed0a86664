"""The set-up of a job's worker processes and their stopping: what a spawned worker imports
first, so it holds nothing heavy (a summary worker never imports PyMC)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def worker_init(parent: int) -> None:
    """Set up a worker process of a parallel job.

    Ctrl-C reaches the whole process group; only the parent acts on it (it stops the workers).
    A worker whose parent died without stopping it (SIGKILL) exits within a second instead of
    waiting for work forever; what it was writing stays a temporary, never a fit file.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def exit_with_parent() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=exit_with_parent, daemon=True).start()


def stop_workers(pool: ProcessPoolExecutor) -> None:
    """Kill a pool's worker processes now (their temporaries are removed afterwards)."""
    kill = getattr(pool, "kill_workers", None)  # Python >= 3.14
    if kill is not None:
        kill()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.kill()



def spawn_safe() -> bool:
    """Whether a spawned worker process can start without running the user's script again.

    A spawned process imports the parent's main module unless it has no file (an interactive
    session, a notebook, ``python -c``) or was run as a package's ``__main__`` (``python -m
    bayesfed``); the ``bayesfed`` command's script guards its call. A script of the user's is
    imported, and without an ``if __name__ == "__main__":`` guard it would run its job again in
    the worker, so no worker is started unasked (``jobs=1``) from one.
    """
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and (spec.name == "__main__" or spec.name.endswith(".__main__")):
        return True
    path = getattr(main, "__file__", None)
    return path is None or Path(path).name in ("bayesfed", "bayesfed.exe")

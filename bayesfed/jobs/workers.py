"""The set-up of a job's worker processes and their stopping: what a spawned worker imports
first, so it holds nothing heavy (a summary worker never imports PyMC)."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor


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


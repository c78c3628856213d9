"""What every job process shares, whatever it runs (one training, a federated simulation, a Flower coordinator,
generation, evaluation): its status file with a heartbeat, its errors as one sentence for the person, its seed,
and file names for sites. The run-directory files themselves are storage/rundir.py's contract.
"""
from __future__ import annotations

import random
import threading
from pathlib import Path

from storage import rundir


class JobError(RuntimeError):
    """Ends a job as `failed` with this sentence in status.json."""


class Status:
    """Writes the run's status.json, one writer at a time, so the heartbeat thread never undoes a final state."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self._lock = threading.Lock()

    def __call__(self, **fields) -> None:
        with self._lock:
            rundir.write_status(self.run_dir, **fields)


def heartbeat(write) -> callable:
    """Call `write()` every rundir.HEARTBEAT_S seconds in a daemon thread, so the app sees the job alive through
    long steps; returns the function that stops it."""
    stop = threading.Event()

    def beat():
        while not stop.wait(rundir.HEARTBEAT_S):
            try:
                write()
            except OSError:
                pass

    threading.Thread(target=beat, daemon=True, name="heartbeat").start()
    return stop.set


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch from one seed: the same run gives the same numbers."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def explain(e: BaseException) -> str:
    """Any failure as one sentence for status.json: our own errors say what to do; the rest name the cause."""
    import torch

    from training.config import ConfigError
    from training.data import DataError

    if isinstance(e, (ConfigError, DataError, JobError)):
        return str(e)
    if isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower():
        return ("Out of memory. Lower batch_size or max_length, raise grad_accum to keep the effective batch, "
                "or use LoRA instead of full fine-tuning.")
    if isinstance(e, KeyboardInterrupt):
        return "Interrupted."
    if isinstance(e, FileNotFoundError):
        return f"A file is missing: {e.filename or e}."
    return f"The job crashed: {type(e).__name__}: {e}. The full trace is in log.txt."


def site_dirname(name: str) -> str:
    """A site's name as a safe folder / file-name part (sites/<name>/, instance file tags)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60] or "site"

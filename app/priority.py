"""Labeling first: while the app serves a labeling request, the training job it started is paused.

Why: on a CPU-only machine a training job streams the model's weights and activations through memory without
pause. Measured on a 2-core machine with the job on its own core at niceness 10 (`python -m bench.live`), that
still slowed labeling decisions by 1.1-1.2x at the median and 1.2-1.3x at p95: memory bandwidth and the shared
cache have no priorities (a process that only spins the CPU did not slow labeling at all). A decision takes about
20 ms, so pausing the job (SIGSTOP to its process group) for exactly that long gives labeling an idle machine and
costs training little: 1.0x at the median and p95 in the same runs. It also helps decisions made a person's
pace apart, not only back-to-back ones.

Bounds, so that labeling can never starve training:
- pauses draw on a budget of `burst_s` seconds that refills at `share` seconds per second, so over any long
  stretch the job runs at least 1 - share of the time, however busy the annotators;
- a single pause ends after `max_pause_s` (the supervisor checks every tick), even when a request is stuck.

Only jobs the app started itself are paused (their process is our child, so its pid cannot be reused under us).
`PREFLAB_LABELING_FIRST`: `auto` (default: on when the machine has no NVIDIA GPU, where jobs run on the CPU), `1`, `0`.
"""
from __future__ import annotations

import contextlib
import glob
import os
import signal
import subprocess
import threading
import time
from typing import Callable, Iterator


def enabled_by_default() -> bool:
    choice = os.environ.get("PREFLAB_LABELING_FIRST", "auto").strip().lower()
    if choice in ("0", "off", "false", "no"):
        return False
    if choice in ("1", "on", "true", "yes"):
        return True
    return os.environ.get("CUDA_VISIBLE_DEVICES") == "" or not glob.glob("/dev/nvidia[0-9]*")   # no GPU for jobs


class LabelingFirst:
    """`with gate.hold():` around a labeling request. Holds from several threads overlap: the job pauses at
    the first and continues at the last."""

    def __init__(self, jobs: Callable[[], list[subprocess.Popen]], enabled: bool | None = None,
                 burst_s: float = 2.0, share: float = 0.5, max_pause_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.jobs, self.clock = jobs, clock
        self.enabled = enabled_by_default() if enabled is None else enabled
        self.burst_s, self.share, self.max_pause_s = burst_s, share, max_pause_s
        self._lock = threading.Lock()
        self._holders = 0
        self._paused: list[subprocess.Popen] = []
        self._since = 0.0
        self._budget, self._refilled = burst_s, clock()
        self.paused_s = 0.0     # total time jobs spent paused for labeling (reported by the benchmark)
        self.pauses = 0

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        with self._lock:
            self._holders += 1
            if self._holders == 1:
                self._pause()
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0:
                    self._resume()

    def enforce(self) -> None:
        """End a pause that has run out of time or budget (called by the supervisor every tick)."""
        with self._lock:
            if self._paused and self.clock() - self._since >= min(self.max_pause_s, self._budget):
                self._resume()

    def release(self) -> None:
        """Let every paused job continue now (the app is shutting down)."""
        with self._lock:
            self._resume()

    # -- under self._lock -------------------------------------------------------------------------------------
    def _pause(self) -> None:
        now = self.clock()
        self._budget = min(self.burst_s, self._budget + self.share * (now - self._refilled))
        self._refilled = now
        if not self.enabled or self._budget <= 0:
            return
        for proc in self.jobs():
            if proc.poll() is None and _signal_group(proc.pid, signal.SIGSTOP):
                self._paused.append(proc)
        if self._paused:
            self._since = now
            self.pauses += 1

    def _resume(self) -> None:
        if not self._paused:
            return
        for proc in self._paused:
            _signal_group(proc.pid, signal.SIGCONT)
        spent = self.clock() - self._since
        self._budget -= spent
        self.paused_s += spent
        self._paused = []


def _signal_group(pgid: int, sig: int) -> bool:
    """Signal a job's whole process group (jobs run in their own session, so the group id is the job's pid):
    the job's helpers pause and continue with it."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def continue_job(pid: int | None) -> None:
    """Make sure a job re-attached after an app restart is not left paused (the app may have died mid-request).
    SIGCONT does nothing to a process that is not stopped."""
    if pid:
        _signal_group(int(pid), signal.SIGCONT)

"""The accelerators the supervisor hands out to jobs, and the rule that decides which queued job starts next.

A machine without an NVIDIA GPU is one device, the CPU: one job at a time. With GPUs, each GPU is a device and
jobs run side by side, each on as many GPUs as its `gpus` setting asks (CUDA_VISIBLE_DEVICES tells the job which).
"""
from __future__ import annotations

import glob
import os

from app.context import UserError

CPU = "cpu"   # the one device of a machine without GPUs


def machine_gpus(simulated: int | None = None) -> list[str]:
    """The GPU ids jobs may use, as CUDA_VISIBLE_DEVICES names them. `simulated` (or PREFLAB_GPUS) pretends the
    machine has that many GPUs, so the scheduling is testable on a CPU-only machine."""
    if simulated is None and os.environ.get("PREFLAB_GPUS", "").strip():
        text = os.environ["PREFLAB_GPUS"].strip()
        if not text.isdigit():
            raise UserError(f"PREFLAB_GPUS must be a whole number of GPUs, not {text!r}.")
        simulated = int(text)
    if simulated is not None:
        return [str(i) for i in range(simulated)]
    if not glob.glob("/dev/nvidia[0-9]*"):
        return []   # no NVIDIA driver: do not import torch into the app just to hear zero
    import torch

    n = torch.cuda.device_count()   # counts only what CUDA_VISIBLE_DEVICES lets the app see
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    ids = [d.strip() for d in visible.split(",")] if visible else [str(i) for i in range(n)]
    return ids[:n]


def next_launches(queued: list[tuple[str, int]], devices: list[str], busy: set[str]) -> list[tuple[str, list[str]]]:
    """Which queued jobs start now, on which devices. `queued` is (run id, devices wanted) in queue order.

    First in, first out: a job starts when enough devices are free, and a job that must wait holds back every
    job queued after it, so a stream of one-GPU jobs never starves a job that needs several."""
    free = [d for d in devices if d not in busy]
    starts = []
    for run_id, wanted in queued:
        if wanted > len(free):
            break
        starts.append((run_id, free[:wanted]))
        free = free[wanted:]
    return starts

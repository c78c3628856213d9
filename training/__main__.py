"""`python -m training RUN_DIR`: run the job described by RUN_DIR/config.json (see storage/rundir.py).

Exit code 0 when the job finished or was stopped on request (resumable), 1 when it failed; the reason is in
status.json as a sentence.
"""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def share_the_machine(nice: int, threads: int) -> None:
    """Jobs the app starts leave room for the app: `threads` CPU threads (the app keeps a core for its pages; more
    priority alone did not do it, the job's threads still slowed every request by half on 2 cores) and a lower
    priority. The job runs in its own session, so with the kernel's autogroup scheduling it is also its session
    group's niceness that counts (set through /proc/self/autogroup where the kernel has it)."""
    if threads > 0:   # before torch is imported: its thread pools read this once
        os.environ["OMP_NUM_THREADS"] = str(threads)
    if nice <= 0:
        return
    os.nice(nice)
    try:
        Path("/proc/self/autogroup").write_text(str(nice))
    except OSError:
        pass   # no autogroup scheduling here: the process niceness alone does it


def run_job(run_dir: str | Path) -> int:
    from storage import rundir
    from training.config import JobConfig

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        print(f"No run directory at {run_dir}.", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":   # torchrun / accelerate launch: the main process writes the status
        rundir.write_status(run_dir, state="running", pid=os.getpid(), error=None, phase="starting")
    try:
        cfg = JobConfig.load(run_dir / rundir.CONFIG)
        if cfg.kind == "train" and cfg.federated is not None:
            from training.federated.simulation import run_federated

            state = run_federated(cfg, run_dir)
        elif cfg.kind == "train":
            from training.trainer import Trainer, install_sigterm

            trainer = Trainer(cfg, run_dir)
            install_sigterm(trainer)
            state = trainer.prepare().train()
        elif cfg.kind == "score":
            from training.score import run_score

            state = run_score(cfg, run_dir)
        elif cfg.kind == "generate":
            from training.generate import run_generate

            state = run_generate(cfg, run_dir)
        else:
            from training.evaluate import run_evaluate

            state = run_evaluate(cfg, run_dir)
        return 0 if state in ("finished", "stopped") else 1
    except BaseException as e:  # noqa: BLE001 - every failure must end as a readable status
        from training.runtime import explain

        message = explain(e)
        traceback.print_exc()
        rundir.write_status(run_dir, state="failed", error=message, phase="failed")
        print(f"\nFAILED: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m training RUN_DIR", file=sys.stderr)
        sys.exit(2)
    share_the_machine(int(os.environ.get("PREFLAB_JOB_NICE") or 0), int(os.environ.get("PREFLAB_JOB_THREADS") or 0))
    sys.exit(run_job(sys.argv[1]))

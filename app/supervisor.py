"""The job supervisor: a thread in the app that starts queued jobs on free devices (one at a time on a machine
without GPUs, side by side on different GPUs; app/devices.py), watches their heartbeats, and ingests their metrics
and per-instance values into DuckDB as they arrive, so every chart is a SQL query.

Jobs are separate processes in their own session: closing the browser or restarting the app never stops them.
On start the supervisor re-attaches to runs marked running (pid + heartbeat), re-ingesting their files from the
beginning (ingest is idempotent: a run's rows are replaced, never duplicated).
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pandas as pd

from app.context import AppContext, UserError
from app.devices import CPU, machine_gpus, next_launches
from app.priority import LabelingFirst, continue_job
from labeling import blind_eval
from storage import rundir

log = logging.getLogger("preflab.supervisor")
ROOT = Path(__file__).resolve().parents[1]
META_KEYS = {"step", "time", "split", "site", "round"}
DISCOVER_EVERY_S = 5.0   # how often the runs folder is scanned for runs started outside the app
JOB_NICE = 10   # CPU niceness of jobs the app starts (PREFLAB_JOB_NICE overrides; 0 = same as the app)
STOP_GRACE_S = 600   # torchrun waits this long for its processes to save a checkpoint on SIGTERM, then kills them


def job_threads() -> int:
    """CPU threads for a job: every core the app may use but one, which stays free for labeling requests."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


def job_command(run_dir: Path, processes: int) -> list[str]:
    """The job's command line: one process, or `processes` data-parallel ones through torchrun (`--standalone`:
    each job has its own rendezvous on a free port, so several can run side by side)."""
    if processes == 1:
        return [sys.executable, "-m", "training", str(run_dir)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", "training", str(run_dir)]


def spawn_job(argv: list[str], env: dict[str, str], run_dir: Path) -> subprocess.Popen:
    """Start a job writing to its log. No shell: the run directory is one argument. Own session: the job
    survives the app, and its process group is the job."""
    with open(run_dir / rundir.LOG, "ab") as logf:
        return subprocess.Popen(argv, cwd=str(ROOT), env=env, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


class Supervisor:
    """`gpus` simulates a machine with that many GPUs (tests; PREFLAB_GPUS does the same for the app); `spawn`
    replaces `spawn_job`, so a test can see each job's command and environment."""

    def __init__(self, ctx: AppContext, poll_s: float = 0.25, gpus: int | None = None,
                 spawn: Callable[[list[str], dict[str, str], Path], subprocess.Popen] = spawn_job):
        self.ctx, self.db, self.poll_s, self._spawn = ctx, ctx.db, poll_s, spawn
        self.gpus = machine_gpus(gpus)
        self.devices = self.gpus or [CPU]
        self._devices: dict[str, list[str]] = {}   # run id -> the devices its job runs on
        self._exiting: dict[str, tuple[subprocess.Popen, list[str]]] = {}   # ended jobs whose processes linger
        self._offsets: dict[str, int] = {}       # run id -> bytes of metrics.jsonl ingested
        self._files: dict[str, set[str]] = {}    # run id -> instance files ingested
        self._procs: dict[str, subprocess.Popen] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_discovery = 0.0
        # pauses the jobs this app started while a labeling request is served (see app.priority)
        self.labeling_first = LabelingFirst(lambda: list(self._procs.values()))

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> "Supervisor":
        for (pid,) in self.db.fetchall("SELECT pid FROM runs WHERE state IN ('running', 'stopping') AND origin = 'app'"):
            continue_job(pid)   # the app may have stopped while it had a job paused for a labeling request
        atexit.register(self.labeling_first.release)   # and on a normal exit (Ctrl-C) it leaves none paused
        self._thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=5)
        self.labeling_first.release()
        atexit.unregister(self.labeling_first.release)

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the supervisor must outlive any one bad run
                log.exception("supervisor tick failed")
            self._wake.wait(self.poll_s)
            self._wake.clear()

    # -- one pass -------------------------------------------------------------------------------------------------
    def tick(self) -> None:
        self.labeling_first.enforce()
        if time.time() - self._last_discovery >= DISCOVER_EVERY_S:
            self.discover()
        # reads on the supervisor's own cursor and writes only when something changed: four ticks a second must
        # not queue up behind, or hold up, annotators saving labels on the shared connection
        reads = self.db.reader()
        for run_id, run_dir, origin, step, total in reads.fetchall(
                "SELECT id, run_dir, origin, step, total_steps FROM runs WHERE state IN ('running', 'stopping') "
                "OR (origin = 'external' AND state = 'queued') ORDER BY created_at"):
            if origin == "external":
                self._watch_external(run_id, Path(run_dir))
            else:
                self._watch(run_id, Path(run_dir), (step, total))
        self._start_queued(reads)

    def _start_queued(self, reads) -> None:
        """Start the queued jobs that fit on the free devices, first in, first out (app/devices.py)."""
        busy = {d for run_id, run_dir in reads.fetchall("SELECT id, run_dir FROM runs WHERE state IN ('running', "
                                                        "'stopping') AND origin = 'app'")
                for d in self._devices_of(run_id, Path(run_dir))}
        # a job that has said it ended may still be saving or freeing GPU memory: its devices are taken until it exits
        self._exiting = {r: (p, ds) for r, (p, ds) in self._exiting.items() if p.poll() is None}
        busy.update(d for _, ds in self._exiting.values() for d in ds)
        queued, dirs = [], {}
        for run_id, run_dir, config in reads.fetchall("SELECT id, run_dir, config FROM runs WHERE state = 'queued' "
                                                      "AND origin = 'app' ORDER BY created_at"):
            wanted = int(json.loads(config or "{}").get("gpus") or 1)
            if wanted > len(self.devices):   # would hold up the queue for ever
                error = f"This job asks for {wanted} GPUs; this machine has {len(self.gpus) or 'none'}."
                rundir.write_status(run_dir, state="failed", error=error)
                self._finish(run_id, Path(run_dir), "failed", error)
                continue
            queued.append((run_id, wanted))
            dirs[run_id] = Path(run_dir)
        for run_id, devices in next_launches(queued, self.devices, busy):
            self._launch(run_id, dirs[run_id], devices)

    def _devices_of(self, run_id: str, run_dir: Path) -> list[str]:
        """The devices a running job holds; after an app restart, as its status.json says."""
        if run_id not in self._devices:
            st = rundir.read_status(run_dir)
            if st is None:
                return self.devices   # caught mid-write: count it as holding everything until the next tick
            self._devices[run_id] = st.get("devices") or self.devices   # unknown (an older job): the whole machine
        return self._devices[run_id]

    # -- runs the app did not start ---------------------------------------------------------------------------------
    def discover(self) -> list[str]:
        """List run directories that appeared under the app's runs folder without the app creating them, such as
        a Flower coordinator's run (`python -m training.federated.flower PREFLAB_HOME/runs/NAME ...`): they get a
        row, their metrics are ingested and charted like any run, but the app never starts or stops them."""
        self._last_discovery = time.time()
        root = self.ctx.runs_dir
        if not root.is_dir():
            return []
        added = []
        with self.db.lock:   # create_run holds the lock while it lays out a directory and adds its row
            known = {k for row in self.db.fetchall("SELECT id, run_dir FROM runs") for k in row}
            for d in sorted(root.iterdir()):
                if d.name in known or str(d) in known or not (d / rundir.CONFIG).is_file() \
                        or not (d / rundir.STATUS).is_file():
                    continue
                cfg, st = rundir.read_config(d) or {}, rundir.read_status(d) or {}
                state = st.get("state") if st.get("state") in rundir.STATES else "queued"
                self.db.execute("""INSERT INTO runs (id, name, kind, algorithm, config, run_dir, state, origin, step,
                                                     total_steps)
                                   VALUES (?, ?, ?, ?, ?, ?, ?, 'external', ?, ?)""",
                                [d.name, f"{d.name} (external)", str(cfg.get("kind", "train")), cfg.get("algorithm"),
                                 json.dumps(cfg), str(d), state, int(st.get("step") or 0), st.get("total")])
                added.append(d.name)
                log.info("found run %s started outside the app (%s)", d.name, state)
        return added

    def _watch_external(self, run_id: str, run_dir: Path) -> None:
        """Follow a run driven from outside: its status.json is the truth, except that a running one whose
        heartbeat stopped is marked failed."""
        if not run_dir.is_dir():
            self._finish(run_id, run_dir, "failed", "Its run directory is gone.")
            return
        self.ingest(run_id, run_dir)
        st = rundir.read_status(run_dir)
        if st is None:
            return   # caught mid-write, or not written yet: look again next tick
        state = st.get("state", "queued")
        if state in rundir.FINAL_STATES:
            self.ingest(run_id, run_dir)
            self._finish(run_id, run_dir, state, st.get("error"))
        elif state == "running" and time.time() - float(st.get("heartbeat", 0)) > rundir.STALE_AFTER_S:
            reason = f"No heartbeat for more than {rundir.STALE_AFTER_S:.0f} s from the process driving this run."
            self._finish(run_id, run_dir, "failed", reason)
        else:
            self.db.execute("UPDATE runs SET state = ?, step = ?, total_steps = ? WHERE id = ?",
                            [state, int(st.get("step") or 0), st.get("total"), run_id])

    def _launch(self, run_id: str, run_dir: Path, devices: list[str]) -> None:
        threads = max(1, job_threads() // len(self.devices))   # each device's share of the cores
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               # below the app's priority and leaving it a core: labeling stays responsive while a job trains
               "PREFLAB_JOB_NICE": os.environ.get("PREFLAB_JOB_NICE", str(JOB_NICE)),
               "PREFLAB_JOB_THREADS": os.environ.get("PREFLAB_JOB_THREADS", str(threads)),
               "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(STOP_GRACE_S)}
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        proc = self._spawn(job_command(run_dir, len(devices) if self.gpus else 1), env, run_dir)
        self._procs[run_id], self._devices[run_id] = proc, devices
        rundir.write_status(run_dir, state="running", pid=proc.pid, phase="starting", error=None, devices=devices)
        self.db.execute("UPDATE runs SET state = 'running', pid = ?, started_at = coalesce(started_at, current_timestamp),"
                        " error = NULL WHERE id = ?", [proc.pid, run_id])
        log.info("started run %s on %s (pid %s)", run_id, ",".join(devices), proc.pid)

    def _watch(self, run_id: str, run_dir: Path, shown: tuple = (None, None)) -> None:
        """Follow a job the app started; `shown` is the (step, total) its row holds now."""
        proc = self._procs.get(run_id)
        if proc is not None:
            proc.poll()   # reap a finished child so its pid reads as gone
        self.ingest(run_id, run_dir)
        st = rundir.read_status(run_dir)
        if st is None and (run_dir / rundir.STATUS).exists():
            return   # caught mid-write (no atomic rename on some file systems): look again next tick
        st = st or {}
        state = st.get("state", "running")
        own_child_alive = proc is not None and proc.poll() is None
        if state in rundir.FINAL_STATES:
            self.ingest(run_id, run_dir)
            self._finish(run_id, run_dir, state, st.get("error"))
        elif not own_child_alive and not rundir.is_alive(st):
            # our own child is alive as long as its process is (a busy machine can delay its heartbeat); a job
            # from before an app restart, by its pid and heartbeat
            reason = "The job process ended without saying why"
            tail = _log_tail(run_dir)
            if tail:
                reason += f"; the last line of its log: {tail}"
            rundir.write_status(run_dir, state="failed", error=reason + ".")
            self._finish(run_id, run_dir, "failed", reason + ".")
        progress = (int(st.get("step") or 0), st.get("total"))
        if progress != shown:
            self.db.execute("UPDATE runs SET step = ?, total_steps = ? WHERE id = ?", [*progress, run_id])

    def _finish(self, run_id: str, run_dir: Path, state: str, error: str | None) -> None:
        self.db.execute("UPDATE runs SET state = ?, error = ?, finished_at = current_timestamp WHERE id = ?",
                        [state, error, run_id])
        proc, devices = self._procs.pop(run_id, None), self._devices.pop(run_id, None)
        if proc is not None and proc.poll() is None and devices:
            self._exiting[run_id] = (proc, devices)
        kind = self.db.scalar("SELECT kind FROM runs WHERE id = ?", [run_id])
        if kind == "generate" and blind_eval.evaluation_of(self.db, run_id):
            blind_eval.job_ended(self.db, run_id, state)   # answers for a blind evaluation, not the labeling queues
        elif state == "finished" and kind == "generate":
            self._tasks_from_generations(run_id, run_dir)
        elif state == "finished" and kind == "train":
            self._score(run_id)
        elif state == "finished" and kind == "score":
            from app import queue_scores

            queue_scores.ingest(self.db, run_id, run_dir)
        log.info("run %s %s", run_id, state)

    def _score(self, run_id: str) -> None:
        """A finished training run is scored on the evaluation set, its base model once per set version
        (app/scoring.py), and re-scores the open tasks where a queue serves the model's least sure first
        (app/queue_scores.py); a failure to queue either is logged, it never fails the run."""
        from app import queue_scores
        from app.scoring import queue_scores as queue_evaluation

        for what, queue in (("scoring", lambda: queue_evaluation(self.ctx, run_id)),
                            ("queue scores", lambda: queue_scores.queue_scoring(self.ctx))):
            try:
                queue()
            except Exception:  # noqa: BLE001 - the run itself finished fine
                log.exception("could not queue the %s after run %s", what, run_id)

    def _tasks_from_generations(self, run_id: str, run_dir: Path) -> None:
        """Answers of a generation job join the labeling queues: one good/bad task per answer, and a blind pair
        task for each prompt with two or more answers."""
        from labeling.queue import create_task

        path = run_dir / rundir.GENERATIONS
        if not path.exists():
            return
        gen = pd.read_parquet(path)
        for (prompt, site), g in gen.groupby(["prompt", gen["site"].fillna("")], sort=False):
            answers = [a for a in g.sort_values("sample")["response"].tolist() if a and a.strip()]
            for a in answers:
                create_task(self.db, "single", prompt, [a], site=site or None, source=f"run:{run_id}", run_id=run_id)
            if len(answers) >= 2:
                create_task(self.db, "pair", prompt, answers[:2], site=site or None, source=f"run:{run_id}",
                            run_id=run_id)

    # -- ingest ---------------------------------------------------------------------------------------------------
    def ingest(self, run_id: str, run_dir: Path) -> int:
        """Bring new metrics lines and instance files into DuckDB. Returns the number of new metric rows."""
        if run_id not in self._offsets:   # first sight in this process: start clean, so nothing is doubled
            with self.db.transaction():
                self.db.execute("DELETE FROM run_scalars WHERE run_id = ?", [run_id])
                self.db.execute("DELETE FROM run_instances WHERE run_id = ?", [run_id])
            self._offsets[run_id], self._files[run_id] = 0, set()
        records, offset = rundir.read_metrics(run_dir, self._offsets[run_id])
        rows = [(run_id, int(r.get("step", 0)), k, float(v), r.get("site"), r.get("split", "train"))
                for r in records for k, v in r.items()
                if k not in META_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)]
        new_files = [f for f in rundir.instance_files(run_dir) if f.name not in self._files[run_id]]
        if not rows and not new_files:
            self._offsets[run_id] = offset
            return 0
        with self.db.transaction():
            if rows:
                self.db.con.executemany("INSERT INTO run_scalars (run_id, step, name, value, site, split) "
                                        "VALUES (?, ?, ?, ?, ?, ?)", rows)
            for f in new_files:
                self.db.execute("""INSERT INTO run_instances SELECT ?, step, example_id, task_id, site, side,
                                   policy_logp, ref_logp, n_tokens, m_theta, beta_i, loss FROM read_parquet(?)""",
                                [run_id, str(f)])
        self._offsets[run_id] = offset
        self._files[run_id].update(f.name for f in new_files)
        return len(rows)

    # -- user actions ---------------------------------------------------------------------------------------------
    def stop(self, run_id: str) -> str:
        row = self.db.fetchone("SELECT state, pid, run_dir FROM runs WHERE id = ?", [run_id])
        if row is None:
            raise UserError(f"There is no run {run_id}.")
        state, pid, run_dir = row
        self._refuse_external(run_id, "stopped")
        if state == "queued":
            self.db.execute("UPDATE runs SET state = 'stopped' WHERE id = ?", [run_id])
            rundir.write_status(run_dir, state="stopped")
            return "Removed from the queue."
        if state != "running" or not pid:
            raise UserError(f"Run {run_id} is {state}; only a running or queued run can be stopped.")
        try:
            # the job's process group: the job checkpoints at the end of its current step; torchrun passes the
            # signal on to its processes (each in a session of its own) and waits STOP_GRACE_S for them
            os.killpg(int(pid), signal.SIGTERM)
        except ProcessLookupError:
            pass
        self.db.execute("UPDATE runs SET state = 'stopping' WHERE id = ?", [run_id])
        return "Stopping: the job saves a checkpoint at the end of its current step."

    def resume(self, run_id: str) -> str:
        state = self.db.scalar("SELECT state FROM runs WHERE id = ?", [run_id])
        self._refuse_external(run_id, "resumed")
        if state not in ("stopped", "failed"):
            raise UserError(f"Run {run_id} is {state}; only a stopped or failed run can be resumed.")
        self.db.execute("UPDATE runs SET state = 'queued', error = NULL, finished_at = NULL WHERE id = ?", [run_id])
        self.wake()
        return "Queued again: it continues from its last checkpoint."

    def _refuse_external(self, run_id: str, verb: str) -> None:
        if self.db.scalar("SELECT origin FROM runs WHERE id = ?", [run_id]) == "external":
            raise UserError(f"Run {run_id} was started outside the app (a Flower run); it is {verb} where it "
                            "was started (`flwr stop` at the coordinator), not here.")

    def delete(self, run_id: str) -> str:
        import shutil

        row = self.db.fetchone("SELECT state, run_dir FROM runs WHERE id = ?", [run_id])
        if row is None:
            raise UserError(f"There is no run {run_id}.")
        if row[0] in ("running", "stopping"):
            raise UserError("Stop the run before deleting it.")
        with self.db.transaction():   # holds the lock until the folder is gone: discovery must not re-list it
            for t in ("run_scalars", "run_instances"):
                self.db.execute(f"DELETE FROM {t} WHERE run_id = ?", [run_id])
            self.db.execute("DELETE FROM runs WHERE id = ?", [run_id])
            shutil.rmtree(row[1], ignore_errors=True)
        self._offsets.pop(run_id, None)
        return f"Run {run_id} deleted."


def _log_tail(run_dir: Path) -> str:
    try:
        lines = [l.strip() for l in (run_dir / rundir.LOG).read_text(errors="replace").splitlines() if l.strip()]
    except FileNotFoundError:
        return ""
    return lines[-1][-300:] if lines else ""

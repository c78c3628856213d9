"""Benchmark: the app while a job trains. `python -m bench.live`, a report on stdout (JSON on the last line).

The app's own structure, in one process: one database, the job supervisor thread, a real training job in its own
process (SmolLM2 + LoRA DPO on HH pairs, as the app launches it), a viewer that rebuilds the Runs page's charts
every 2 s (what an open Runs tab does), and annotators saving labels.

- Chart latency: for every trainer step, the time from the job writing its metrics line to the first Runs-page
  refresh whose loss chart holds that step (ingest + refresh period; the browser's drawing is not included).
  Target: at most 3 s.
- Labeling latency: "save a label + fetch the next task" (the labeling benchmark's operation, on its database
  of `--tasks` tasks and `--annotations` annotations) before, during and after the job, and during it in bursts
  that alternate with bursts while the job is paused (SIGSTOP). Target: p50 and p95 during training at most
  1.2 x idle. The paired figure (job computing vs paused, same minutes, same database) is the one judged: the
  before/after phases are minutes apart on a database that keeps growing, and on a shared 2-core machine they
  differed from each other by up to half; they are reported too.
- Each decision during training is served as the Label page serves it: through `AppContext.labeling`, which
  pauses the job for the request when labeling-first is on (app.priority). Bursts without it alternate with those,
  so the figure without it comes from the same run (`--no-labeling-first` turns it off altogether). The report
  says how much of the job's time labeling took.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from app.context import AppContext
from bench import labeling as bench_label
from bench.hh import hh_pairs
from bench.training import default_model, fitting


def hh_training_pairs(model: Path, n: int, max_prompt_length: int):
    from training.modeling import load_tokenizer

    return fitting(hh_pairs(), load_tokenizer(model), max_prompt_length, n)


class Viewer(threading.Thread):
    """An open Runs tab: every `period` s the page's refresh builds all its charts; records when each step first
    shows in the loss chart."""

    def __init__(self, ctx: AppContext, run_id: str, period: float = 2.0):
        super().__init__(daemon=True)
        self.ctx, self.run_id, self.period = ctx, run_id, period
        self.seen: dict[int, float] = {}
        self.refresh_ms: list[float] = []
        self.done = threading.Event()

    def run(self) -> None:
        from app.pages.runs import figures, status_line

        while not self.done.wait(self.period):
            t0 = time.perf_counter()
            status_line(self.ctx, self.run_id)
            figs = figures(self.ctx, self.run_id)
            now = time.time()
            self.refresh_ms.append(1000 * (time.perf_counter() - t0))
            loss = figs[0][1]           # (applies, figure) per panel; the first panel is the loss chart
            steps = [int(x) for tr in (loss.data if loss is not None else []) for x in (tr.x if tr.x is not None else [])]
            for s in steps:
                self.seen.setdefault(s, now)


def paused_burst(ctx: AppContext, pid: int, seed: int, think_s: float = 0.0) -> list[float]:
    """A burst of labeling with the job paused (SIGSTOP): the idle baseline taken in the same minutes as the
    bursts during training, on the same database, so the drift of a long run and a noisy machine cancel out."""
    import signal

    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return []
    try:
        time.sleep(0.2)                  # let the job's last work leave the CPU
        return bench_label.measure(ctx.db, 50, seed=seed, think_s=think_s)
    finally:
        os.kill(pid, signal.SIGCONT)


def summary(times: list[float]) -> dict:
    return {"ops": len(times), "p50_ms": round(statistics.median(times), 2),
            "p95_ms": round(bench_label.percentile(times, 95), 2), "max_ms": round(max(times), 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.live", description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=default_model())
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--annotations", type=int, default=1_000_000)
    ap.add_argument("--ops", type=int, default=400, help="labeling operations per phase")
    ap.add_argument("--steps", type=int, default=40, help="training steps of the job")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    ap.add_argument("--job-nice", type=int, default=None,
                    help="override the job's CPU niceness (the app's default: PREFLAB_JOB_NICE or 10)")
    ap.add_argument("--job-threads", type=int, default=None,
                    help="override the job's CPU threads (the app's default: PREFLAB_JOB_THREADS or cores - 1)")
    ap.add_argument("--no-viewer", action="store_true", help="no open Runs tab (chart latency is then not measured)")
    ap.add_argument("--no-labeling-first", action="store_true",
                    help="never pause the job for labeling requests (app.priority), whatever PREFLAB_LABELING_FIRST says")
    ap.add_argument("--think-ms", type=float, default=0,
                    help="pause before each decision during training (not timed): a person's pace, not back to back")
    ap.add_argument("--no-pause", action="store_true",
                    help="compare with the idle phases before and after only, not with bursts while the job is paused")
    args = ap.parse_args(argv)
    if not (args.model / "config.json").exists():
        print(json.dumps({"error": f"No model at {args.model}. Run ./run.sh once (it converts SmolLM2) or pass --model."}))
        return 2
    from app.launch import create_run
    from app.supervisor import JOB_NICE, Supervisor, job_threads
    from storage import rundir
    from training.config import JobConfig

    if args.job_nice is not None:
        os.environ["PREFLAB_JOB_NICE"] = str(args.job_nice)
    if args.job_threads is not None:
        os.environ["PREFLAB_JOB_THREADS"] = str(args.job_threads)
    with tempfile.TemporaryDirectory(prefix="preflab-live-") as tmp:
        ctx = AppContext(Path(tmp))
        t0 = time.perf_counter()
        bench_label.build(ctx.db, args.tasks, args.annotations)
        print(f"database: {args.tasks:,} tasks, {args.annotations:,} annotations, built in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        bench_label.measure(ctx.db, 50, seed=9)          # warm the caches, like a page that has been used
        before = bench_label.measure(ctx.db, args.ops, seed=0)
        print(f"labeling, idle: {summary(before)}", flush=True)

        cfg = JobConfig(algorithm="dpo", model=str(args.model), batch_size=4, max_length=256, max_prompt_length=192,
                        learning_rate=5e-4, max_steps=args.steps, precision=args.precision, checkpoint_every=0)
        run_id = create_run(ctx, cfg, hh_training_pairs(args.model, 4 * args.steps, cfg.max_prompt_length))
        ctx.supervisor = sup = Supervisor(ctx).start()
        gate = sup.labeling_first
        gate.enabled = gate.enabled and not args.no_labeling_first
        viewer = Viewer(ctx, run_id, period=1e9 if args.no_viewer else 2.0)
        viewer.start()
        state = lambda: ctx.db.fetchone("SELECT state, step FROM runs WHERE id = ?", [run_id])  # noqa: E731
        try:
            while state()[0] in ("queued", "running") and state()[1] < 2:   # past loading and the reference pass
                time.sleep(0.2)
            during, ungated, paused, k, first_step = [], [], [], 0, state()[1]
            pid = ctx.db.scalar("SELECT pid FROM runs WHERE id = ?", [run_id])
            t_train, think = time.time(), args.think_ms / 1000
            while state()[0] == "running" and (len(during) < args.ops or state()[1] < args.steps - 1):
                # bursts of 50 decisions, all through the run: as the app serves them, then (with labeling-first
                # on) without the pause, then with the job paused all along
                during += bench_label.measure(ctx.db, 50, seed=100 + k, around=ctx.labeling, think_s=think)
                if gate.enabled:
                    ungated += bench_label.measure(ctx.db, 50, seed=900 + k, think_s=think)
                if pid and not args.no_pause:
                    paused += paused_burst(ctx, int(pid), seed=500 + k, think_s=think)
                k += 1
                time.sleep(0.5)
            if not during:
                print(json.dumps({"error": f"The job was {state()[0]} at step {state()[1]} before labeling could be "
                                           f"measured during it: give it more --steps."}))
                return 2
            t_train = time.time() - t_train
            print(f"labeling, while the job trains (steps {first_step}..{state()[1]}), labeling-first "
                  f"{'on' if gate.enabled else 'off'}: {summary(during)}", flush=True)
            if ungated:
                print(f"labeling, while the job trains, without labeling-first: {summary(ungated)}", flush=True)
            if paused:
                print(f"labeling, in between with the job paused: {summary(paused)}", flush=True)
            while state()[0] in ("queued", "running"):
                time.sleep(0.5)
            time.sleep(2.5)                                   # one last refresh
        finally:                       # no job, and no thread, may outlive the database it reads
            if state()[0] in ("queued", "running"):
                sup.stop(run_id)
                deadline = time.time() + 60
                while state()[0] in ("queued", "running", "stopping") and time.time() < deadline:
                    time.sleep(0.5)
            viewer.done.set()
            viewer.join()
            sup.shutdown()
        final = state()[0]
        after = bench_label.measure(ctx.db, args.ops, seed=2)
        print(f"labeling, idle again: {summary(after)}", flush=True)

        records, _ = rundir.read_metrics(ctx.runs_dir / run_id)
        written = {int(r["step"]): r["time"] for r in records if r.get("split", "train") == "train"}
        lat = [viewer.seen[s] - t for s, t in written.items() if s in viewer.seen]
        missing = sorted(set(written) - set(viewer.seen))
        idle_p50 = (statistics.median(before) + statistics.median(after)) / 2
        idle_p95 = (bench_label.percentile(before, 95) + bench_label.percentile(after, 95)) / 2
        report = {
            "job": {"state": final, "steps": len(written), "precision": args.precision,
                    "nice": int(os.environ.get("PREFLAB_JOB_NICE", JOB_NICE)),
                    "threads": int(os.environ.get("PREFLAB_JOB_THREADS", job_threads())),
                    "labeling_first": gate.enabled,
                    "paused_for_labeling_share": round(gate.paused_s / t_train, 3) if t_train else None,
                    "steps_per_s": round((len(written) - 1) / (max(written.values()) - min(written.values())), 3)
                    if len(written) > 1 else None},
            "chart_latency_s": {"steps": len(lat), "p50": round(statistics.median(lat), 2) if lat else None,
                                "max": round(max(lat), 2) if lat else None, "never_shown": missing,
                                "refresh_ms_p50": round(statistics.median(viewer.refresh_ms), 1) if viewer.refresh_ms else None},
            "labeling": {"before": summary(before), "during": summary(during), "after": summary(after),
                         "during_over_idle_p50": round(statistics.median(during) / idle_p50, 3),
                         "during_over_idle_p95": round(bench_label.percentile(during, 95) / idle_p95, 3)},
        }
        lab = report["labeling"]
        if paused:   # the paired figure: same minutes, same database, the job computing or not
            lab["paused"] = summary(paused)
            lab["during_over_paused_p50"] = round(statistics.median(during) / statistics.median(paused), 3)
            lab["during_over_paused_p95"] = round(bench_label.percentile(during, 95)
                                                  / bench_label.percentile(paused, 95), 3)
        if paused and ungated:   # the same, for the bursts served without labeling-first
            lab["without_labeling_first"] = summary(ungated)
            lab["without_over_paused_p50"] = round(statistics.median(ungated) / statistics.median(paused), 3)
            lab["without_over_paused_p95"] = round(bench_label.percentile(ungated, 95)
                                                   / bench_label.percentile(paused, 95), 3)
        key = "during_over_paused" if paused else "during_over_idle"
        ok = (final == "finished" and lat and max(lat) <= 3.0 and not missing
              and lab[f"{key}_p50"] <= 1.2 and lab[f"{key}_p95"] <= 1.2)
        report["pass"] = bool(ok)
        print(f"chart latency: {report['chart_latency_s']}")
        print(f"labeling during / idle before and after: p50 {lab['during_over_idle_p50']}x, "
              f"p95 {lab['during_over_idle_p95']}x (target <= 1.2x)")
        if paused:
            print(f"labeling during / job paused in between: p50 {lab['during_over_paused_p50']}x, "
                  f"p95 {lab['during_over_paused_p95']}x (target <= 1.2x)")
        if "without_labeling_first" in lab:
            print(f"  without labeling-first, same run: p50 {lab['without_over_paused_p50']}x, "
                  f"p95 {lab['without_over_paused_p95']}x; the job was paused for labeling "
                  f"{100 * report['job']['paused_for_labeling_share']:.1f}% of the time")
        print(json.dumps(report))
        ctx.db.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

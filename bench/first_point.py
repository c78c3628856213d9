"""Benchmark: seconds from pressing Train to the first chart point, in the browser. `python -m bench.first_point`.

What a new user meets: the demo project as ./run.sh sets it up (SmolLM2, the demo's 153 pairs, here each labeled
by one annotator), the real app in its own process (jobs at low priority, labeling first), Debian chromium through
Playwright. The Train page with its default settings: "Preview & check", then Train (the clock starts at the
click), then the Runs page until one of its charts holds a point. The job's own times (process start, its first
metrics line) come from the run directory. Target: 20 s. One JSON object on stdout.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.app_process import running_app
from bench.training import default_model

CHROMIUM = "/usr/bin/chromium"
TARGET_S = 20.0


def labeled_demo(home: Path, model: Path) -> int:
    """The demo project with every pair labeled (the second answer better: what it is does not change the speed)."""
    from app.context import AppContext
    from app.first_start import seed_demo
    from labeling import queue as Q

    os.environ["PREFLAB_MODEL"] = str(model)
    ctx = AppContext(home=home)
    seed_demo(ctx)
    n = 0
    while (task := Q.next_task(ctx.db, "demo-annotator", kind="pair")) is not None:
        Q.save_annotation(ctx.db, task["task_id"], "demo-annotator", "b", source="bench")
        n += 1
    ctx.db.close()
    return n


@contextlib.contextmanager
def app(home: Path, model: Path):
    """The real app on the demo home with `model` as its default model; yields its address."""
    with running_app(home, env={"PREFLAB_MODEL": str(model)}) as (url, _proc):
        yield url


def first_point(url: str, timeout_s: float) -> dict:
    """Press Train with the page's defaults; seconds until the Runs page draws a chart point (None: not within
    timeout_s)."""
    from playwright.sync_api import TimeoutError as PageTimeout
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60000)
        try:
            page.goto(url)
            page.wait_for_selector("#label-start")
            page.get_by_role("tab", name="Train").click()
            page.click("#train-check")
            page.wait_for_function("() => document.body.innerText.includes('Ready to train')")
            clicked = time.time()
            page.click("#train-start")
            page.wait_for_function("() => document.body.innerText.includes('queued. Watch it')")
            run_id = page.inner_text("#train-report").split("Run ")[1].split(" ")[0].strip("*")
            page.get_by_role("tab", name="Runs").click()
            try:
                page.wait_for_function("() => document.querySelectorAll('[id^=runs-plot] .scatterlayer .trace .point, "
                                       "[id^=runs-plot] .scatterlayer .trace path.js-line').length > 0",
                                       timeout=timeout_s * 1000, polling=100)
                shown = round(time.time() - clicked, 1)
            except PageTimeout:
                shown = None
        finally:
            browser.close()
    return {"run_id": run_id, "clicked": clicked, "first_point_s": shown}


def stop_job(home: Path, run_id: str, timeout_s: float = 120) -> str:
    """SIGTERM to the job's process group, as the Runs page's Stop does; its final state."""
    import signal

    from storage import rundir

    run = home / "runs" / run_id
    with contextlib.suppress(ProcessLookupError, KeyError, TypeError):
        os.killpg(int((rundir.read_status(run) or {})["pid"]), signal.SIGTERM)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        state = (rundir.read_status(run) or {}).get("state")
        if state in ("stopped", "finished", "failed"):
            return state
        time.sleep(0.5)
    return "still running"


def job_times(home: Path, run_id: str, clicked: float) -> dict:
    """From the run directory: when the job's first metrics line was written, after the click."""
    from storage import rundir

    run = home / "runs" / run_id
    lines = rundir.read_metrics(run)[0]
    cfg = json.loads((run / rundir.CONFIG).read_text())
    first = {split: min((r["time"] for r in lines if r.get("split") == split), default=None) for split in ("eval", "train")}
    return {"algorithm": cfg["algorithm"], "batch_size": cfg["batch_size"], "precision": cfg.get("precision"),
            **{f"first_{k}_line_s": round(v - clicked, 1) for k, v in first.items() if v is not None}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.first_point", description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=default_model())
    ap.add_argument("--timeout", type=float, default=300, help="seconds to wait for the first point")
    args = ap.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(json.dumps({"error": "Debian chromium is not installed (apt-get install chromium)."}))
        return 2
    with tempfile.TemporaryDirectory(prefix="preflab-first-point-") as tmp:
        home = Path(tmp)
        pairs = labeled_demo(home, args.model)
        with app(home, args.model) as url:
            seen = first_point(url, args.timeout)
            state = stop_job(home, seen["run_id"])
            out = {"labeled_pairs": pairs, **seen, **job_times(home, seen["run_id"], seen["clicked"]), "job_state": state,
                   "target_s": TARGET_S, "load_average": os.getloadavg()[0]}
    out["pass"] = out["first_point_s"] is not None and out["first_point_s"] <= TARGET_S
    print(json.dumps(out))
    return 0 if out["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())

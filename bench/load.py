"""Load benchmark: many annotators labeling at a person's pace against the real server, over HTTP.

    python -m bench.load [--annotators 100] [--seconds 300] [--pace 2 4] [--tasks 20000]

Starts `python -m app serve --auth` on a free port with a fresh PREFLAB_HOME holding `--tasks` good/bad tasks
(two labels each) and one account per annotator. Each simulated annotator logs in, opens the Label page's queue
and then, every `--pace` seconds (uniformly random), presses good or bad, exactly as the browser does it: a Gradio
queue event with the session's state, its result read from the session's event stream. Decision latency is the
time from sending the key press to receiving the next task. At the end the app is stopped and the database is
read: every decision the page acknowledged ("Saved") must be stored. Prints one JSON object; the goal is
p95 <= 150 ms, 0 errors, 0 labels lost.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.app_process import running_app


def seed(home: Path, n_tasks: int, n_annotators: int) -> list[tuple[str, str]]:
    """Tasks and accounts in a fresh home; returns (name, password) per annotator."""
    from app.context import AppContext
    from labeling.accounts import set_user
    from labeling.importer import import_file

    ctx = AppContext(home=home)
    src = home / "tasks.jsonl"
    with open(src, "w") as f:
        for i in range(n_tasks):
            f.write(json.dumps({"prompt": f"Customer question {i}: how do I reset unit {i % 97}?",
                                "response": f"Hold the reset button of unit {i % 97} for {i % 9 + 2} seconds.",
                                "site": ("plant-a", "plant-b", "plant-c")[i % 3]}) + "\n")
    assert import_file(ctx.db, src, required=2)["ok"]
    people = [(f"annotator{i:03d}", f"password-{i:03d}") for i in range(n_annotators)]
    for name, password in people:
        set_user(ctx.db, name, password)
    ctx.db.close()
    return people


class Annotator:
    """One person on the Label page: a login, a browser session, and the page's own queue events."""

    def __init__(self, url: str, name: str, password: str):
        self.name = name
        self.client = httpx.Client(base_url=url, timeout=60)
        r = self.client.post("/login", data={"username": name, "password": password})
        r.raise_for_status()
        config = self.client.get("/config").json()
        self.deps = {d["api_name"]: d for d in config["dependencies"] if d.get("api_name")}
        self.session = f"load-{name}-{random.getrandbits(32):08x}"

    def call(self, api: str, data: list) -> tuple[float, dict]:
        """Send one event as the page does; (seconds until its result, the completion message)."""
        dep = self.deps[api]
        t0 = time.perf_counter()
        r = self.client.post("/gradio_api/queue/join", json={
            "data": data, "event_data": None, "fn_index": dep["id"], "trigger_id": dep["targets"][0][0],
            "session_hash": self.session})
        r.raise_for_status()
        event_id = r.json()["event_id"]
        with self.client.stream("GET", "/gradio_api/queue/data", params={"session_hash": self.session}) as s:
            for line in s.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed" and msg.get("event_id") == event_id:
                    return time.perf_counter() - t0, msg
        raise RuntimeError(f"the event stream of {self.name} ended without the result")


def work(person: Annotator, until: float, pace: tuple[float, float], out: dict, lock: threading.Lock) -> None:
    """Label at a person's pace until `until`; record latencies, acknowledged saves and errors."""
    rng = random.Random(person.name)
    mine = {"latencies": [], "saved": 0, "errors": [], "nothing_left": 0}
    try:
        _, first = person.call("label_next", ["Good / bad", "(all sites)"])
        if not first.get("success"):
            mine["errors"].append(str(first.get("output"))[:200])
        while True:
            time.sleep(rng.uniform(*pace))
            if time.time() >= until:
                break
            key = rng.choice(("a", "x"))
            seconds, msg = person.call(f"label_{key}", [None, "Good / bad", "(all sites)", ""])
            note = msg.get("output", {}).get("data", [None, ""])[1] if msg.get("success") else None
            if not msg.get("success"):
                mine["errors"].append(str(msg.get("output"))[:200])
            elif "Saved" in (note or ""):
                mine["saved"] += 1
                mine["latencies"].append(seconds)
            else:
                mine["nothing_left"] += 1
    except Exception as e:  # noqa: BLE001 - a benchmark counts failures instead of stopping
        mine["errors"].append(f"{type(e).__name__}: {e}"[:200])
    with lock:
        out[person.name] = mine


def cpu_s(pid: int) -> float:
    """CPU seconds the server process has used (user + system): its cost per decision whatever else runs."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stored_labels(home: Path) -> dict[str, int]:
    from storage.db import open_db

    db = open_db(home / "preflab.duckdb")
    rows = dict(db.fetchall("""SELECT annotator, count(*) FROM annotations WHERE source = 'app'
                               AND value IN ('good', 'bad') GROUP BY annotator"""))
    db.close()
    return rows


def run(annotators: int, seconds: float, pace: tuple[float, float], tasks: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="preflab-load-") as tmp:
        home = Path(tmp)
        people = seed(home, tasks, annotators)
        with running_app(home, auth=True) as (url, proc):
            url = url.rstrip("/")
            t0 = time.perf_counter()
            with ThreadPoolExecutor(16) as pool:          # logins in parallel, as a team arriving at work
                persons = list(pool.map(lambda p: Annotator(url, *p), people))
            login_s = time.perf_counter() - t0
            results, lock = {}, threading.Lock()
            cpu0 = cpu_s(proc.pid)
            until = time.time() + seconds
            threads = [threading.Thread(target=work, args=(p, until, pace, results, lock)) for p in persons]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            server_cpu = cpu_s(proc.pid) - cpu0
        stored = stored_labels(home)
    latencies = sorted(x for r in results.values() for x in r["latencies"])
    errors = [e for r in results.values() for e in r["errors"]]
    acknowledged = sum(r["saved"] for r in results.values())
    lost = sum(max(0, r["saved"] - stored.get(name, 0)) for name, r in results.items())

    def ms(q: float) -> float | None:
        return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) if latencies else None

    return {"annotators": annotators, "seconds": seconds, "pace_s": list(pace), "tasks": tasks,
            "logins_s": round(login_s, 1), "decisions": len(latencies),
            "decisions_per_s": round(len(latencies) / seconds, 1),
            "p50_ms": ms(0.5), "p95_ms": ms(0.95), "max_ms": ms(1.0),
            "mean_ms": round(1000 * statistics.fmean(latencies), 1) if latencies else None,
            "server_cpu_ms_per_decision": round(1000 * server_cpu / len(latencies), 1) if latencies else None,
            "load_average": round(os.getloadavg()[0], 1),
            "errors": len(errors), "first_errors": errors[:3], "acknowledged": acknowledged,
            "stored": sum(stored.values()), "lost": lost,
            "nothing_left": sum(r["nothing_left"] for r in results.values())}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--annotators", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--pace", type=float, nargs=2, default=(2.0, 4.0), metavar=("MIN_S", "MAX_S"))
    ap.add_argument("--tasks", type=int, default=20_000)
    args = ap.parse_args(argv)
    out = run(args.annotators, args.seconds, tuple(args.pace), args.tasks)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()

"""SIGKILL while 8 annotators label: after a restart every acknowledged label is there.

The worker below is app-like: one process owns the DuckDB file (as the app does), 8 threads label through
labeling.queue exactly as the Label page handlers do, and a label is acknowledged on stdout only after
save_annotation has returned. The test kills it with SIGKILL mid-stream (twice: labeling resumes after the first
restart), reopens the file and checks every acknowledged label, and that no transaction was half applied.
"""
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from storage.db import open_db

ROOT = Path(__file__).resolve().parents[1]
ANNOTATORS = 8


def worker(path: str) -> None:
    from labeling import queue as Q

    db = open_db(path)
    if not db.scalar("SELECT count(*) FROM tasks"):
        for i in range(150):
            Q.create_task(db, "single", f"Is answer {i} right?", [f"answer {i}"], required=2)
        for i in range(100):
            Q.create_task(db, "pair", f"Which answer to {i}?", [f"first {i}", f"second {i}"], required=2)
    out = threading.Lock()
    print("READY", flush=True)

    def annotate(who: str) -> None:
        rng = random.Random(who + str(os.getpid()))
        while (task := Q.next_task(db, who, rng=rng)) is not None:
            if task["kind"] == "pair":
                value = Q.pair_value_from_shown(rng.choice("1230"), task["shown_order"])
            else:
                value = rng.choice(("good", "bad"))
            aid = Q.save_annotation(db, task["task_id"], who, value, shown_order=task["shown_order"], time_ms=1)
            with out:
                print(f"ACK {aid} {task['task_id']} {who} {value}", flush=True)
            time.sleep(0.002)

    threads = [threading.Thread(target=annotate, args=(f"ann{i}",)) for i in range(ANNOTATORS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("DONE", flush=True)


def run_and_kill(path: Path, n_acks: int) -> tuple[set, bool]:
    """Start the worker, SIGKILL it after n_acks acknowledgements; the acknowledged labels and whether it got
    to finish everything first."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.test_kill", str(path)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    acked, finished = set(), False
    try:
        for line in proc.stdout:
            if line.startswith("ACK "):
                aid, tid, who, value = line.split()[1:]
                acked.add((int(aid), tid, who, value))
                if len(acked) >= n_acks:
                    break
            elif line.startswith("DONE"):
                finished = True
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    if not acked and not finished:
        raise AssertionError(f"the worker acknowledged nothing: {proc.stderr.read()[-3000:]}")
    return acked, finished


def check(path: Path, acked: set) -> int:
    db = open_db(path)
    try:
        stored = set(db.fetchall("SELECT id, task_id, annotator, value FROM annotations"))
        lost = acked - stored
        assert not lost, f"{len(lost)} acknowledged label(s) lost, e.g. {sorted(lost)[:3]}"
        # the annotation and its n_done change commit together: no half-applied transaction survives a kill
        bad = db.fetchall("""
            WITH cur AS (SELECT task_id, annotator, arg_max(value, id) AS v FROM annotations GROUP BY ALL)
            SELECT t.id, t.n_done, count(cur.v) FILTER (WHERE cur.v NOT IN ('skip', 'retracted')) AS n
            FROM tasks t LEFT JOIN cur ON cur.task_id = t.id GROUP BY ALL HAVING n <> t.n_done OR n > t.required""")
        assert not bad, f"n_done out of step after the kill: {bad[:3]}"
        return len(stored)
    finally:
        db.close()


def test_sigkill_loses_no_acknowledged_label(tmp_path):
    path = tmp_path / "preflab.duckdb"
    first, _ = run_and_kill(path, 120)
    n1 = check(path, first)
    second, _ = run_and_kill(path, 120)               # restart on the killed file and keep labeling
    n2 = check(path, first | second)
    assert len(first) >= 120 and len(second) >= 120 and n2 >= n1 + 120
    # after the restart nobody was given a task they had already labeled
    again = {(t, w) for _, t, w, _ in first} & {(t, w) for _, t, w, _ in second}
    assert not again


def label_through_the_app(url: str, names: list[str], acked: list, stop: threading.Event, errors: list) -> None:
    """Each name is one simulated annotator with its own session, pressing `a` (good) through the Gradio API; a
    label is acknowledged when the call returns, by the prompt and decision the page lists first in its history."""
    from gradio_client import Client

    def one(name: str) -> None:
        try:
            c = Client(url, auth=(name, name + "-pw"), verbose=False)
            c.predict("Good / bad", "(all sites)", api_name="/label_next")
            while not stop.is_set():
                out = c.predict("Good / bad", "(all sites)", "", api_name="/label_a")
                if not any(isinstance(o, str) and o.startswith("Saved") for o in out):
                    break                                    # nothing left to label
                (hist,) = [o for o in out if isinstance(o, dict) and "decision" in o.get("headers", [])]
                _position, prompt, value, _time = hist["data"][0]     # the newest decision is listed first
                acked.append((prompt, name, value))
        except Exception as e:  # noqa: BLE001 - the app was killed under it: expected, unless nothing was acked
            errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in names]
    for t in threads:
        t.start()
    return threads


@pytest.mark.slow
def test_sigkill_of_the_real_app_with_8_annotators(tmp_path):
    """The same through `python -m app serve --auth` and its HTTP API, killed with SIGKILL mid-labeling."""
    from labeling.accounts import set_user
    from labeling import queue as Q
    from tests.browser import running_app

    home = tmp_path / "home"
    home.mkdir()
    names = [f"ann{i}" for i in range(ANNOTATORS)]
    db = open_db(home / "preflab.duckdb")
    for n in names:
        set_user(db, n, n + "-pw")
    for i in range(200):
        Q.create_task(db, "single", f"Is answer {i} right?", [f"answer {i}"], required=3)
    db.close()

    acked, errors = [], []
    for round_acks in (60, 30):                               # kill, restart, label more, kill again
        stop = threading.Event()
        with running_app(home, auth=True) as (url, proc):
            start = len(acked)
            threads = label_through_the_app(url, names, acked, stop, errors)
            deadline = time.time() + 120
            while len(acked) - start < round_acks and time.time() < deadline and any(t.is_alive() for t in threads):
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
            stop.set()
        assert len(acked) - start >= round_acks, errors[:3]

    db = open_db(home / "preflab.duckdb")
    stored = set(db.fetchall("""SELECT p.text, a.annotator, a.value FROM annotations a
                                JOIN tasks t ON t.id = a.task_id JOIN prompts p ON p.id = t.prompt_id"""))
    assert len(set(acked)) == len(acked)                       # each acknowledgement is a different decision
    assert set(acked) <= stored
    assert db.scalar("""SELECT count(*) FROM (SELECT task_id, annotator FROM annotations GROUP BY ALL
                        HAVING count(*) > 1)""") == 0          # nobody got the same task twice across restarts
    db.close()


if __name__ == "__main__":
    worker(sys.argv[1])

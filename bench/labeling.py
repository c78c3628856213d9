"""Benchmark: server-side time of "save a label and fetch the next task" on a large database.

    python -m bench.labeling [--tasks 100000] [--annotations 1000000] [--ops 400] [--db PATH]

Builds (once, in a DuckDB file) a database shaped like a busy project: `--tasks` tasks (half single, 40% pair,
10% write) and `--annotations` annotations from 200 annotators, ten per task, with every task one label short of
its required count so the queue is still full of candidates. Then 8 annotators take turns: each step saves a
label for the task on screen and fetches the next one, exactly what the Label page does per key press. Prints
p50/p95/max in milliseconds; the target is p95 <= 50 ms.
"""
from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import tempfile
import time
from pathlib import Path

from labeling import queue as Q
from labeling import queue_order
from storage.db import Database, open_db

N_ANNOTATORS = 200
PER_TASK = 10


def build(db: Database, n_tasks: int, n_annotations: int) -> None:
    """Fill an empty database with synthetic tasks and annotations, in bulk SQL (about a minute for 1M)."""
    per_task = max(1, min(PER_TASK, n_annotations // max(n_tasks, 1)))
    with db.transaction():
        db.execute("""INSERT INTO prompts (id, text, site, source)
                      SELECT md5('p' || i), 'Synthetic prompt number ' || i || ': how do I do thing ' || i || '?',
                             'site-' || (i % 3), 'bench'
                      FROM range(?) t(i)""", [n_tasks])
        db.execute("""INSERT INTO responses (id, prompt_id, text, origin)
                      SELECT md5('r' || i || side), md5('p' || i), 'Answer ' || side || ' to prompt ' || i, 'bench'
                      FROM range(?) t(i), (VALUES ('a'), ('b')) s(side)""", [n_tasks])
        db.execute(f"""INSERT INTO tasks (id, kind, prompt_id, response_a, response_b, site, required, n_done, batch)
                       SELECT md5('t' || i),
                              CASE WHEN i % 10 < 5 THEN 'single' WHEN i % 10 < 9 THEN 'pair' ELSE 'write' END,
                              md5('p' || i), md5('r' || i || 'a'),
                              CASE WHEN i % 10 BETWEEN 5 AND 8 THEN md5('r' || i || 'b') END,
                              'site-' || (i % 3), {per_task + 1}, {per_task}, 'bench'
                       FROM range(?) t(i)""", [n_tasks])
        # annotation j of task i comes from annotator (7 i + 13 j) mod 200: distinct annotators within a task
        db.execute(f"""INSERT INTO annotations (task_id, annotator, value, text, time_ms, source, site)
                       SELECT md5('t' || i), 'ann' || lpad(((7 * i + 13 * j) % {N_ANNOTATORS})::VARCHAR, 3, '0'),
                              CASE WHEN i % 10 < 5 THEN (CASE WHEN (i + j) % 3 = 0 THEN 'bad' ELSE 'good' END)
                                   WHEN i % 10 < 9 THEN (['a', 'b', 'tie', 'both_bad'])[1 + (i + j) % 4]
                                   ELSE 'written' END,
                              CASE WHEN i % 10 = 9 THEN 'A written answer ' || i END,
                              1000 + (i * j) % 5000, 'app', 'site-' || (i % 3)
                       FROM range(?) t(i), range({per_task}) s(j)
                       ORDER BY random()""", [min(n_tasks, n_annotations // per_task)])
    db.execute("CHECKPOINT")


def label_for(task: dict, rng: random.Random) -> tuple[str, str | None]:
    if task["kind"] == "single":
        return rng.choice(("good", "bad")), None
    if task["kind"] == "pair":
        return Q.pair_value_from_shown(rng.choice("1230"), task["shown_order"]), None
    return "written", "An ideal answer written during the benchmark."


def measure(db: Database, n_ops: int, n_annotators: int = 8, seed: int = 0, page: bool = False,
            around=contextlib.nullcontext, think_s: float = 0.0, kind: str | None = None) -> list[float]:
    """Milliseconds per "save the shown task's label + fetch the next task", annotators taking turns. With
    page=True also the progress bar and the last-10 history the Label page refreshes after each decision.
    `around()` is entered for each decision, as the app does per request (e.g. AppContext.labeling).
    think_s: a pause before each decision (not timed), for decisions at a person's pace instead of back to back.
    kind: one labeling mode's queue (served in that mode's order, labeling/queue_order.py), else every kind."""
    rng = random.Random(seed)
    names = [f"ann{i:03d}" for i in range(n_annotators)]   # existing annotators with ~5,000 labels each
    shown = {n: Q.next_task(db, n, kind=kind, rng=rng) for n in names}
    times = []
    for k in range(n_ops):
        who = names[k % n_annotators]
        task = shown[who]
        if task is None:
            break
        value, text = label_for(task, rng)
        if think_s:
            time.sleep(think_s)
        t0 = time.perf_counter()
        with around():
            Q.save_annotation(db, task["task_id"], who, value, text=text, shown_order=task["shown_order"],
                              time_ms=900)
            shown[who] = Q.next_task(db, who, kind=kind, rng=rng)
            if page:
                Q.progress(db, who, task["kind"])
                Q.history(db, who)
        times.append(1000 * (time.perf_counter() - t0))
    return times


def percentile(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--annotations", type=int, default=1_000_000)
    ap.add_argument("--ops", type=int, default=400)
    ap.add_argument("--db", help="DuckDB file to build (or reuse when it already holds the tasks)")
    args = ap.parse_args(argv)
    path = Path(args.db) if args.db else Path(tempfile.mkdtemp(prefix="preflab-bench-")) / "bench.duckdb"
    db = open_db(path)
    if db.scalar("SELECT count(*) FROM tasks") == 0:
        t0 = time.perf_counter()
        build(db, args.tasks, args.annotations)
        print(f"built {path} in {time.perf_counter() - t0:.1f} s")
    n_tasks = db.scalar("SELECT count(*) FROM tasks")
    n_ann = db.scalar("SELECT count(*) FROM annotations")
    print(f"{n_tasks:,} tasks, {n_ann:,} annotations")
    times = measure(db, args.ops)
    p50, p95 = statistics.median(times), percentile(times, 95)
    print(f"save label + fetch next task, {len(times)} operations by 8 annotators: p50 {p50:.1f} ms, "
          f"p95 {p95:.1f} ms, max {max(times):.1f} ms (target p95 <= 50 ms: {'PASS' if p95 <= 50 else 'FAIL'})")
    page = measure(db, args.ops // 2, seed=1, page=True)
    print(f"whole Label-page step (+ progress bar + last 10 decisions), {len(page)} operations: "
          f"p50 {statistics.median(page):.1f} ms, p95 {percentile(page, 95):.1f} ms")
    worst = p95
    for order in ("random", "unsure", "disagreement"):   # the pair queue in each order (scores: a random stand-in)
        if order == "unsure" and not db.scalar("SELECT count(*) FROM task_scores"):
            db.execute("INSERT INTO task_scores (task_id, run_id, score, unsure) "
                       "SELECT id, 'bench', 0, random() FROM tasks WHERE kind = 'pair'")
        queue_order.set_order(db, "pair", order)
        times = measure(db, args.ops // 2, seed=2, kind="pair")
        q95 = percentile(times, 95)
        worst = max(worst, q95)
        print(f"pair queue, order {order}: {len(times)} operations: p50 {statistics.median(times):.1f} ms, "
              f"p95 {q95:.1f} ms, max {max(times):.1f} ms")
    queue_order.set_order(db, "pair", "random")
    db.close()
    return 0 if worst <= 50 else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Queue orders: which open task an annotator is served first, chosen by an admin per labeling mode (task kind).

- random (the default): tasks others started come first (finish what is begun), then fresh ones from a random place.
- unsure: the tasks the newest model is least sure about come first. A background `score` job (training/score.py)
  scores every open task with the latest finished run, or the base model before there is one: for a pair, how far
  its implicit-reward margin is from zero; for a single answer, how far its reward is from the good/bad boundary.
  The app queues that job when the order is picked and again whenever a training run finishes (app/task_scores.py),
  so the queue never waits for a model: it reads the newest scores, and serves tasks without one (added since) after
  the scored ones, in the random order. Scores are an order only, never shown to annotators (no anchoring).
- disagreement: tasks whose votes split come first, the lowest agreement first. A task whose votes are tied when all
  its labels are in has no majority and trains nothing, so it gets one more slot, a tie-breaker, for someone who has
  not voted on it yet. Then the rest, in the random order.

The labels a queue order serves are ordinary labels: training reads them the same way whatever the order was.
"""
from __future__ import annotations

import bisect
import weakref
from typing import Iterator

from storage.db import Database

ORDERS = {
    "random": "Random (tasks others started first)",
    "unsure": "Model unsure first",
    "disagreement": "Disagreement first",
}
COUNTED = "value NOT IN ('skip', 'retracted')"
CHUNK = 64        # split tasks read per query, in order, until one can be served


def _key(kind: str) -> str:
    return f"queue_order:{kind}"


def order_of(db: Database, kind: str | None) -> str:
    """The order this mode's queue serves in (random when unset, or for no particular kind)."""
    if not kind:
        return "random"
    order = db.get_setting(_key(kind), "random")
    return order if order in ORDERS else "random"


def set_order(db: Database, kind: str, order: str) -> None:
    if kind not in ("single", "pair", "write"):
        raise ValueError(f"Unknown labeling mode {kind!r}.")
    if order not in ORDERS:
        raise ValueError(f"Unknown queue order {order!r}; use one of: {', '.join(ORDERS)}.")
    if order == "unsure" and kind == "write":
        raise ValueError("'Model unsure first' needs answers to score; writing tasks have none to judge.")
    db.set_setting(_key(kind), order)


def orders(db: Database) -> dict[str, str]:
    """Every mode's order: {kind: order}."""
    return {kind: order_of(db, kind) for kind in ("single", "pair", "write")}


def unsure_rows(db: Database, cols: str, filters: str, params: list, limit: int) -> list[tuple]:
    """Open scored tasks (alias t), the least sure first; at most `limit` rows."""
    return db.fetchall(f"""SELECT {cols} FROM tasks t JOIN task_scores s ON s.task_id = t.id
                           WHERE t.n_done < t.required{filters} ORDER BY s.unsure, t.id LIMIT ?""", [*params, limit])


class _Splits:
    """Tasks whose votes split and that a vote can still help: open ones, and complete ones whose votes are tied,
    as a list sorted by agreement (then task id). Kept in memory per database and brought up to date from the
    annotations added since it last looked (ids grow), re-counting only the tasks they touch: recounting every
    vote on each request took 55 ms at 200,000 annotations."""

    def __init__(self) -> None:
        self.upto = -1
        self.entry: dict[str, tuple[float, str]] = {}
        self.order: list[tuple[float, str]] = []
        self.tied: set[str] = set()

    def sync(self, db: Database) -> None:
        top = int(db.scalar("SELECT coalesce(max(id), 0) FROM annotations"))
        if top == self.upto:
            return
        if self.upto < 0:
            where, params = "TRUE", []
        else:
            where, params = "a.task_id IN (SELECT DISTINCT task_id FROM annotations WHERE id > ?)", [self.upto]
            for (tid,) in db.fetchall("SELECT DISTINCT task_id FROM annotations WHERE id > ?", params):
                self._drop(tid)
        for tid, agreement, tied in db.fetchall(f"""
                WITH cur AS (SELECT a.task_id, a.annotator, a.value FROM annotations a
                             WHERE {where} AND a.source <> 'resolution'
                             QUALIFY row_number() OVER (PARTITION BY a.task_id, a.annotator ORDER BY a.id DESC) = 1),
                counts AS (SELECT task_id, value, count(*) AS n FROM cur WHERE {COUNTED} GROUP BY task_id, value),
                per_task AS (SELECT task_id, sum(n) AS votes, max(n) AS top, count(*) AS n_values,
                                    count(*) FILTER (WHERE n = top_n) AS n_top
                             FROM (SELECT *, max(n) OVER (PARTITION BY task_id) AS top_n FROM counts) GROUP BY task_id)
                SELECT p.task_id, p.top / p.votes, p.n_top > 1 FROM per_task p JOIN tasks t ON t.id = p.task_id
                WHERE p.n_values > 1 AND (p.votes < t.required OR p.n_top > 1)
                  AND p.task_id NOT IN (SELECT task_id FROM annotations WHERE source = 'resolution')""", params):
            self.entry[tid] = (float(agreement), tid)
            bisect.insort(self.order, self.entry[tid])
            if tied:
                self.tied.add(tid)
        self.upto = top

    def _drop(self, tid: str) -> None:
        self.tied.discard(tid)
        e = self.entry.pop(tid, None)
        if e is not None:
            i = bisect.bisect_left(self.order, e)
            if i < len(self.order) and self.order[i] == e:
                self.order.pop(i)


_SPLITS: "weakref.WeakKeyDictionary[Database, _Splits]" = weakref.WeakKeyDictionary()


def forget(db: Database) -> None:
    """Drop what is kept in memory (a caller's transaction that may roll back wrote or read it)."""
    _SPLITS.pop(db, None)


def split_rows(db: Database, cols: str, filters: str, params: list) -> Iterator[tuple[tuple, bool]]:
    """Tasks (alias t, `cols` = labeling.queue.TASK_COLS) whose current votes split, the lowest agreement first, as
    (row, reopen): open ones, and complete ones whose votes are tied (reopen: one more slot for a tie-breaker). A
    task an admin resolved is decided, whatever its votes. Rows are read a few at a time, as the caller goes."""
    splits = _SPLITS.setdefault(db, _Splits())
    splits.sync(db)
    order, tied = list(splits.order), set(splits.tied)
    for start in range(0, len(order), CHUNK):
        ids = [tid for _, tid in order[start:start + CHUNK]]
        rows = {r[0]: r for r in db.fetchall(f"SELECT {cols} FROM tasks t WHERE t.id IN (SELECT unnest(?)){filters}",
                                             [ids, *params])}
        for tid in ids:
            r = rows.get(tid)
            if r is not None and (r[7] < r[6] or tid in tied):     # open (n_done < required), or tied
                yield r, r[7] >= r[6]

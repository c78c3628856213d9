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

import random

from storage.db import Database

ORDERS = {
    "random": "Random (tasks others started first)",
    "unsure": "Model unsure first",
    "disagreement": "Disagreement first",
}
COUNTED = "value NOT IN ('skip', 'retracted')"


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


def split_rows(db: Database, cols: str, filters: str, params: list, rng: random.Random) -> list[tuple[tuple, bool]]:
    """Tasks whose current votes split, as (row, reopen): open ones with the lowest agreement first, then complete
    ones whose votes are tied (reopen: one more slot makes room for a tie-breaker). A task an admin resolved is
    decided, whatever its votes."""
    found = db.fetchall(f"""
        WITH cand AS (SELECT t.id FROM tasks t WHERE t.n_done >= 2{filters}),
        cur AS (SELECT a.task_id, a.annotator, a.value FROM annotations a
                WHERE a.task_id IN (SELECT id FROM cand) AND a.source <> 'resolution'
                QUALIFY row_number() OVER (PARTITION BY a.task_id, a.annotator ORDER BY a.id DESC) = 1),
        counts AS (SELECT task_id, value, count(*) AS n FROM cur WHERE {COUNTED} GROUP BY task_id, value),
        per_task AS (SELECT task_id, sum(n) AS votes, max(n) AS top, count(*) AS n_values,
                            count(*) FILTER (WHERE n = top_n) AS n_top
                     FROM (SELECT *, max(n) OVER (PARTITION BY task_id) AS top_n FROM counts) GROUP BY task_id)
        SELECT {cols}, p.top / p.votes AS agreement, p.n_top > 1 AS tied
        FROM per_task p JOIN tasks t ON t.id = p.task_id
        WHERE p.n_values > 1 AND (t.n_done < t.required OR p.n_top > 1)
          AND t.id NOT IN (SELECT task_id FROM annotations WHERE source = 'resolution'){filters}""",
                        [*params, *params])
    open_, tied = [], []
    for r in found:
        row, agreement, is_tied = r[:-2], r[-2], r[-1]
        if row[7] < row[6]:      # n_done < required
            open_.append((agreement, rng.random(), row))
        elif is_tied:
            tied.append((rng.random(), row))
    return [(row, False) for *_, row in sorted(open_)] + [(row, True) for _, row in sorted(tied)]

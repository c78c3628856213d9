"""Agreement between annotators, and the disputes an admin settles.

Votes are each annotator's current decision on a single or pair task (view current_annotations; skips, undone
decisions and written answers are not votes; admin resolutions are not votes either). From them:
- alpha: Krippendorff's alpha (nominal), computed by the `krippendorff` package from per-task value counts, over
  tasks with two or more votes; None when no task has two votes. When every vote on every such task has the same
  value alpha is undefined (no variation at all); we report 1.0, perfect agreement.
- per_pair: alpha for each annotator pair on the tasks both voted on (pairs sharing >= 2 tasks, most shared first).
- per_task: disagreement per task id = the share of pairs of its votes that differ (Krippendorff's observed
  disagreement for that unit: 0 when all agree, 1 when two votes differ, 2/3 for a 2-1 split).
A disputed task has disagreement > 0 and no resolution yet; an admin resolves it with an annotation of source
'resolution' that supersedes the task's previous resolution, if any; the training data rule (labeling/dataset.py)
takes a resolution over the votes.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from labeling.dataset import VOTES
from storage.db import Database

VOTE_KINDS = ("single", "pair")


def _votes_sql(kind: str | None) -> tuple[str, list]:
    """SQL (a CTE named v) for the current vote of each annotator on each single/pair task."""
    kinds = [kind] if kind else list(VOTE_KINDS)
    return f"""
        WITH v AS (SELECT cur.task_id, cur.annotator, cur.value, t.kind
                   FROM {VOTES} cur JOIN tasks t ON t.id = cur.task_id
                   WHERE cur.value <> 'written' AND t.kind IN ({', '.join('?' * len(kinds))}))""", kinds


def votes(db: Database, kind: str | None = None, task_ids: list[str] | None = None) -> pd.DataFrame:
    """task_id, annotator, value, kind: the current vote of each annotator on each single/pair task."""
    sql, params = _votes_sql(kind)
    if task_ids is not None:
        return db.df(sql + " SELECT * FROM v WHERE task_id IN (SELECT unnest(?))", [*params, list(task_ids)])
    return db.df(sql + " SELECT * FROM v", params)


def _value_counts(db: Database, kind: str | None) -> tuple[pd.DataFrame, int]:
    """Tasks x values count matrix of the tasks with two or more votes, and the number of votes in all."""
    sql, params = _votes_sql(kind)
    df = db.df(sql + " SELECT task_id, value, count(*) AS n FROM v GROUP BY ALL", params)
    n_votes = int(df["n"].sum()) if len(df) else 0
    df = df[df.groupby("task_id")["n"].transform("sum") >= 2]
    if df.empty:
        return pd.DataFrame(), n_votes
    counts = df.pivot(index="task_id", columns="value", values="n").fillna(0).sort_index(axis=1)
    return counts, n_votes


def alpha_from_counts(counts: np.ndarray) -> float | None:
    import krippendorff

    counts = np.asarray(counts, dtype=float)
    if counts.size == 0 or not (counts.sum(axis=1) >= 2).any():
        return None
    if (counts.sum(axis=0) > 0).sum() < 2:
        return 1.0     # a single value used throughout: no variation, everyone agreed
    return float(krippendorff.alpha(value_counts=counts, level_of_measurement="nominal"))


def unit_disagreement(counts: np.ndarray) -> np.ndarray:
    """Per row of a tasks x values count matrix: the share of ordered vote pairs that differ."""
    counts = np.asarray(counts, dtype=float)
    m = counts.sum(axis=1)
    same = (counts * (counts - 1)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(m >= 2, 1 - same / (m * (m - 1)), 0.0)


def _per_pair(db: Database, kind: str | None, max_pairs: int) -> tuple[dict, int]:
    sql, params = _votes_sql(kind)
    table = db.df(sql + """
        SELECT x.annotator AS a, y.annotator AS b, x.value AS va, y.value AS vb, count(*) AS n
        FROM v x JOIN v y ON x.task_id = y.task_id AND x.annotator < y.annotator GROUP BY ALL""", params)
    if table.empty:
        return {}, 0
    shared = table.groupby(["a", "b"])["n"].sum()
    shared = shared[shared >= 2].sort_values(ascending=False)
    values = sorted(set(table.va) | set(table.vb))
    col = {v: i for i, v in enumerate(values)}
    out = {}
    for (a, b), n in shared.head(max_pairs).items():
        cells = table[(table.a == a) & (table.b == b)]
        rows = np.zeros((len(cells), len(values)))
        for i, (va, vb) in enumerate(zip(cells.va, cells.vb)):
            rows[i, col[va]] += 1
            rows[i, col[vb]] += 1
        counts = np.repeat(rows, cells.n.to_numpy(), axis=0)   # one row per shared task
        out[f"{a} / {b}"] = {"alpha": alpha_from_counts(counts), "shared_tasks": int(n)}
    return out, int(len(shared))


def agreement(db: Database, kind: str | None = None, max_pairs: int = 50) -> dict:
    """alpha overall, per annotator pair and per task (see the module docstring); n_tasks counts tasks with two
    or more votes."""
    counts, n_votes = _value_counts(db, kind)
    per_task = dict(zip(counts.index, unit_disagreement(counts.to_numpy()).round(4))) if len(counts) else {}
    per_pair, n_pairs = _per_pair(db, kind, max_pairs)
    return {"alpha": alpha_from_counts(counts.to_numpy()) if len(counts) else None, "per_pair": per_pair,
            "n_pairs": n_pairs, "per_task": per_task, "n_tasks": int(len(counts)), "n_labels": n_votes}


def task_disagreement(db: Database, kind: str | None = None) -> pd.DataFrame:
    """Per task with two or more votes: n_labels, majority_share, disagreement, values ('good: 2, bad: 1')."""
    cols = ["task_id", "n_labels", "majority_share", "disagreement", "values"]
    counts, _ = _value_counts(db, kind)
    if counts.empty:
        return pd.DataFrame(columns=cols)
    arr = counts.to_numpy()
    names = np.array(counts.columns)
    summary = [", ".join(f"{names[j]}: {int(r[j])}" for j in np.argsort(-r, kind="stable") if r[j])
               for r in arr]
    return pd.DataFrame({"task_id": counts.index, "n_labels": arr.sum(axis=1).astype(int),
                         "majority_share": arr.max(axis=1) / arr.sum(axis=1),
                         "disagreement": unit_disagreement(arr), "values": summary}).reset_index(drop=True)


def disputed_tasks(db: Database, kind: str | None = None, limit: int = 200) -> list[dict]:
    """Tasks whose votes differ and that no admin has resolved, most disputed first, with what the conflict view
    shows: prompt, responses (canonical order: A then B), and who voted what."""
    d = task_disagreement(db, kind)
    resolved = {r[0] for r in db.fetchall("SELECT task_id FROM current_annotations WHERE source = 'resolution'")}
    d = d[(d.disagreement > 0) & ~d.task_id.isin(resolved)]
    d = d.sort_values(["disagreement", "n_labels"], ascending=False).head(limit)
    if d.empty:
        return []
    ids = d.task_id.tolist()
    info = {r["id"]: r for r in db.records("""
        SELECT t.id, t.kind, t.site, p.text AS prompt, ra.text AS response_a, rb.text AS response_b
        FROM tasks t JOIN prompts p ON p.id = t.prompt_id LEFT JOIN responses ra ON ra.id = t.response_a
        LEFT JOIN responses rb ON rb.id = t.response_b WHERE t.id IN (SELECT unnest(?))""", [ids])}
    v = votes(db, kind, task_ids=ids).sort_values(["task_id", "annotator"])
    by_task = {t: g[["annotator", "value"]].to_dict("records") for t, g in v.groupby("task_id")}
    out = []
    for r in d.to_dict("records"):
        t = info.get(r["task_id"], {})
        out.append({**r, "kind": t.get("kind"), "site": t.get("site"), "prompt": t.get("prompt") or "",
                    "responses": [x for x in (t.get("response_a"), t.get("response_b")) if x is not None],
                    "votes": by_task.get(r["task_id"], [])})
    return out


def resolve(db: Database, task_id: str, admin: str, value: str, text: str | None = None) -> int:
    """An admin's final word on a task: a 'resolution' annotation that supersedes the task's previous resolution.
    Votes stay as they were (append-only); the training data takes the resolution. Returns its id. The caller
    checks that `admin` is an admin (app/pages/data.py does, in its handler)."""
    from labeling.queue import VALUES, LabelError

    with db.transaction():
        kind = db.scalar("SELECT kind FROM tasks WHERE id = ?", [task_id])
        if kind is None:
            raise LabelError(f"There is no task {task_id!r}.")
        if value not in VALUES[kind]:
            raise LabelError(f"{value!r} is not a label for a {kind} task (use {', '.join(VALUES[kind])}).")
        if kind == "write" and not (text or "").strip():
            raise LabelError("A resolution of a writing task needs the final answer text.")
        previous = db.scalar("SELECT id FROM current_annotations WHERE task_id = ? AND source = 'resolution'",
                             [task_id])
        return int(db.scalar("""INSERT INTO annotations (task_id, annotator, value, text, source, supersedes)
                                VALUES (?, ?, ?, ?, 'resolution', ?) RETURNING id""",
                             [task_id, admin, value, text, previous]))

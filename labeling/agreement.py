"""Agreement between annotators: Krippendorff's alpha (nominal) overall and per annotator pair, per-task
disagreement, the disputed tasks an admin should look at, and resolving them."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from storage.db import Database


def _labels(db: Database, kind: str | None) -> pd.DataFrame:
    k = "AND t.kind = ?" if kind else ""
    return db.df(f"""
        WITH cur AS (SELECT * FROM annotations
                     QUALIFY row_number() OVER (PARTITION BY task_id, annotator ORDER BY id DESC) = 1)
        SELECT cur.task_id, cur.annotator, cur.value, t.kind FROM cur JOIN tasks t ON t.id = cur.task_id
        WHERE cur.value NOT IN ('skip', 'retracted', 'written') AND cur.source <> 'resolution' {k}""",
                 [kind] if kind else None)


def _alpha(df: pd.DataFrame) -> float | None:
    """Nominal alpha over tasks with at least two labels; None when there is nothing to compare."""
    import krippendorff

    multi = df.groupby("task_id").filter(lambda g: len(g) > 1)
    if multi.empty or multi["value"].nunique() < 1:
        return None
    codes = {v: i for i, v in enumerate(sorted(multi["value"].unique()))}
    table = multi.pivot_table(index="annotator", columns="task_id", values="value", aggfunc="first")
    data = table.map(lambda v: codes[v] if isinstance(v, str) else np.nan).to_numpy(dtype=float)
    if multi["value"].nunique() == 1:
        return 1.0   # everyone always agreed: alpha is undefined (no variation); report perfect agreement
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))


def agreement(db: Database, kind: str | None = None) -> dict:
    df = _labels(db, kind)
    per_pair = {}
    for a, b in itertools.combinations(sorted(df["annotator"].unique()), 2):
        both = df[df.annotator.isin((a, b))]
        shared = both.groupby("task_id").filter(lambda g: len(g) == 2)
        if shared["task_id"].nunique() >= 2:
            per_pair[f"{a} / {b}"] = {"alpha": _alpha(shared), "shared_tasks": int(shared["task_id"].nunique())}
    n_multi = int((df.groupby("task_id").size() > 1).sum()) if not df.empty else 0
    return {"alpha": _alpha(df), "per_pair": per_pair, "n_tasks": n_multi, "n_labels": len(df)}


def task_disagreement(db: Database, kind: str | None = None) -> pd.DataFrame:
    """Per task with two or more labels: votes, majority share, and disagreement = 1 - majority share."""
    df = _labels(db, kind)
    if df.empty:
        return pd.DataFrame(columns=["task_id", "n_labels", "majority_share", "disagreement", "values"])
    g = df.groupby("task_id")
    out = pd.DataFrame({
        "n_labels": g.size(),
        "majority_share": g["value"].agg(lambda s: s.value_counts().iloc[0] / len(s)),
        "values": g["value"].agg(lambda s: ", ".join(f"{k}: {v}" for k, v in s.value_counts().items())),
    })
    out = out[out.n_labels > 1]
    out["disagreement"] = 1 - out["majority_share"]
    return out.reset_index()


def disputed_tasks(db: Database, kind: str | None = None) -> list[dict]:
    d = task_disagreement(db, kind)
    resolved = {r[0] for r in db.fetchall("SELECT DISTINCT task_id FROM annotations WHERE source = 'resolution'")}
    d = d[(d.disagreement > 0) & ~d.task_id.isin(resolved)].sort_values("disagreement", ascending=False)
    if d.empty:
        return []
    prompts = dict(db.fetchall(f"""SELECT t.id, p.text FROM tasks t JOIN prompts p ON p.id = t.prompt_id
                                   WHERE t.id IN ({', '.join('?' * len(d))})""", d.task_id.tolist()))
    return [{**r, "prompt": prompts.get(r["task_id"], "")} for r in d.to_dict("records")]


def resolve(db: Database, task_id: str, admin: str, value: str, text: str | None = None) -> int:
    """An admin's final word on a disputed task: an annotation with source 'resolution', which the training data
    rule (labeling/dataset.py) takes over the majority."""
    from labeling.queue import VALUES, LabelError

    kind = db.scalar("SELECT kind FROM tasks WHERE id = ?", [task_id])
    if kind is None:
        raise LabelError("That task no longer exists.")
    if value not in VALUES[kind]:
        raise LabelError(f"{value!r} is not a label for a {kind} task.")
    return int(db.scalar("""INSERT INTO annotations (task_id, annotator, value, text, source)
                            VALUES (?, ?, ?, ?, 'resolution') RETURNING id""", [task_id, admin, value, text]))

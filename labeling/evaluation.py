"""Runs judged against each other, for the Compare page: the held-out metrics their jobs logged, and the win rate in
blind A/B pair tasks (each answer's `responses.origin` is 'run:<id>'), labeled on the Label page."""
from __future__ import annotations

import math

import pandas as pd

from labeling.dataset import deciding_sql
from storage.db import Queries


def heldout_table(db: Queries, run_ids: list[str]) -> pd.DataFrame:
    """One row per run: held-out accuracy, likelihood accuracy from the base model to the run, held-out and train
    mean m_θ (the last logged values)."""
    rows = []
    for rid in run_ids:
        ev = db.df("""SELECT name, arg_max(value, step) AS last, arg_min(value, step) AS first FROM run_scalars
                      WHERE run_id = ? AND split = 'eval' GROUP BY name""", [rid])
        m = {r["name"]: r for r in ev.to_dict("records")}
        tr = db.scalar("SELECT arg_max(value, step) FROM run_scalars WHERE run_id = ? AND name = 'm_theta' "
                       "AND split = 'train'", [rid])
        rows.append({"run": rid,
                     "held-out accuracy (implicit reward)": _rounded(m.get("eval/accuracy", {}).get("last")),
                     "held-out likelihood accuracy: base → run": (
                         f"{_rounded(m['eval/likelihood_accuracy']['first'])} → "
                         f"{_rounded(m['eval/likelihood_accuracy']['last'])}"
                         if "eval/likelihood_accuracy" in m else None),
                     "held-out mean m_θ": _rounded(m.get("eval/m_theta", {}).get("last")),
                     "train mean m_θ (last step)": _rounded(tr)})
    return pd.DataFrame(rows)


def _rounded(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 4)


def win_rate(db: Queries, run_a: str, run_b: str) -> dict:
    """Share of decided A/B pairs that run_a won (ties count half) with a Wilson 95% interval. Each deciding label
    counts (labeling.dataset.deciding_sql): every annotator's, or an admin's resolution alone where there is one."""
    a, b = f"run:{run_a}", f"run:{run_b}"
    df = db.df(f"""
        SELECT cur.value, ra.origin AS oa, rb.origin AS ob FROM {deciding_sql()} cur JOIN tasks t ON t.id = cur.task_id
        JOIN responses ra ON ra.id = t.response_a JOIN responses rb ON rb.id = t.response_b
        WHERE t.kind = 'pair' AND cur.value IN ('a', 'b', 'tie')
          AND ((ra.origin = ? AND rb.origin = ?) OR (ra.origin = ? AND rb.origin = ?))""",
               [a, b, b, a])
    if df.empty:
        return {"n": 0, "rate": None, "low": None, "high": None}
    wins = ((df.value == "a") & (df.oa == a)) | ((df.value == "b") & (df.ob == a))
    score = wins.astype(float) + 0.5 * (df.value == "tie")
    n, p = len(df), float(score.mean())
    z = 1.96
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return {"n": n, "rate": p, "low": max(0.0, centre - half), "high": min(1.0, centre + half)}

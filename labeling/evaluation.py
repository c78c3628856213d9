"""Runs judged against each other, for the Compare page: the held-out metrics their jobs logged, and the win rate in
blind A/B pair tasks (each answer's `responses.origin` is 'run:<id>'), labeled on the Label page."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd

from labeling.dataset import deciding_sql
from labeling.stats import pct, verdict, wilson
from storage import rundir
from storage.db import Queries


def heldout_table(db: Queries, run_ids: list[str]) -> pd.DataFrame:
    """One row per run, by name: what its own job measured on its held-out rows (the evaluation set's, in the
    run's data kind) at the end, with n and 95% intervals; likelihood accuracy from its start (the base) to its end."""
    rows = []
    for rid in run_ids:
        r = db.records("SELECT name, run_dir FROM runs WHERE id = ?", [rid])
        ev = db.df("""SELECT name, arg_max(value, step) AS last, arg_min(value, step) AS first FROM run_scalars
                      WHERE run_id = ? AND split = 'eval' GROUP BY name""", [rid])
        m = {x["name"]: x for x in ev.to_dict("records")}
        n = _held_out_rows(r[0]["run_dir"]) if r else 0
        rows.append({"run": r[0]["name"] if r else rid, "held-out rows": n,
                     "accuracy (implicit reward)": _with_interval(m.get("eval/accuracy", {}).get("last"), n),
                     "likelihood accuracy: start → end": (
                         f"{_with_interval(m['eval/likelihood_accuracy']['first'], n)} → "
                         f"{_with_interval(m['eval/likelihood_accuracy']['last'], n)}"
                         if "eval/likelihood_accuracy" in m else ""),
                     "held-out mean m_θ": _rounded(m.get("eval/m_theta", {}).get("last")),
                     "train mean m_θ (last step)": _rounded(db.scalar(
                         "SELECT arg_max(value, step) FROM run_scalars WHERE run_id = ? AND name = 'm_theta' "
                         "AND split = 'train'", [rid]))})
    return pd.DataFrame(rows, columns=["run", "held-out rows", "accuracy (implicit reward)",
                                       "likelihood accuracy: start → end", "held-out mean m_θ",
                                       "train mean m_θ (last step)"])


def _held_out_rows(run_dir: str | None) -> int:
    import pyarrow.parquet as pq

    p = Path(run_dir or "") / rundir.EVAL_DATA
    return pq.ParquetFile(p).metadata.num_rows if run_dir and p.exists() else 0


def _with_interval(rate, n: int) -> str:
    """"64% (55–72%)": a proportion of n with its Wilson interval; blank when unmeasured."""
    if rate is None or (isinstance(rate, float) and math.isnan(rate)) or not n:
        return ""
    lo, hi = wilson(rate * n, n)
    return f"{pct(rate)} ({pct(lo)}–{pct(hi)})"


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


# -- scores on the evaluation set (app/scoring.py queues them; training/evaluate.py writes eval.json) ------------------
SCORE_SUFFIX = ": evaluation set v{version}"   # an evaluate run's name ends so; the base's has no parent run


def _report(run: dict | None) -> dict | None:
    """A finished evaluate run's eval.json, None before it is there."""
    if not run or run["state"] != "finished":
        return None
    p = Path(run["run_dir"] or "") / rundir.EVAL_REPORT
    return json.loads(p.read_text()) if p.exists() else None


def _version(name: str) -> int | None:
    m = re.search(r"evaluation set v(\d+)$", name or "")
    return int(m.group(1)) if m else None


def _base_report(db: Queries, model: str | None, version: int | None) -> dict | None:
    """The eval.json of the base model's finished score on this set version, None while there is none."""
    for b in db.records("""SELECT * FROM runs WHERE kind = 'evaluate' AND parent_id IS NULL AND name LIKE ?
                           ORDER BY created_at DESC""", ["%" + SCORE_SUFFIX.format(version=version)]):
        if json.loads(b["config"]).get("model") == model and _report(b):
            return _report(b)
    return None


def base_generations(db: Queries, run_ids: list[str]) -> dict[str, str]:
    """prompt -> the base model's greedy answer, from its score on the set the first of these runs was scored on."""
    for rid in run_ids:
        sc = (db.records("""SELECT * FROM runs WHERE kind = 'evaluate' AND parent_id = ? AND state = 'finished'
                            ORDER BY created_at DESC LIMIT 1""", [rid]) or [None])[0]
        if sc:
            rep = _base_report(db, json.loads(sc["config"]).get("model"), _version(sc["name"])) or {}
            return {g["prompt"]: g["response"] for g in rep.get("generations", [])}
    return {}


def score(db: Queries, run_id: str) -> dict:
    """A training run's verdict on the evaluation set: its newest score (an evaluate run whose parent it is) and the
    base model's score on the same set version. Keys: state (a sentence while there is no verdict), verdict
    (labeling.stats.verdict), likelihood / base_likelihood (rate, low, high), version, n."""
    run = (db.records("SELECT * FROM runs WHERE id = ?", [run_id]) or [None])[0]
    if run is None:
        return {"state": f"There is no run {run_id}."}
    sc = (db.records("""SELECT * FROM runs WHERE kind = 'evaluate' AND parent_id = ?
                        ORDER BY created_at DESC LIMIT 1""", [run_id]) or [None])[0]
    if sc is None:
        lora = json.loads(run["config"] or "{}").get("lora") is not None
        return {"state": ("Scored on the evaluation set when it finishes." if run["state"] != "finished" and lora
                          else "Not scored: only LoRA runs that finished are scored on the evaluation set, and only "
                               "when the set has labeled pairs." )}
    rep = _report(sc)
    if rep is None:
        return {"state": f"Being scored on the evaluation set ({sc['state']})." if sc["state"] != "failed" else
                f"Scoring failed: {sc['error'] or 'see its log'}."}
    version, n = _version(sc["name"]), int(rep.get("n_eval") or 0)
    base_rep = _base_report(db, json.loads(sc["config"]).get("model"), version)
    out = {"state": "scored", "version": version, "n": n,
           "verdict": verdict(rep.get("eval/accuracy", 0) * n, n, 0.5)}
    for key, r in (("likelihood", rep), ("base_likelihood", base_rep)):
        rate = (r or {}).get("eval/likelihood_accuracy")
        out[key] = None if rate is None or not n else (rate, *wilson(rate * n, n))
    return out


def verdict_text(db: Queries, run_id: str) -> str:
    """The verdict sentence the Runs page and Compare show for a run."""
    s = score(db, run_id)
    if s["state"] != "scored":
        return s["state"]
    text = s["verdict"]["text"]
    lik, base = s["likelihood"], s["base_likelihood"]
    if lik:
        text += (f" Its own likelihood ranks the preferred answer first on {pct(lik[0])} "
                 f"({pct(lik[1])}–{pct(lik[2])})" + (f"; the base model's: {pct(base[0])}." if base else "."))
    return text


def scoreboard(db: Queries, run_ids: list[str]) -> pd.DataFrame:
    """Compare's verdict table: the base row, then one row per run, every figure with n and its 95% interval."""
    cols = ["model", "pairs", "prefers the team's answer (vs base)", "likelihood ranks it first", "verdict"]
    rows, base = [], None
    for rid in run_ids:
        name = (db.records("SELECT name FROM runs WHERE id = ?", [rid]) or [{"name": rid}])[0]["name"]
        s = score(db, rid)
        if s["state"] != "scored":
            rows.append({"model": name, "pairs": 0, "verdict": s["state"]})
            continue
        v, lik = s["verdict"], s["likelihood"]
        base = base or (s["n"], s["base_likelihood"], s["version"])
        rows.append({"model": name, "pairs": s["n"],
                     "prefers the team's answer (vs base)": f"{pct(v['rate'])} ({pct(v['low'])}–{pct(v['high'])})",
                     "likelihood ranks it first": f"{pct(lik[0])} ({pct(lik[1])}–{pct(lik[2])})" if lik else "",
                     "verdict": v["direction"]})
    if base:
        n, lik, version = base
        rows.insert(0, {"model": f"base model (evaluation set v{version})", "pairs": n,
                        "prefers the team's answer (vs base)": "50% (by definition)",
                        "likelihood ranks it first": f"{pct(lik[0])} ({pct(lik[1])}–{pct(lik[2])})" if lik else
                        "being scored", "verdict": "the reference"})
    return pd.DataFrame(rows, columns=cols).fillna("")

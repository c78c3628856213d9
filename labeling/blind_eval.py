"""Blind human evaluation as its own queue: which models answer which evaluation prompts, the pair tasks their answers
become, and the judgments read back for win rates and the leaderboard (the maths: labeling/arena.py).

An evaluation is an admin's request: two or more models (a run id, or 'base' for the model runs start from) and N
prompts of the project's evaluation set (labeling/evalset.py). The app starts one generate job per model
(app/evaluations.py); when the last one finishes, `job_ended` makes one blind pair task per prompt and pair of models
(tasks.purpose 'evaluation', sides random) and records in evaluation_tasks which model wrote which side. Those tasks
are served only by the Label page's Evaluate mode, and their judgments stay out of training selections unless an
admin asks (labeling/dataset.py). Try-page side-by-side picks are recorded the same way, under evaluation 'try'.
"""
from __future__ import annotations

import itertools
import json
import random
import secrets
import time

import pandas as pd

from labeling import arena, evalset
from labeling.dataset import deciding_sql
from labeling.queue import LabelError, create_task
from storage import rundir
from storage.db import Database, Queries

BASE = "base"
TRY = "try"          # the evaluation id of Try-page side-by-side picks
SCORE = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}


def new_id() -> str:
    return "eval-" + time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def draw_prompts(db: Database, n: int, seed: int = 0) -> pd.DataFrame:
    """prompt_id, prompt, site of `n` prompts of the evaluation set, the same ones for the same n (a fixed shuffle,
    so a later evaluation with more prompts contains an earlier one's)."""
    ids = sorted(evalset.prompt_ids(db))
    if not ids:
        raise LabelError("The evaluation set is empty: an admin sets it up on the Data page first.")
    random.Random(seed).shuffle(ids)
    chosen = ids[:int(n)]
    df = db.df("SELECT id AS prompt_id, text AS prompt, site FROM prompts WHERE id IN (SELECT unnest(?))", [chosen])
    rank = {p: i for i, p in enumerate(chosen)}
    return df.drop_duplicates("prompt_id").sort_values("prompt_id", key=lambda s: s.map(rank)).reset_index(drop=True)


def record(db: Database, evaluation_id: str, models: list[str], n_prompts: int, created_by: str,
           jobs: dict[str, str], name: str | None = None) -> None:
    """The request and its generate job per model (model -> run id)."""
    with db.transaction():
        db.execute("""INSERT INTO evaluations (id, name, models, n_prompts, evalset_version, created_by)
                      VALUES (?, ?, ?, ?, ?, ?)""",
                   [evaluation_id, name, json.dumps(models), int(n_prompts), evalset.current(db)["version"],
                    created_by])
        for model, run_id in jobs.items():
            db.execute("INSERT INTO evaluation_jobs VALUES (?, ?, ?)", [evaluation_id, model, run_id])


def evaluation_of(db: Queries, run_id: str) -> str | None:
    """The evaluation a generate job answers prompts for, None for any other run."""
    return db.scalar("SELECT evaluation_id FROM evaluation_jobs WHERE run_id = ?", [run_id])


def job_ended(db: Database, run_id: str, state: str, seed: int = 0) -> int:
    """A generate job of an evaluation ended: when it failed or was stopped, so did the evaluation (its sentence
    says which model); when every job has finished, make the blind pair tasks. Returns the tasks made."""
    eid = evaluation_of(db, run_id)
    if eid is None or db.scalar("SELECT state FROM evaluations WHERE id = ?", [eid]) != "generating":
        return 0
    if state != "finished":
        model = db.scalar("SELECT model FROM evaluation_jobs WHERE run_id = ?", [run_id])
        db.execute("UPDATE evaluations SET state = 'failed', error = ? WHERE id = ?",
                   [f"Writing the answers of {model_name(db, model)} {state} (run {run_id}); start the evaluation "
                    "again.", eid])
        return 0
    jobs = db.fetchall("""SELECT j.model, r.run_dir, r.state FROM evaluation_jobs j JOIN runs r ON r.id = j.run_id
                          WHERE j.evaluation_id = ? ORDER BY j.rowid""", [eid])
    if any(s != "finished" for _, _, s in jobs):
        return 0
    try:
        answers = {m: pd.read_parquet(f"{d}/{rundir.GENERATIONS}") for m, d, _ in jobs}
    except OSError as e:   # a run folder deleted by hand
        db.execute("UPDATE evaluations SET state = 'failed', error = ? WHERE id = ?",
                   [f"The answers are missing ({e}); start the evaluation again.", eid])
        return 0
    with db.transaction():   # the Evaluate queue gets all of the evaluation's pairs at once
        n = make_tasks(db, eid, answers, seed)
        db.execute("UPDATE evaluations SET state = 'ready' WHERE id = ?", [eid])
    return n


def make_tasks(db: Database, evaluation_id: str, answers: dict[str, pd.DataFrame], seed: int = 0) -> int:
    """One blind pair task per prompt and pair of models whose answers differ (identical answers cannot be judged);
    which model is response_a is random, and the Label page shows the sides in random order again."""
    rng = random.Random(f"{evaluation_id}:{seed}")
    by_model = {m: {(r.prompt, r.site if isinstance(r.site, str) else None): r.response
                    for r in g[g["sample"] == 0].itertuples()} for m, g in answers.items()}
    prompts = list(dict.fromkeys(k for g in by_model.values() for k in g))
    n = 0
    for (prompt, site), (m1, m2) in itertools.product(prompts, itertools.combinations(by_model, 2)):
        a, b = by_model[m1].get((prompt, site)), by_model[m2].get((prompt, site))
        if not (a or "").strip() or not (b or "").strip() or a.strip() == b.strip():
            continue
        if rng.random() < 0.5:
            (m1, a), (m2, b) = (m2, b), (m1, a)
        tid = create_task(db, "pair", prompt, [a, b], site=site, source=f"evaluation:{evaluation_id}",
                          origins=[f"model:{m1}", f"model:{m2}"], purpose="evaluation")
        add_task(db, evaluation_id, tid, m1, m2)
        n += 1
    return n


def add_task(db: Database, evaluation_id: str, task_id: str, model_a: str, model_b: str) -> None:
    """Which model wrote response_a and response_b of an evaluation task (once per task)."""
    with db.transaction():
        if not db.scalar("SELECT count(*) FROM evaluation_tasks WHERE task_id = ?", [task_id]):
            db.execute("INSERT INTO evaluation_tasks VALUES (?, ?, ?, ?)", [evaluation_id, task_id, model_a, model_b])


def judgments(db: Queries, evaluation_id: str | None = None) -> list[tuple[str, str, float]]:
    """(model_a, model_b, score of model_a) for every deciding judgment (each judge's, or an admin's resolution
    alone) on evaluation tasks: of one evaluation, or of all of them and the Try page's picks."""
    rows = db.fetchall(f"""
        SELECT e.model_a, e.model_b, d.value FROM {deciding_sql()} d JOIN evaluation_tasks e ON e.task_id = d.task_id
        WHERE d.value IN ('a', 'b', 'tie', 'both_bad') AND coalesce(?, e.evaluation_id) = e.evaluation_id
        ORDER BY d.id""", [evaluation_id])
    return [(a, b, SCORE[v]) for a, b, v in rows]


def model_name(db: Queries, model: str) -> str:
    """What people call a model: the base model, or a run's name (its id when it has none)."""
    if model == BASE:
        return "the base model"
    return db.scalar("SELECT coalesce(nullif(name, ''), id) FROM runs WHERE id = ?", [model]) or model


def results(db: Queries, evaluation_id: str | None = None) -> dict:
    """Win rates per pair of models and, with three or more, the Bradley-Terry leaderboard, with model names;
    `sentences` says each win rate in words."""
    judged = judgments(db, evaluation_id)
    names = {m: model_name(db, m) for a, b, _ in judged for m in (a, b)}
    rates = [{**r, "model_name": names[r["model"]], "opponent_name": names[r["opponent"]]}
             for r in arena.win_rates(judged)]
    board = arena.leaderboard(judged, anchor=BASE) if len(names) >= 3 else []
    return {"n": len(judged), "win_rates": rates, "sentences": [win_sentence(r) for r in rates],
            "leaderboard": [{**r, "model_name": names[r["model"]]} for r in board]}


def win_sentence(r: dict) -> str:
    """E.g. "DPO run is preferred to the base model in 64% of 30 blind judgments (95% interval 46-79%): no
    measurable difference." Ties count half."""
    pct = lambda x: f"{100 * x:.0f}%"   # noqa: E731
    verdict = {"better": f"{r['model_name']} is better", "worse": f"{r['opponent_name']} is better",
               "no measurable change": "no measurable difference"}[r["direction"]]
    return (f"{r['model_name']} is preferred to {r['opponent_name']} in {pct(r['rate'])} of {r['n']} blind "
            f"judgments (95% interval {pct(r['low'])}–{pct(r['high'])}): {verdict}.")


def evaluations(db: Queries) -> list[dict]:
    """Every evaluation, newest first, with its tasks and judgments so far."""
    return db.records(f"""
        SELECT e.id, e.name, e.models, e.n_prompts, e.state, e.error, e.created_at,
               (SELECT count(*) FROM evaluation_tasks t WHERE t.evaluation_id = e.id) AS tasks,
               (SELECT count(*) FROM {deciding_sql()} d JOIN evaluation_tasks t ON t.task_id = d.task_id
                WHERE t.evaluation_id = e.id) AS judged
        FROM evaluations e ORDER BY e.created_at DESC""")


def judges(db: Queries, evaluation_id: str | None = None) -> pd.DataFrame:
    """Judgments per annotator (admins only: who judged what stays hidden from annotators)."""
    return db.df(f"""SELECT d.annotator, count(*) AS judgments FROM {deciding_sql()} d
                     JOIN evaluation_tasks e ON e.task_id = d.task_id
                     WHERE coalesce(?, e.evaluation_id) = e.evaluation_id GROUP BY ALL ORDER BY 2 DESC""",
                 [evaluation_id])

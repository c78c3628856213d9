"""Scores for the "model unsure first" queue order (labeling/queue_order.py): a background `score` job
(training/score.py) rates every open task with the newest finished run, or the base model before there is one, and
its scores.parquet replaces the task_scores table when it finishes. The job is queued when an admin picks the order
and again when a training run finishes, so the queue never waits for a model: it serves by the newest scores it has.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from app.context import AppContext
from labeling import queue_order
from storage import rundir
from storage.db import Database
from training.config import JobConfig

SCORED_KINDS = ("single", "pair")


def modes_to_score(db: Database) -> list[str]:
    """The task kinds whose queue is ordered by the model's scores."""
    return [k for k, order in queue_order.orders(db).items() if order == "unsure" and k in SCORED_KINDS]


def open_tasks(db: Database, kinds: list[str]) -> pd.DataFrame:
    """Open labeling tasks of these kinds with their text: the score job's input (task_id, kind, prompt,
    response_a, response_b)."""
    return db.df(f"""SELECT t.id AS task_id, t.kind, p.text AS prompt, ra.text AS response_a, rb.text AS response_b
                     FROM tasks t JOIN prompts p ON p.id = t.prompt_id
                     JOIN responses ra ON ra.id = t.response_a LEFT JOIN responses rb ON rb.id = t.response_b
                     WHERE t.purpose = 'label' AND t.n_done < t.required
                       AND t.kind IN ({', '.join('?' * len(kinds))}) ORDER BY t.id""", list(kinds))


def n_open(db: Database, kinds: list[str]) -> int:
    """How many open labeling tasks of these kinds there are (what a score job would rate)."""
    return int(db.scalar(f"""SELECT count(*) FROM tasks WHERE purpose = 'label' AND n_done < required
                             AND kind IN ({', '.join('?' * len(kinds))})""", list(kinds)) or 0) if kinds else 0


def scoring_model(ctx: AppContext) -> tuple[dict | None, JobConfig]:
    """The newest finished LoRA training run with its adapter (None: the base model) and the score job's settings,
    taken from that run so the scores see answers as it was trained to."""
    for run_id, name, config, run_dir in ctx.db.fetchall(
            "SELECT id, name, config, run_dir FROM runs WHERE kind = 'train' AND state = 'finished' "
            "ORDER BY finished_at DESC, created_at DESC"):
        cfg = JobConfig.from_dict(json.loads(config or "{}"))
        adapter = Path(run_dir or "") / rundir.ADAPTER
        if cfg.lora is not None and adapter.is_dir():
            return ({"id": run_id, "name": name}, JobConfig(
                kind="score", model=cfg.model, lora=cfg.lora, adapter_init=str(adapter), beta=cfg.beta,
                batch_size=cfg.batch_size, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
                precision=cfg.precision, seed=cfg.seed))
    return None, JobConfig(kind="score", model=str(ctx.default_model()), lora=None)


def queue_scoring(ctx: AppContext) -> str | None:
    """Queue a score job over the open tasks of the modes ordered by it; None when no mode is, or nothing is open.
    A job of the same model still waiting to start already covers it."""
    from app.launch import create_run

    kinds = modes_to_score(ctx.db)
    data = open_tasks(ctx.db, kinds) if kinds else pd.DataFrame()
    if data.empty:
        return None
    source, cfg = scoring_model(ctx)
    parent = source["id"] if source else None
    waiting = ctx.db.scalar("SELECT id FROM runs WHERE kind = 'score' AND state = 'queued' "
                            "AND parent_id IS NOT DISTINCT FROM ?", [parent])
    if waiting:
        return None
    name = f"queue scores by {source['name'] if source else 'the base model'}"
    return create_run(ctx, cfg, with_known_references(ctx.db, cfg, data), name=name, parent_id=parent)


SAME_REFERENCE = ("model", "max_length", "max_prompt_length", "quantization")


def with_known_references(db: Database, cfg: JobConfig, data: pd.DataFrame) -> pd.DataFrame:
    """The tasks with the reference log-probs the newest finished score job of the same base model and lengths
    computed (training/score.py takes them instead of a second forward per answer)."""
    for config, run_dir in db.fetchall("SELECT config, run_dir FROM runs WHERE kind = 'score' AND state = 'finished' "
                                       "ORDER BY finished_at DESC LIMIT 5"):
        earlier = json.loads(config or "{}")
        path = Path(run_dir or "") / rundir.SCORES
        if all(earlier.get(k) == getattr(cfg, k) for k in SAME_REFERENCE) and path.exists():
            try:
                known = pd.read_parquet(path, columns=["task_id", "ref_logp_a", "ref_logp_b"])
            except (OSError, ValueError, KeyError):
                continue   # an older job's file without them
            return data.merge(known, on="task_id", how="left")
    return data


def ingest(db: Database, run_id: str, run_dir: str | Path) -> int:
    """Make a finished score job's scores the queue's (all at once), unless newer ones are in already. Returns
    the number of tasks scored."""
    path = Path(run_dir) / rundir.SCORES
    if not path.exists():
        return 0
    scores = pd.read_parquet(path, columns=["task_id", "score", "unsure", "method"])
    with db.transaction():
        current = db.scalar("SELECT max(r.created_at) FROM task_scores s JOIN runs r ON r.id = s.run_id")
        mine = db.scalar("SELECT created_at FROM runs WHERE id = ?", [run_id])
        if current is not None and mine is not None and mine < current:
            return 0
        db.execute("DELETE FROM task_scores")
        db.con.register("new_scores", scores)
        try:
            db.execute("INSERT INTO task_scores (task_id, run_id, score, unsure, method) "
                       "SELECT task_id, ?, score, unsure, method FROM new_scores", [run_id])
        finally:
            db.con.unregister("new_scores")
    return len(scores)


def status(db: Database) -> dict:
    """What the unsure order stands on: how many open tasks have a score, from which job, when."""
    row = db.fetchone("""SELECT s.run_id, any_value(r.name), max(s.scored_at), count(*) FILTER (WHERE t.n_done < t.required)
                         FROM task_scores s JOIN tasks t ON t.id = s.task_id LEFT JOIN runs r ON r.id = s.run_id
                         GROUP BY s.run_id""")
    pending = db.scalar("SELECT count(*) FROM runs WHERE kind = 'score' AND state IN ('queued', 'running')")
    if row is None:
        return {"run_id": None, "name": None, "scored_at": None, "open_scored": 0, "pending": int(pending)}
    return {"run_id": row[0], "name": row[1], "scored_at": row[2], "open_scored": int(row[3]), "pending": int(pending)}

""""Train on what is new": the label-train-rescore loop without choosing anything.

One click queues a run that continues from the newest finished training run's adapter (its reference stays the base
model, so its m_θ and verdict read like every other run's) on all labels so far, with that run's settings and label
filters, dates aside. When it finishes the supervisor scores it on the evaluation set and re-scores the open tasks
for the "model unsure first" queues (app/queue_scores.py), and the team labels on. With no run yet it starts from the
base model with the defaults for the labels there are.
"""
from __future__ import annotations

import json
from pathlib import Path

from app.context import AppContext, User, UserError, admin_only
from labeling.dataset import label_counts, training_rows
from storage import rundir
from training.config import JobConfig

KEPT_FILTERS = ("sites", "annotators", "min_agreement", "with_evaluation")   # "all labels so far": no dates


def latest_run(db) -> dict | None:
    """The newest finished training run (app-started or not), with its snapshot's label filters."""
    row = db.records("""SELECT r.*, s.filters FROM runs r LEFT JOIN snapshots s ON s.id = r.snapshot_id
                        WHERE r.kind = 'train' AND r.state = 'finished' AND r.config IS NOT NULL
                        ORDER BY r.finished_at DESC, r.created_at DESC LIMIT 1""")
    return row[0] if row else None


def first_algorithm(db) -> str:
    """For a first iteration: DPO where there are decided pairs, KTO for good/bad labels, else SFT."""
    n = label_counts(db)
    return "dpo" if n["pairs"] else "kto" if n["good"] and n["bad"] else "sft"


def plan(ctx: AppContext) -> tuple[JobConfig, dict, dict | None]:
    """The config, the label filters and the run it continues from (None: the base)."""
    last = latest_run(ctx.db)
    if last is None:
        return JobConfig(algorithm=first_algorithm(ctx.db), model=str(ctx.default_model())), {}, None
    cfg = JobConfig.from_dict(json.loads(last["config"]))
    filters = {k: v for k, v in json.loads(last["filters"] or "{}").items() if k in KEPT_FILTERS and v}
    adapter = Path(last["run_dir"] or "") / rundir.ADAPTER
    cfg.adapter_init = str(adapter) if cfg.lora is not None and adapter.is_dir() else None
    return cfg, filters, last


@admin_only("start training")
def train_on_what_is_new(ctx: AppContext, user: User) -> str:
    from app.launch import create_run
    from app.preflight import check

    cfg, filters, last = plan(ctx)
    data = training_rows(ctx.db, cfg.data_kind, sites=filters.get("sites"), annotators=filters.get("annotators"),
                         min_agreement=filters.get("min_agreement"),
                         with_evaluation=bool(filters.get("with_evaluation")))
    if data.empty:
        raise UserError("There are no labels to train on yet: label some tasks first.")
    r = check(cfg, data, ctx.home)
    if not r["ok"]:
        raise UserError("Not started: " + " ".join(r["problems"]))
    n_round = 1 + (ctx.db.scalar("SELECT count(*) FROM runs WHERE kind = 'train' AND name LIKE 'round %'") or 0)
    start = f"from {last['name']}" if last and cfg.adapter_init else "from the base model"
    name = f"round {n_round}: {cfg.algorithm} on {len(data)} labels {start}"
    run_id = create_run(ctx, cfg, data, name=name, parent_id=last["id"] if last else None, filters=filters,
                        eval_fraction=0.1)
    settings = "the same settings" if last else "the default settings"
    return (f"Run **{run_id}** queued: {cfg.algorithm.upper()} on all {len(data)} labels so far, {start}, with "
            f"{settings}. When it finishes, it is scored and the queue's order is refreshed.")


def describe(ctx: AppContext) -> str:
    """One line under the button: what it would start now."""
    cfg, _, last = plan(ctx)
    if last is None:
        return f"No run yet: it would start {cfg.algorithm.upper()} from the base model with the default settings."
    start = f"continuing from **{last['name']}**'s adapter" if cfg.adapter_init else "from the base model"
    return f"Runs {cfg.algorithm.upper()} on all labels so far, {start}, with its settings."


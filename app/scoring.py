"""Scoring on the evaluation set: when a LoRA training run finishes, an evaluate job (training/evaluate.py) scores it
on the set's labeled pairs, and the base model is scored once per base and set version, so every run's verdict is
read against the same pairs and the same base row (labeling/evaluation.py reads their eval.json).

A score is a run of kind 'evaluate' named after what it scores: its parent_id is the scored run; the base's has none.
"""
from __future__ import annotations

import json
from pathlib import Path

from app.context import AppContext
from labeling import evalset, runs
from labeling.evaluation import SCORE_SUFFIX
from storage import rundir
from training.config import JobConfig


def base_score_name(model: str, version: int) -> str:
    return f"base model {Path(model).name}{SCORE_SUFFIX.format(version=version)}"


def score_name(run_name: str, version: int) -> str:
    return f"{run_name}{SCORE_SUFFIX.format(version=version)}"


def _evaluate_config(cfg: JobConfig, adapter: str | None) -> JobConfig:
    """The scoring job for a run's settings: DPO's pair scores with the run's adapter on the base (None: the base)."""
    return JobConfig(kind="evaluate", algorithm="dpo", model=cfg.model, lora=cfg.lora, adapter_init=adapter,
                     batch_size=cfg.batch_size, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
                     precision=cfg.precision, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)


def existing(db, name: str, parent_id: str | None) -> str | None:
    """The id of the evaluate run of this name and parent that has not failed (queued, running or finished)."""
    return db.scalar("SELECT id FROM runs WHERE kind = 'evaluate' AND name = ? AND parent_id IS NOT DISTINCT FROM ? "
                     "AND state <> 'failed' ORDER BY created_at DESC LIMIT 1", [name, parent_id])


def queue_scores(ctx: AppContext, run_id: str) -> list[str]:
    """Queue the scoring of a finished LoRA training run, and of its base model where this set version has no score
    yet. Returns the new run ids (none without labeled pairs in the evaluation set)."""
    from app.launch import create_run

    r = runs.run(ctx.db, run_id)
    if r is None or r["kind"] != "train" or not r["config"]:
        return []
    cfg = JobConfig.from_dict(json.loads(r["config"]))
    adapter = Path(r["run_dir"]) / rundir.ADAPTER
    version = evalset.current(ctx.db)["version"]
    pairs = evalset.rows(ctx.db, "pairs")
    if cfg.lora is None or not adapter.exists() or pairs.empty:
        return []
    made = []
    name = score_name(r["name"], version)
    if not existing(ctx.db, name, run_id):
        made.append(create_run(ctx, _evaluate_config(cfg, str(adapter)), pairs, name=name, parent_id=run_id,
                               eval_data=pairs))
    base = base_score_name(cfg.model, version)
    if not existing(ctx.db, base, None):
        made.append(create_run(ctx, _evaluate_config(cfg, None), pairs, name=base, eval_data=pairs))
    return made

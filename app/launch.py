"""Launching runs from the app: freeze the selected labels into a snapshot, lay out the run directory (config.json,
data/train.parquet, data/eval.parquet: the evaluation set's rows, labeling/evalset.py) and queue the run. The supervisor (app/supervisor.py) starts queued runs;
the job itself (python -m training) runs them."""
from __future__ import annotations

import hashlib
import json
import secrets
import time

import pandas as pd

from app.context import AppContext, UserError
from labeling import evalset
from storage import rundir
from storage.snapshots import create_snapshot
from training.config import ConfigError, JobConfig


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def split_eval(df: pd.DataFrame, fraction: float, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out a stable share of prompts (by hash, so the same prompt is always on the same side)."""
    if fraction <= 0 or len(df) < 10:
        return df, df.iloc[0:0]
    key = df["prompt"].map(lambda p: int(hashlib.md5(f"{seed}:{p}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF)
    held = key < fraction
    return df[~held].reset_index(drop=True), df[held].reset_index(drop=True)


def create_run(ctx: AppContext, config: JobConfig, data: pd.DataFrame, name: str | None = None,
               parent_id: str | None = None, filters: dict | None = None, eval_fraction: float = 0.0,
               eval_data: pd.DataFrame | None = None) -> str:
    try:
        config.validate()
    except ConfigError as e:
        raise UserError(str(e)) from None
    if data is None or data.empty:
        raise UserError("There is nothing to train on: the selection has no rows.")
    # Under the database lock: the supervisor lists unknown run directories as runs started outside the app, and
    # must not see this one between its files and its row.
    with ctx.db.lock:
        run_id = _create_run_locked(ctx, config, data, name, parent_id, filters, eval_fraction, eval_data)
    if ctx.supervisor is not None:
        ctx.supervisor.wake()
    return run_id


def _create_run_locked(ctx: AppContext, config: JobConfig, data: pd.DataFrame, name, parent_id, filters,
                       eval_fraction, eval_data) -> str:
    run_id = new_run_id()
    run_dir = ctx.runs_dir / run_id
    (run_dir / rundir.DATA).mkdir(parents=True)
    snap = None
    if config.kind == "train":
        es = evalset.current(ctx.db)
        snap = create_snapshot(ctx.db, ctx.home, config.data_kind, data, filters, evalset_version=es["version"] or None)
        if eval_data is None and es["version"]:   # every run is scored on the same evaluation set
            eval_data = evalset.rows(ctx.db, config.data_kind)
        train, held = (data, eval_data) if eval_data is not None else split_eval(data, eval_fraction, config.seed)
    else:
        train, held = data, eval_data
    train.to_parquet(run_dir / rundir.TRAIN_DATA, index=False)
    if held is not None and len(held):
        held.to_parquet(run_dir / rundir.EVAL_DATA, index=False)
    config.save(run_dir / rundir.CONFIG)
    rundir.write_status(run_dir, state="queued", step=0)
    ctx.db.execute("""INSERT INTO runs (id, name, kind, algorithm, config, snapshot_id, parent_id, run_dir, state)
                      VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued')""",
                   [run_id, name or f"{config.algorithm} {run_id}", config.kind, config.algorithm,
                    json.dumps(config.to_dict()), snap["id"] if snap else None, parent_id, str(run_dir)])
    return run_id


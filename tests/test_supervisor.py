"""Jobs from the app's side: a run is created from labels, started, watched and ingested; an app restart
re-attaches; a killed job shows failed with a reason and can be resumed; generation fills the queues."""
import os
import signal
import time

import pandas as pd
import pytest

from app import charts
from app.jobs import create_run
from app.supervisor import Supervisor
from labeling import queue as Q
from labeling.dataset import training_rows
from storage import rundir
from tests.jobdata import BAD, GOOD, PROMPTS
from training.config import JobConfig


def label_pairs(db, n=8):
    for i in range(n):
        t = Q.create_task(db, "pair", PROMPTS[i % 8] + f" #{i}", [GOOD[i % 8], BAD[i % 8]], site=f"site-{i % 2}")
        Q.save_annotation(db, t, "ann", "a")


def wait_for(sup, ctx, run_id, states=("finished", "failed", "stopped"), timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        sup.tick()
        state = ctx.db.scalar("SELECT state FROM runs WHERE id = ?", [run_id])
        if state in states:
            return state
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} still {state}")


def test_run_is_started_watched_and_ingested(ctx, tiny_model_dir):
    label_pairs(ctx.db)
    cfg = JobConfig(algorithm="eps_dpo", model=str(tiny_model_dir), batch_size=2, max_steps=5, max_length=64,
                    max_prompt_length=32, learning_rate=1e-3, max_new_tokens=8)
    data = training_rows(ctx.db, "pairs")
    run_id = create_run(ctx, cfg, data, eval_data=data.head(3))
    sup = Supervisor(ctx)
    assert wait_for(sup, ctx, run_id) == "finished"
    n = ctx.db.scalar("SELECT count(DISTINCT step) FROM run_scalars WHERE run_id = ? AND name = 'loss'", [run_id])
    assert n == 5
    betas = ctx.db.fetchall("SELECT value FROM run_scalars WHERE run_id = ? AND name = 'kl/beta' ORDER BY step", [run_id])
    assert len(betas) == 5 and betas[0][0] == pytest.approx(0.1)
    inst = ctx.db.df("SELECT * FROM run_instances WHERE run_id = ?", [run_id])
    assert set(inst.step) == {1, 2, 3, 4, 5} and inst.task_id.notna().all()
    # charts and the extreme-instance table come from those rows, with prompt and labels joined back
    assert len(charts.m_theta_bands(ctx.db, run_id).data) > 0
    assert len(charts.beta_chart(ctx.db, run_id).data) > 0
    ext = charts.extreme_instances(ctx.db, run_id)
    assert len(ext) > 0 and ext["labels"].str.contains("ann: a").all()
    # a new supervisor (app restart) re-ingests without doubling
    Supervisor(ctx).ingest(run_id, rundir_path(ctx, run_id))
    assert ctx.db.scalar("SELECT count(DISTINCT step) FROM run_scalars WHERE run_id = ? AND name = 'loss'", [run_id]) == 5
    assert ctx.db.scalar("SELECT count(*) FROM run_scalars WHERE run_id = ? AND name = 'loss' AND split = 'train'",
                         [run_id]) == 5


def rundir_path(ctx, run_id):
    from pathlib import Path

    return Path(ctx.db.scalar("SELECT run_dir FROM runs WHERE id = ?", [run_id]))


def test_killed_job_fails_with_reason_and_resumes(ctx, tiny_model_dir):
    label_pairs(ctx.db)
    cfg = JobConfig(algorithm="dpo", model=str(tiny_model_dir), batch_size=2, max_steps=3000, max_length=64,
                    max_prompt_length=32, checkpoint_every=5)
    run_id = create_run(ctx, cfg, training_rows(ctx.db, "pairs"))
    sup = Supervisor(ctx)
    deadline = time.time() + 90
    while time.time() < deadline:
        sup.tick()
        st = rundir.read_status(rundir_path(ctx, run_id)) or {}
        if st.get("step", 0) >= 6:
            break
        time.sleep(0.2)
    pid = ctx.db.scalar("SELECT pid FROM runs WHERE id = ?", [run_id])
    os.kill(pid, signal.SIGKILL)
    # a restarted app (new supervisor, no process handle) notices the dead job
    sup2 = Supervisor(ctx)
    time.sleep(0.5)
    assert wait_for(sup2, ctx, run_id, ("failed",), timeout=60) == "failed"
    err = ctx.db.scalar("SELECT error FROM runs WHERE id = ?", [run_id])
    assert "ended without saying why" in err
    assert list((rundir_path(ctx, run_id) / "checkpoints").glob("step-*"))
    sup2.resume(run_id)
    sup2.tick()
    deadline = time.time() + 60
    while time.time() < deadline:
        sup2.tick()
        st = rundir.read_status(rundir_path(ctx, run_id)) or {}
        if st.get("resumed_from"):
            break
        time.sleep(0.2)
    assert st.get("resumed_from", 0) >= 5
    sup2.stop(run_id)
    assert wait_for(sup2, ctx, run_id, ("stopped",), timeout=60) == "stopped"


def test_generation_job_fills_the_queues(ctx, tiny_model_dir):
    prompts = pd.DataFrame({"prompt": ["Check the pump", "Refund timing?"], "prompt_id": ["p1", "p2"], "site": ["a", "b"]})
    cfg = JobConfig(kind="generate", model=str(tiny_model_dir), num_samples=2, max_new_tokens=6)
    run_id = create_run(ctx, cfg, prompts)
    assert wait_for(Supervisor(ctx), ctx, run_id) == "finished"
    kinds = dict(ctx.db.fetchall("SELECT kind, count(*) FROM tasks GROUP BY kind"))
    assert kinds.get("pair", 0) >= 1 and kinds.get("single", 0) >= 2
    assert Q.next_task(ctx.db, "someone", kind="pair")["site"] in ("a", "b")

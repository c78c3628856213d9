"""Jobs from the app's side: a run is created from labels, started, watched and ingested; an app restart
re-attaches; a killed job shows failed with a reason and can be resumed; generation fills the queues."""
import os
import signal
import time

import pandas as pd
import pytest

from app import charts
from app.launch import create_run
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


@pytest.mark.slow
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
    assert ctx.db.fetchone("SELECT state, error FROM runs WHERE id = ?", [run_id]) == ("running", None)
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


def test_a_flower_run_in_the_runs_folder_is_listed_and_charted_but_never_launched(ctx, monkeypatch):
    """A Flower coordinator writes its run directory under the app's runs folder: the Runs page lists it, charts
    its per-site metrics live and follows its state, and stop/resume are refused with a sentence."""
    from app.context import UserError
    from training.config import FederatedConfig

    d = ctx.runs_dir / "fed-1"
    d.mkdir(parents=True)
    JobConfig(algorithm="kto", model="/srv/m", federated=FederatedConfig(rounds=2, local_steps=2)).save(d / rundir.CONFIG)
    rundir.write_status(d, state="queued", phase="submitted to the SuperLink")
    sup = Supervisor(ctx)
    sup.tick()
    row = ctx.db.fetchone("SELECT state, origin, algorithm, name FROM runs WHERE id = 'fed-1'")
    assert row[:3] == ("queued", "external", "kto") and "external" in row[3]
    launched = []
    monkeypatch.setattr(sup, "_launch", lambda *a: launched.append(a))
    rundir.write_status(d, state="running", pid=os.getpid(), step=1, total=2)
    for site in ("plant-a", "plant-b"):
        rundir.append_metrics(d, {"step": 1, "time": time.time(), "split": "train", "site": site, "round": 1, "loss": 0.5})
    sup.tick()
    assert launched == []
    assert ctx.db.fetchone("SELECT state, step FROM runs WHERE id = 'fed-1'") == ("running", 1)
    sites = ctx.db.fetchall("SELECT DISTINCT site FROM run_scalars WHERE run_id = 'fed-1' AND name = 'loss' ORDER BY 1")
    assert sites == [("plant-a",), ("plant-b",)]
    assert len(charts.per_site_chart(ctx.db, "fed-1").data) == 2
    from app.pages.runs import status_line
    assert "outside the app" in status_line(ctx, "fed-1")
    with pytest.raises(UserError, match="outside the app"):
        sup.stop("fed-1")
    rundir.write_status(d, state="finished", step=2)
    sup.tick()
    assert ctx.db.scalar("SELECT state FROM runs WHERE id = 'fed-1'") == "finished"
    # a second directory whose driver died: failed, with the reason
    d2 = ctx.runs_dir / "fed-2"
    d2.mkdir()
    (d2 / rundir.CONFIG).write_text((d / rundir.CONFIG).read_text())
    rundir.write_status(d2, state="running", pid=os.getpid())
    st = rundir.read_json(d2 / rundir.STATUS)
    rundir.write_json_atomic(d2 / rundir.STATUS, {**st, "heartbeat": time.time() - 3600})
    sup.discover()
    sup.tick()
    state, error = ctx.db.fetchone("SELECT state, error FROM runs WHERE id = 'fed-2'")
    assert state == "failed" and "heartbeat" in error


def test_runs_the_app_creates_are_never_taken_for_external_ones(ctx, tiny_model_dir):
    from app.launch import create_run

    sup = Supervisor(ctx)
    label_pairs(ctx.db)
    cfg = JobConfig(algorithm="dpo", model=str(tiny_model_dir), batch_size=2, max_steps=1, max_length=64,
                    max_prompt_length=32)
    run_id = create_run(ctx, cfg, training_rows(ctx.db, "pairs"))
    assert sup.discover() == []
    assert ctx.db.scalar("SELECT origin FROM runs WHERE id = ?", [run_id]) == "app"

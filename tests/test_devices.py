"""The supervisor hands out the machine's accelerators: one job at a time on a CPU-only machine, jobs side by side
on different GPUs, a several-GPU job through torchrun on GPUs that are all free, first in first out.

No GPU is needed: the supervisor is given a simulated GPU count, and its spawn is replaced by a stand-in job that
records its command and environment, runs until the test releases it, and stops on SIGTERM like a real job."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.context import UserError
from app.devices import machine_gpus
from app.launch import create_run
from app.supervisor import Supervisor
from labeling.dataset import training_rows
from storage import rundir
from tests.test_supervisor import label_pairs
from training.config import ConfigError, JobConfig

ROOT = Path(__file__).resolve().parents[1]
STAND_IN = """
import pathlib, signal, sys, time
from storage import rundir
d = pathlib.Path(sys.argv[1])
def stop(*_):
    rundir.write_status(d, state="stopped")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
(d / "ready").touch()
while not (d / "release").exists():
    time.sleep(0.02)
rundir.write_status(d, state="finished")
while (d / "linger").exists():   # still saving, or freeing its GPU memory
    time.sleep(0.02)
"""


class StandIn:
    """A spawn for the supervisor: remembers (argv, env) per run directory and starts the stand-in job."""

    def __init__(self):
        self.launched: dict[str, tuple[list[str], dict]] = {}
        self.procs: list[subprocess.Popen] = []

    def __call__(self, argv, env, run_dir):
        self.launched[Path(run_dir).name] = (argv, env)
        proc = subprocess.Popen([sys.executable, "-c", STAND_IN, str(run_dir)], cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
        self.procs.append(proc)
        return proc

    def cuda(self, run_id):
        return self.launched[run_id][1].get("CUDA_VISIBLE_DEVICES")


@pytest.fixture
def spawn():
    s = StandIn()
    yield s
    for p in s.procs:
        p.kill()
        p.wait()


@pytest.fixture
def queue(ctx):
    """queue(gpus=1): a tiny DPO run queued with that many GPUs per job; returns its id."""
    label_pairs(ctx.db)
    data = training_rows(ctx.db, "pairs")
    return lambda gpus=1: create_run(ctx, JobConfig(algorithm="dpo", model="/srv/model", gpus=gpus), data)


def state(ctx, run_id):
    return ctx.db.scalar("SELECT state FROM runs WHERE id = ?", [run_id])


def tick_until(sup, ctx, wanted: dict, timeout=60):
    """Tick the supervisor until every run is in its wanted state (the deadline only ends a hung test)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        sup.tick()
        if all(state(ctx, r) == s for r, s in wanted.items()):
            return
        time.sleep(0.05)
    raise AssertionError({r: state(ctx, r) for r in wanted})


def release(ctx, run_id):
    (ctx.runs_dir / run_id / "release").touch()


def test_one_gpu_jobs_run_side_by_side_each_on_its_own_gpu(ctx, spawn, queue):
    sup = Supervisor(ctx, gpus=2, spawn=spawn)
    a, b = queue(), queue()
    tick_until(sup, ctx, {a: "running", b: "running"})
    assert {spawn.cuda(a), spawn.cuda(b)} == {"0", "1"}
    assert spawn.launched[a][0][1:] == ["-m", "training", str(ctx.runs_dir / a)]
    assert rundir.read_status(ctx.runs_dir / a)["devices"] == [spawn.cuda(a)]
    release(ctx, a), release(ctx, b)
    tick_until(sup, ctx, {a: "finished", b: "finished"})


def test_a_two_gpu_job_waits_for_two_free_gpus_and_later_jobs_wait_behind_it(ctx, spawn, queue):
    sup = Supervisor(ctx, gpus=2, spawn=spawn)
    one, two, after = queue(), queue(gpus=2), queue()
    tick_until(sup, ctx, {one: "running"})
    sup.tick()
    # a GPU is free, but the job queued after the two-GPU one does not overtake it
    assert (state(ctx, two), state(ctx, after)) == ("queued", "queued")
    release(ctx, one)
    tick_until(sup, ctx, {one: "finished", two: "running"})
    argv, _ = spawn.launched[two]
    assert argv[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert argv[5:] == ["-m", "training", str(ctx.runs_dir / two)]
    assert spawn.cuda(two) == "0,1" and state(ctx, after) == "queued"
    release(ctx, two)
    tick_until(sup, ctx, {two: "finished", after: "running"})


def test_without_a_gpu_jobs_run_one_at_a_time_as_before(ctx, spawn, queue):
    sup = Supervisor(ctx, gpus=0, spawn=spawn)
    a, b = queue(), queue()
    tick_until(sup, ctx, {a: "running"})
    sup.tick()
    assert state(ctx, b) == "queued"
    assert spawn.cuda(a) == os.environ.get("CUDA_VISIBLE_DEVICES")   # the supervisor leaves it alone
    assert spawn.launched[a][0][1:3] == ["-m", "training"]
    release(ctx, a)
    tick_until(sup, ctx, {a: "finished", b: "running"})


def test_a_job_asking_for_more_gpus_than_the_machine_has_fails_in_words_and_holds_up_no_one(ctx, spawn, queue):
    sup = Supervisor(ctx, gpus=2, spawn=spawn)
    big, small = queue(gpus=3), queue()
    tick_until(sup, ctx, {big: "failed", small: "running"})
    assert ctx.db.scalar("SELECT error FROM runs WHERE id = ?", [big]) == \
        "This job asks for 3 GPUs; this machine has 2."
    cpu_only = Supervisor(ctx, gpus=0, spawn=spawn)
    two = queue(gpus=2)
    tick_until(cpu_only, ctx, {two: "failed"})
    assert "this machine has none" in ctx.db.scalar("SELECT error FROM runs WHERE id = ?", [two])


def test_a_job_that_has_finished_keeps_its_gpu_until_its_process_exits(ctx, spawn, queue):
    sup = Supervisor(ctx, gpus=1, spawn=spawn)
    a, b = queue(), queue()
    tick_until(sup, ctx, {a: "running"})
    (ctx.runs_dir / a / "linger").touch()
    release(ctx, a)
    tick_until(sup, ctx, {a: "finished"})
    sup.tick()
    assert state(ctx, b) == "queued"
    (ctx.runs_dir / a / "linger").unlink()
    tick_until(sup, ctx, {b: "running"})


def test_after_an_app_restart_a_running_job_keeps_its_gpu(ctx, spawn, queue):
    first = queue()
    tick_until(Supervisor(ctx, gpus=2, spawn=spawn), ctx, {first: "running"})
    restarted = Supervisor(ctx, gpus=2, spawn=spawn)   # no process handle: only the run directory tells
    b, c = queue(), queue()
    tick_until(restarted, ctx, {b: "running"})
    restarted.tick()
    assert spawn.cuda(b) != spawn.cuda(first) and state(ctx, c) == "queued"
    release(ctx, first)
    tick_until(restarted, ctx, {first: "finished", c: "running"})
    assert spawn.cuda(c) == spawn.cuda(first)


def test_stopping_a_several_gpu_job_signals_it_and_frees_its_gpus(ctx, spawn, queue):
    sup = Supervisor(ctx, gpus=2, spawn=spawn)
    two = queue(gpus=2)
    nxt = queue(gpus=2)
    tick_until(sup, ctx, {two: "running"})
    deadline = time.time() + 60
    while not (ctx.runs_dir / two / "ready").exists() and time.time() < deadline:
        time.sleep(0.05)   # a job stopped before it can catch SIGTERM ends failed, as a real one would
    sup.stop(two)
    tick_until(sup, ctx, {two: "stopped", nxt: "running"})


def test_gpus_is_a_setting_of_training_runs(monkeypatch):
    with pytest.raises(ConfigError, match="gpus must be at least 1"):
        JobConfig(model="/m", gpus=0).validate()
    with pytest.raises(ConfigError, match="Only a training run"):
        JobConfig(kind="generate", model="/m", gpus=2).validate()
    monkeypatch.setenv("PREFLAB_GPUS", "4")
    assert machine_gpus() == ["0", "1", "2", "3"]
    monkeypatch.setenv("PREFLAB_GPUS", "four")
    with pytest.raises(UserError, match="whole number"):
        machine_gpus()


def test_the_train_page_form_sets_gpus_per_job(ctx):
    from app.pages.train import build_config
    from tests.test_pages_train import form

    assert build_config(ctx, form("dpo", "/m", gpus=2.0)).gpus == 2
    assert build_config(ctx, form("dpo", "/m")).gpus == 1


@pytest.mark.slow
def test_a_real_two_process_job_through_torchrun_stops_with_a_checkpoint_and_resumes(ctx, tiny_model_dir):
    """On CPU (gloo), with two simulated GPUs: the supervisor's own launch, stop and resume of a gpus=2 run."""
    label_pairs(ctx.db)
    cfg = JobConfig(algorithm="dpo", model=str(tiny_model_dir), batch_size=2, max_steps=3000, max_length=64,
                    max_prompt_length=32, checkpoint_every=1000, gpus=2)
    run_id = create_run(ctx, cfg, training_rows(ctx.db, "pairs"))
    d, sup = ctx.runs_dir / run_id, Supervisor(ctx, gpus=2)

    def tick_until_status(ok, timeout=240):
        deadline = time.time() + timeout
        while time.time() < deadline and not ok(rundir.read_status(d) or {}):
            sup.tick()
            time.sleep(0.2)
        assert ok(rundir.read_status(d) or {}), (rundir.read_status(d), (d / rundir.LOG).read_text()[-2000:])

    tick_until_status(lambda st: st.get("step", 0) >= 2)
    sup.stop(run_id)
    tick_until(sup, ctx, {run_id: "stopped"}, timeout=240)
    stopped_at = rundir.read_status(d)["step"]
    assert (d / "checkpoints" / f"step-{stopped_at:07d}").is_dir()
    sup.resume(run_id)
    tick_until_status(lambda st: st.get("resumed_from") == stopped_at and st.get("step", 0) > stopped_at)
    steps = [r["step"] for r in rundir.read_metrics(d)[0] if r.get("split", "train") == "train"]
    assert steps == list(range(1, len(steps) + 1))   # one line per step, from the main process only
    sup.stop(run_id)
    tick_until(sup, ctx, {run_id: "stopped"}, timeout=240)

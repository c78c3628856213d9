"""Labeling first (app.priority): a training job the app started is paused exactly while a labeling request is
served, continues afterwards, and can never be starved by labeling (budget, longest pause, app restart)."""
import subprocess
import sys
import threading
import time

import pytest

from app.pages import label as L
from app.priority import LabelingFirst
from app.supervisor import Supervisor
from labeling import queue as Q
from tests.test_handlers import endpoints


@pytest.fixture
def job():
    """A stand-in for a training job: a child process in its own session, as the supervisor launches jobs."""
    proc = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.01)"],
                            start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def stopped(proc, expect: bool | None = None, wait_s: float = 5.0) -> bool:
    """Whether the process is stopped (state T in /proc), waiting up to wait_s for it to become `expect`."""
    deadline = time.time() + wait_s
    while True:
        with open(f"/proc/{proc.pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if expect is None or (state == "T") == expect or time.time() > deadline:
            return state == "T"
        time.sleep(0.01)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_job_pauses_for_the_request_and_continues_after_the_last_overlapping_one(job):
    gate = LabelingFirst(lambda: [job], enabled=True)
    assert not stopped(job)
    first_in, second_out = threading.Event(), threading.Event()

    def other_request():
        with gate.hold():
            first_in.set()
            second_out.wait(5)

    t = threading.Thread(target=other_request)
    with gate.hold():
        assert stopped(job, True)
        t.start()
        first_in.wait(5)
    assert stopped(job, True, wait_s=0.3)        # the other request is still being served
    second_out.set()
    t.join()
    assert not stopped(job, False)
    assert gate.pauses == 1 and gate.paused_s > 0


def test_off_means_never_paused(job):
    gate = LabelingFirst(lambda: [job], enabled=False)
    with gate.hold():
        assert not stopped(job, True, wait_s=0.3)
    assert gate.pauses == 0


def test_labeling_cannot_take_more_than_its_share_of_the_jobs_time(job):
    clock = Clock()
    gate = LabelingFirst(lambda: [job], enabled=True, burst_s=1.0, share=0.5, max_pause_s=10, clock=clock)
    with gate.hold():
        assert stopped(job, True)
        clock.t += 2.5                            # a long stretch of requests: more than the budget and its refill
    assert not stopped(job, False)
    with gate.hold():                             # no budget left: served without pausing the job
        assert not stopped(job, True, wait_s=0.3)
    clock.t += 2.0                                # refills at 0.5 s per second
    with gate.hold():
        assert stopped(job, True)
    assert gate.pauses == 2


def test_a_stuck_request_does_not_keep_the_job_paused(job):
    clock = Clock()
    gate = LabelingFirst(lambda: [job], enabled=True, max_pause_s=1.0, clock=clock)
    with gate.hold():
        assert stopped(job, True)
        gate.enforce()                            # the supervisor's tick, within the limit: still paused
        assert stopped(job, True)
        clock.t += 1.5
        gate.enforce()
        assert not stopped(job, False)            # continued while the request is still open
    assert not stopped(job)


def test_label_page_requests_pause_the_apps_job(ctx, job, monkeypatch):
    Q.create_task(ctx.db, "single", "How do I fix the pump?", ["Check the seal."])
    Q.create_task(ctx.db, "single", "How do I restart it?", ["Press reset."])
    ctx.supervisor = sup = Supervisor(ctx)
    sup._procs["run-x"] = job
    sup.labeling_first.enabled = True
    seen = []
    save = Q.save_annotation
    monkeypatch.setattr(Q, "save_annotation", lambda *a, **k: (seen.append(stopped(job, True)), save(*a, **k))[1])
    api = endpoints(ctx, L)                       # the page's handlers, as the app serves them
    shown = api["label_next"]("Good / bad", "(all sites)", None)
    saved = api["label_a"](shown[0], "Good / bad", "(all sites)", "", None)
    assert saved[1] == "Saved: good." and seen == [True]
    assert not stopped(job, False)


def test_an_app_restart_continues_a_job_left_paused(ctx, job):
    """The app died in the middle of a labeling request: its job must not stay stopped forever."""
    ctx.db.execute("""INSERT INTO runs (id, name, kind, algorithm, config, run_dir, state, origin, pid)
                      VALUES ('r1', 'r1', 'train', 'dpo', '{}', '/nonexistent', 'running', 'app', ?)""", [job.pid])
    request = LabelingFirst(lambda: [job], enabled=True).hold()
    request.__enter__()                           # paused, and the app gone before the request ended
    assert stopped(job, True)
    sup = Supervisor(ctx).start()
    try:
        assert not stopped(job, False)
    finally:
        sup.shutdown()


def test_the_setting_turns_it_on_or_off(monkeypatch, job):
    monkeypatch.setenv("PREFLAB_LABELING_FIRST", "0")
    assert LabelingFirst(lambda: [job]).enabled is False
    monkeypatch.setenv("PREFLAB_LABELING_FIRST", "1")
    assert LabelingFirst(lambda: [job]).enabled is True
    monkeypatch.setenv("PREFLAB_LABELING_FIRST", "auto")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")      # no GPU a job could use: jobs train on the CPU
    assert LabelingFirst(lambda: [job]).enabled is True

"""Queue orders (labeling/queue_order.py): model unsure first serves the smallest margins first, disagreement first
serves split tasks (and tie-breakers) first, and a score job is a background job like training: labeling never
waits for it and pauses it (labeling first)."""
import json
import subprocess
import sys

import pandas as pd
import pytest

from app import iterate, queue_scores
from app.context import PermissionDenied, User
from app.launch import create_run
from app.pages import queue_section
from app.supervisor import Supervisor
from labeling import queue as Q
from labeling import queue_order
from labeling.dataset import training_rows
from storage import rundir
from tests.test_priority import stopped
from training.config import JobConfig


def pairs(db, n, required=1, start=0):
    return [Q.create_task(db, "pair", f"Question {i}?", [f"Answer {i} one", f"Answer {i} two"], required=required)
            for i in range(start, start + n)]


def put_scores(db, run_id, unsure: dict):
    db.execute("DELETE FROM task_scores")
    for tid, u in unsure.items():
        db.execute("INSERT INTO task_scores (task_id, run_id, score, unsure, method) VALUES (?, ?, ?, ?, 'test')",
                   [tid, run_id, -u, u])


def served(db, who, kind="pair", n=100, value="a"):
    out = []
    while len(out) < n and (t := Q.next_task(db, who, kind=kind)) is not None:
        out.append(t["task_id"])
        Q.save_annotation(db, t["task_id"], who, value)
    return out


def test_unsure_first_serves_the_smallest_margins_first_then_unscored_tasks(db):
    ids = pairs(db, 8)
    unsure = {ids[0]: 0.9, ids[1]: 0.05, ids[2]: 2.0, ids[3]: 0.3, ids[4]: 0.01}   # ids[5:] have no score yet
    put_scores(db, "score-1", unsure)
    queue_order.set_order(db, "pair", "unsure")
    got = served(db, "ann")
    assert got[:5] == sorted(unsure, key=unsure.get)
    assert sorted(got[5:]) == sorted(ids[5:])
    # the order belongs to the mode: good/bad tasks keep the random order
    assert queue_order.order_of(db, "single") == "random"


def test_unsure_first_with_two_annotators_each_gets_the_least_sure_free_task(db):
    ids = pairs(db, 4, required=1)
    put_scores(db, "score-1", {ids[0]: 0.1, ids[1]: 0.2, ids[2]: 0.3, ids[3]: 0.4})
    queue_order.set_order(db, "pair", "unsure")
    first, second = Q.next_task(db, "ann1", kind="pair"), Q.next_task(db, "ann2", kind="pair")
    assert (first["task_id"], second["task_id"]) == (ids[0], ids[1])   # ids[0] is leased to ann1
    assert Q.next_task(db, "ann1", kind="pair")["task_id"] == ids[0]   # a reload shows the held task


def test_random_order_ignores_scores(db):
    ids = pairs(db, 30)
    put_scores(db, "score-1", {tid: i for i, tid in enumerate(ids)})
    got = served(db, "ann")
    assert sorted(got) == sorted(ids) and got != ids     # every task, not in score order


def test_disagreement_first_serves_split_votes_then_tie_breakers_then_started_then_fresh(db):
    agree, split, fresh = pairs(db, 3, required=3)
    (tied,) = pairs(db, 1, required=2, start=10)
    (resolved,) = pairs(db, 1, required=3, start=20)
    for tid, votes in ((agree, "aa"), (split, "ab"), (tied, "ab"), (resolved, "ab")):
        for who, v in zip(("x", "y"), votes):
            Q.save_annotation(db, tid, who, v)
    db.execute("INSERT INTO annotations (task_id, annotator, value, source) VALUES (?, 'boss', 'a', 'resolution')",
               [resolved])
    queue_order.set_order(db, "pair", "disagreement")
    got = served(db, "z", value="b")
    assert set(got[:2]) == {split, tied}                # a resolved task is decided, however its votes split
    assert set(got[2:4]) == {agree, resolved} and got[4] == fresh   # then started before fresh, as ever
    # the tie-breaker made a majority: the tied task now trains (b won 2 to 1)
    rows = training_rows(db, "pairs")
    assert tied in set(rows["task_id"])
    # those who already voted on the tied task are never served it again
    assert tied not in served(db, "x")


def test_set_order_refuses_what_cannot_be_ordered(db):
    with pytest.raises(ValueError, match="needs answers to score"):
        queue_order.set_order(db, "write", "unsure")
    with pytest.raises(ValueError, match="Unknown queue order"):
        queue_order.set_order(db, "pair", "loudest")


def fake_run(ctx, name="dpo run", beta=0.2, finished=True, lora=True):
    """A training run row as a finished run leaves it: config, run directory with an adapter folder."""
    cfg = JobConfig(algorithm="dpo", model=str(ctx.default_model()), beta=beta, batch_size=2)
    if not lora:
        cfg.lora = None
    data = pd.DataFrame({"prompt": ["p"] * 10, "chosen": ["c"] * 10, "rejected": ["r"] * 10})
    run_id = create_run(ctx, cfg, data, name=name, filters={"sites": ["plant-a"], "since": "2026-01-01"})
    run_dir = ctx.runs_dir / run_id
    (run_dir / rundir.ADAPTER).mkdir()
    if finished:
        ctx.db.execute("UPDATE runs SET state = 'finished', finished_at = current_timestamp WHERE id = ?", [run_id])
    return run_id


def test_a_score_job_runs_beside_labeling_which_never_waits_for_it(ctx, monkeypatch):
    """The order is picked: a score job is queued and started like any job; while it runs the queue serves in the
    random order (no waiting), each labeling request pauses it (labeling first), and once it finishes its scores
    order the queue."""
    ids = pairs(ctx.db, 6)
    queue_order.set_order(ctx.db, "pair", "unsure")
    run_id = queue_scores.queue_scoring(ctx)
    cfg = JobConfig.load(ctx.runs_dir / run_id / rundir.CONFIG)
    assert cfg.kind == "score" and cfg.adapter_init is None           # no run yet: the base model scores
    assert set(pd.read_parquet(ctx.runs_dir / run_id / rundir.TRAIN_DATA)["task_id"]) == set(ids)
    assert queue_scores.queue_scoring(ctx) is None                      # one waiting job covers it

    jobs = []

    def spawn(argv, env, run_dir):   # a stand-in for `python -m training RUN_DIR`: a process in its own session
        jobs.append(subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.01)"],
                                     start_new_session=True))
        return jobs[-1]

    ctx.supervisor = sup = Supervisor(ctx, gpus=0, spawn=spawn)
    sup.labeling_first.enabled = True
    try:
        sup.tick()
        assert ctx.db.scalar("SELECT state FROM runs WHERE id = ?", [run_id]) == "running"
        seen = []
        next_task = Q.next_task
        monkeypatch.setattr(Q, "next_task", lambda *a, **k: (seen.append(stopped(jobs[0], True)), next_task(*a, **k))[1])
        with ctx.labeling():
            first = Q.next_task(ctx.db, "ann", kind="pair")
        assert first is not None and seen == [True]                     # served at once, the job paused meanwhile
        assert not stopped(jobs[0], False)                             # and it continues after
        Q.save_annotation(ctx.db, first["task_id"], "ann", "a")

        # the job writes its scores and ends: the supervisor makes them the queue's order
        rest = [t for t in ids if t != first["task_id"]]
        pd.DataFrame({"task_id": ids, "score": 0.0, "unsure": [rest.index(t) if t in rest else 0 for t in ids],
                      "method": "likelihood"}).to_parquet(ctx.runs_dir / run_id / rundir.SCORES)
        rundir.write_status(ctx.runs_dir / run_id, state="finished")
        sup.tick()
        assert queue_scores.status(ctx.db)["run_id"] == run_id
        from app.pages.runs import status_line
        assert "(scores for the labeling queue's order) is **finished**" in status_line(ctx, run_id)
        monkeypatch.setattr(Q, "next_task", next_task)
        assert served(ctx.db, "ann") == rest
    finally:
        sup.shutdown()
        for j in jobs:
            j.kill()
            j.wait()


def test_a_finished_training_run_rescores_the_queue_with_its_adapter(ctx):
    pairs(ctx.db, 3)
    queue_order.set_order(ctx.db, "pair", "unsure")
    sup = Supervisor(ctx, gpus=0, spawn=lambda *a: None)
    run_id = fake_run(ctx, beta=0.3, finished=False)
    sup._finish(run_id, ctx.runs_dir / run_id, "finished", None)
    (score_id,) = [r for (r,) in ctx.db.fetchall("SELECT id FROM runs WHERE kind = 'score'")]
    cfg = JobConfig.load(ctx.runs_dir / score_id / rundir.CONFIG)
    assert cfg.adapter_init == str(ctx.runs_dir / run_id / rundir.ADAPTER) and cfg.beta == 0.3
    assert ctx.db.scalar("SELECT parent_id FROM runs WHERE id = ?", [score_id]) == run_id


def test_an_older_score_job_finishing_late_does_not_replace_newer_scores(ctx):
    (tid,) = pairs(ctx.db, 1)
    queue_order.set_order(ctx.db, "pair", "unsure")
    old = queue_scores.queue_scoring(ctx)
    fake_run(ctx)
    new = queue_scores.queue_scoring(ctx)
    assert old and new and old != new
    for run_id, u in ((new, 0.5), (old, 9.0)):
        pd.DataFrame({"task_id": [tid], "score": [u], "unsure": [u], "method": ["m"]}).to_parquet(
            ctx.runs_dir / run_id / rundir.SCORES)
    ctx.db.execute("UPDATE runs SET created_at = created_at + INTERVAL 1 SECOND WHERE id = ?", [new])
    assert queue_scores.ingest(ctx.db, new, ctx.runs_dir / new) == 1
    assert queue_scores.ingest(ctx.db, old, ctx.runs_dir / old) == 0
    assert ctx.db.scalar("SELECT unsure FROM task_scores") == 0.5


def test_train_on_what_is_new_continues_from_the_latest_adapter_on_all_labels(ctx, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("PREFLAB_MODEL", str(tiny_model_dir))
    admin = User("boss", "admin")
    with pytest.raises(Exception, match="no labels"):
        iterate.train_on_what_is_new(ctx, admin)
    ids = [Q.create_task(ctx.db, "pair", f"Question {i}?", [f"Answer {i} one", f"Answer {i} two"], site="plant-a")
           for i in range(12)]
    for tid in ids:
        Q.save_annotation(ctx.db, tid, "ann", "a")
    assert "base model" in iterate.describe(ctx)
    last = fake_run(ctx, beta=0.25)
    msg = iterate.train_on_what_is_new(ctx, admin)
    new = ctx.db.scalar("SELECT id FROM runs WHERE kind = 'train' AND id <> ? ORDER BY created_at DESC LIMIT 1",
                        [last])
    assert new in msg
    cfg = JobConfig.load(ctx.runs_dir / new / rundir.CONFIG)
    assert cfg.adapter_init == str(ctx.runs_dir / last / rundir.ADAPTER) and cfg.beta == 0.25
    assert ctx.db.scalar("SELECT parent_id FROM runs WHERE id = ?", [new]) == last
    filters = json.loads(ctx.db.scalar("SELECT s.filters FROM runs r JOIN snapshots s ON s.id = r.snapshot_id "
                                       "WHERE r.id = ?", [new]))
    assert filters == {"sites": ["plant-a"]}                         # the same label filters, dates aside
    trained = len(pd.read_parquet(ctx.runs_dir / new / rundir.TRAIN_DATA))
    held = rundir.EVAL_DATA
    n_held = len(pd.read_parquet(ctx.runs_dir / new / held)) if (ctx.runs_dir / new / held).exists() else 0
    assert trained + n_held == 12                                    # every label so far
    with pytest.raises(PermissionDenied):
        iterate.train_on_what_is_new(ctx, User("ann", "annotator"))


def test_the_data_page_sets_the_order_for_admins_only_and_says_what_the_scores_stand_on(ctx):
    from app.pages import data as D
    from tests.test_handlers import endpoints

    pairs(ctx.db, 3)
    assert "Only admins" in queue_section.summary(ctx, User("ann", "annotator"))
    with pytest.raises(PermissionDenied):
        queue_section.set_order(ctx, User("ann", "annotator"), "Pairs", "unsure")
    api = endpoints(ctx, D)
    msg = api["queue_order_set"]("Pairs", "unsure", None)
    assert "Score job" in msg and queue_order.order_of(ctx.db, "pair") == "unsure"
    text = api["data_queue"](None)
    assert "Pairs: **Model unsure first**" in text and "0 of 3 open tasks scored" in text
    assert "queued or running" in text
    with pytest.raises(Exception, match="needs answers to score"):
        api["queue_order_set"]("Write", "unsure", None)


def test_the_split_tasks_kept_in_memory_follow_every_vote_change(db):
    """The disagreement order's index is updated from new annotations only; after any mix of votes, changes,
    undos, skips and resolutions it must equal a recount from scratch."""
    import random as R

    rng = R.Random(3)
    ids = pairs(db, 12, required=3)
    queue_order.set_order(db, "pair", "disagreement")
    Q.next_task(db, "z", kind="pair")                       # builds the index
    for step in range(150):
        tid, who = rng.choice(ids), rng.choice("uvwxy")
        action = rng.random()
        try:
            if action < 0.7:
                Q.save_annotation(db, tid, who, rng.choice(["a", "b", "tie", "skip"]))
            elif action < 0.85:
                Q.undo_last(db, who)
            else:
                db.execute("INSERT INTO annotations (task_id, annotator, value, source) "
                           "VALUES (?, 'boss', 'a', 'resolution')", [tid])
        except Q.LabelError:
            pass
        if step % 10 == 0:
            list(queue_order.split_rows(db, Q.TASK_COLS, "", []))   # what a request reads: syncs the index
            kept = queue_order._SPLITS[db]
            fresh = queue_order._Splits()
            fresh.sync(db)
            assert (kept.order, kept.tied) == (fresh.order, fresh.tied)


def test_a_new_score_job_gets_the_reference_log_probs_an_earlier_one_of_the_same_base_computed(ctx):
    ids = pairs(ctx.db, 3)
    queue_order.set_order(ctx.db, "pair", "unsure")
    first = queue_scores.queue_scoring(ctx)
    pd.DataFrame({"task_id": ids[:2], "score": 0.0, "unsure": 0.0, "method": "likelihood", "ref_logp_a": [-1.0, -2.0],
                  "ref_logp_b": [-3.0, -4.0]}).to_parquet(ctx.runs_dir / first / rundir.SCORES)
    ctx.db.execute("UPDATE runs SET state = 'finished', finished_at = current_timestamp WHERE id = ?", [first])
    fake_run(ctx)                                          # same base model and lengths as the base's job
    second = queue_scores.queue_scoring(ctx)
    data = pd.read_parquet(ctx.runs_dir / second / rundir.TRAIN_DATA).set_index("task_id")
    assert data.loc[ids[1], "ref_logp_b"] == -4.0 and pd.isna(data.loc[ids[2], "ref_logp_a"])
    cfg = JobConfig.load(ctx.runs_dir / first / rundir.CONFIG)
    cfg.max_length += 1                                    # other truncation: another reference
    assert "ref_logp_a" not in queue_scores.with_known_references(ctx.db, cfg, data.reset_index()[["task_id"]])

"""One rule for "a person's current label on a task" (view current_annotations): each person's newest own decision,
and apart from it each task's newest admin resolution, which replaces the votes wherever a task's label is decided
(training rows, A/B win rates) while agreement, the queue and the Data page count only the votes."""
from app import charts
from labeling import queue as Q
from labeling.agreement import agreement, disputed_tasks, resolve, votes
from labeling.dataset import data_summary, training_rows
from labeling.evaluation import win_rate


def pair(db, i=0, required=3, origins=None):
    return Q.create_task(db, "pair", f"P{i}", [f"A{i}", f"B{i}"], site="s1", required=required, origins=origins)


def current(db, task_id):
    return sorted(db.fetchall("SELECT annotator, value, source FROM current_annotations WHERE task_id = ?", [task_id]))


def test_the_view_holds_each_persons_newest_decision_and_the_tasks_newest_resolution(db):
    t = pair(db)
    Q.save_annotation(db, t, "x", "a")
    Q.save_annotation(db, t, "x", "b", source="edit")        # a change supersedes
    Q.save_annotation(db, t, "y", "skip")                    # skips stay, readers leave them out
    Q.save_annotation(db, t, "boss", "tie")
    resolve(db, t, "boss", "a")
    resolve(db, t, "chief", "b")                             # a second admin's resolution supersedes the first
    assert current(db, t) == [("boss", "tie", "app"), ("chief", "b", "resolution"), ("x", "b", "edit"),
                              ("y", "skip", "app")]


def test_a_resolution_decides_the_task_even_when_its_admin_votes_afterwards(db):
    """Before the view, an admin's vote cast after their resolution hid the resolution from the training data
    (their newest row was the vote) while the dispute list counted the task as resolved; now both agree."""
    t = pair(db)
    for who, v in (("x", "a"), ("y", "b")):
        Q.save_annotation(db, t, who, v)
    resolve(db, t, "boss", "b")
    Q.save_annotation(db, t, "boss", "a")                    # the admin's own vote, after resolving
    assert training_rows(db, "pairs").iloc[0]["chosen"] == "B0"
    assert disputed_tasks(db) == []
    # votes: x, y and the admin's vote (never the resolution), for agreement and the Data page alike
    assert sorted(map(tuple, votes(db)[["annotator", "value"]].to_numpy())) == [("boss", "a"), ("x", "a"), ("y", "b")]
    assert agreement(db)["n_labels"] == 3
    assert {r["annotator"]: r["labels"] for r in data_summary(db)["per_annotator"]} == {"boss": 1, "x": 1, "y": 1}
    assert Q.next_task(db, "boss") is None                    # the admin's vote filled the last slot


def test_a_resolution_replaces_the_votes_in_the_ab_win_rate_too(db):
    t = pair(db, required=2, origins=["run:r1", "run:r2"])
    Q.save_annotation(db, t, "x", "a")
    Q.save_annotation(db, t, "y", "a")
    assert win_rate(db, "r1", "r2")["n"] == 2 and win_rate(db, "r1", "r2")["rate"] == 1.0
    resolve(db, t, "boss", "b")
    w = win_rate(db, "r1", "r2")
    assert w["n"] == 1 and w["rate"] == 0.0 and win_rate(db, "r2", "r1")["rate"] == 1.0


def test_training_filters_apply_to_resolutions_as_to_votes(db):
    t = pair(db)
    for who, v in (("x", "a"), ("y", "a"), ("z", "b")):
        Q.save_annotation(db, t, who, v)
    resolve(db, t, "boss", "b")
    assert training_rows(db, "pairs").iloc[0]["chosen"] == "B0"
    # data from x, y and z only: the admin's resolution is not among it, so their votes decide
    assert training_rows(db, "pairs", annotators=["x", "y", "z"]).iloc[0]["chosen"] == "A0"


def test_the_runs_page_shows_votes_and_the_resolution_apart(db):
    t = pair(db)
    Q.save_annotation(db, t, "x", "a")
    Q.save_annotation(db, t, "boss", "b")
    resolve(db, t, "boss", "tie")
    db.execute("""INSERT INTO run_instances (run_id, step, task_id, side, m_theta) VALUES ('r', 1, ?, 'chosen', 0.5)""",
               [t])
    labels = charts.extreme_instances(db, "r")["labels"].iloc[0]
    assert labels == "x: a, boss: b, boss (resolution): tie"


def test_a_try_page_opinion_after_an_undo_gets_its_slot_back(db):
    """The Try page makes room on a complete task for a person whose current decision is not a label (an undone
    one included; before, any earlier label row of theirs refused them)."""
    t = pair(db, required=1)
    Q.save_annotation(db, t, "x", "a")
    Q.undo_last(db, "x")
    Q.save_annotation(db, t, "y", "b")                       # y completes the task meanwhile
    Q.make_room(db, t, "x")
    Q.save_annotation(db, t, "x", "a")
    assert db.fetchone("SELECT n_done, required FROM tasks WHERE id = ?", [t]) == (2, 2)
    Q.make_room(db, t, "x")                                   # x's current decision is a label: no new slot
    assert db.scalar("SELECT required FROM tasks WHERE id = ?", [t]) == 2

"""The labeling queue: next task, leases, append-only save/undo/edit, blind pair order, progress."""
import random

import pytest

from labeling import queue as Q


def make_tasks(db, n=3, kind="single", required=1):
    return [Q.create_task(db, kind, f"Prompt {i}", [f"Answer {i}a", f"Answer {i}b"][: 2 if kind == "pair" else 1],
                          site="plant-a", required=required) for i in range(n)]


def test_next_task_never_repeats_and_completes(db):
    ids = make_tasks(db, 3)
    seen = []
    while (t := Q.next_task(db, "ann")) is not None:
        seen.append(t["task_id"])
        Q.save_annotation(db, t["task_id"], "ann", "good")
    assert sorted(seen) == sorted(ids)
    assert Q.progress(db, "ann") == {"mine": 3, "total": 3, "everyone": 3, "remaining": 0}


def test_complete_tasks_leave_every_queue_and_extra_labels_are_refused(db):
    (tid,) = make_tasks(db, 1, required=1)
    Q.save_annotation(db, tid, "ann1", "good")
    assert Q.next_task(db, "ann2") is None
    with pytest.raises(Q.LabelError, match="already has all the labels"):
        Q.save_annotation(db, tid, "ann2", "bad")


def test_leases_keep_the_last_slot_for_one_person(db):
    (tid,) = make_tasks(db, 1, required=2)
    assert Q.next_task(db, "ann1")["task_id"] == tid
    assert Q.next_task(db, "ann2")["task_id"] == tid     # two open slots
    assert Q.next_task(db, "ann3") is None               # both slots leased
    Q.save_annotation(db, tid, "ann1", "good")
    assert Q.next_task(db, "ann3") is None               # one slot left, held by ann2


def test_skipped_tasks_go_to_others_not_back_to_me(db):
    (tid,) = make_tasks(db, 1)
    Q.skip(db, tid, "ann1")
    assert Q.next_task(db, "ann1") is None
    assert Q.next_task(db, "ann2")["task_id"] == tid


def test_undo_and_edit_are_new_rows_that_supersede(db):
    a, b = make_tasks(db, 2)
    first = Q.save_annotation(db, a, "ann", "good")
    Q.save_annotation(db, b, "ann", "bad")
    back = Q.undo_last(db, "ann")
    assert back["task_id"] == b
    assert db.scalar("SELECT n_done FROM tasks WHERE id = ?", [b]) == 0
    assert Q.next_task(db, "ann")["task_id"] == b        # the undone task comes back
    new = Q.edit_annotation(db, first, "ann", "bad")
    rows = db.records("SELECT id, value, supersedes FROM annotations WHERE task_id = ? ORDER BY id", [a])
    assert [r["value"] for r in rows] == ["good", "bad"] and rows[1]["supersedes"] == first and rows[1]["id"] == new
    assert db.scalar("SELECT count(*) FROM annotations") == 4   # nothing deleted
    hist = Q.history(db, "ann")
    assert [h["value"] for h in hist] == ["bad"] and hist[0]["task_id"] == a


def test_only_your_own_decisions_can_be_edited(db):
    (tid,) = make_tasks(db, 1)
    aid = Q.save_annotation(db, tid, "ann1", "good")
    with pytest.raises(Q.LabelError, match="your own"):
        Q.edit_annotation(db, aid, "ann2", "bad")


def test_pair_order_varies_and_maps_back(db):
    ids = make_tasks(db, 30, kind="pair")
    rng = random.Random(1)
    orders = []
    for _ in ids:
        t = Q.next_task(db, "ann", rng=rng)
        orders.append(t["shown_order"])
        a_text = db.scalar("SELECT r.text FROM tasks t JOIN responses r ON r.id = t.response_a WHERE t.id = ?",
                           [t["task_id"]])
        left = t["responses"][0]
        # pressing 1 picks the left answer, whichever canonical side it is
        value = Q.pair_value_from_shown("1", t["shown_order"])
        assert (value == "a") == (left == a_text)
        Q.save_annotation(db, t["task_id"], "ann", value, shown_order=t["shown_order"])
    assert set(orders) == {"ab", "ba"}
    assert Q.pair_value_from_shown("3", "ab") == "tie" and Q.pair_value_from_shown("0", "ba") == "both_bad"


def test_wrong_values_are_refused(db):
    (tid,) = make_tasks(db, 1)
    with pytest.raises(Q.LabelError):
        Q.save_annotation(db, tid, "ann", "a")
    (w,) = [Q.create_task(db, "write", "Write it", [])]
    with pytest.raises(Q.LabelError, match="empty"):
        Q.save_annotation(db, w, "ann", "written", text="  ")

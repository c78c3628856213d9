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


def test_a_task_on_screen_comes_back_on_reload_and_holds_one_lease(db):
    make_tasks(db, 3)
    first = Q.next_task(db, "ann")
    assert Q.next_task(db, "ann")["task_id"] == first["task_id"]       # reload: same task, not a new lease
    assert db.fetchall("SELECT task_id FROM leases WHERE annotator = 'ann'") == [(first["task_id"],)]
    other = Q.next_task(db, "ann", kind="pair")                         # nothing of that kind
    assert other is None
    Q.skip(db, first["task_id"], "ann")
    assert Q.next_task(db, "ann")["task_id"] != first["task_id"]
    assert db.scalar("SELECT count(*) FROM leases WHERE annotator = 'ann'") == 1


def test_an_expired_lease_frees_the_slot(db):
    (tid,) = make_tasks(db, 1)
    assert Q.next_task(db, "ann1", lease_s=0)["task_id"] == tid         # lease already expired
    assert Q.next_task(db, "ann2")["task_id"] == tid
    assert Q.next_task(db, "ann1") is None                              # now held by ann2
    Q.save_annotation(db, tid, "ann2", "bad")
    with pytest.raises(Q.LabelError, match="completed by others"):      # ann1's stale page cannot over-fill
        Q.save_annotation(db, tid, "ann1", "good")


def test_labels_written_outside_the_queue_are_seen(db):
    """The in-memory view of who did what follows rows written by anyone (an import, another module)."""
    ids = make_tasks(db, 2, required=2)
    shown = Q.next_task(db, "ann")["task_id"]                           # loads ann's decisions into memory
    (other,) = [t for t in ids if t != shown]
    db.execute("INSERT INTO annotations (task_id, annotator, value, source) VALUES (?, 'ann', 'good', 'import')",
               [other])
    Q.skip(db, shown, "ann")
    assert Q.next_task(db, "ann") is None                               # one skipped, the other labeled by import
    assert [h["value"] for h in Q.history(db, "ann")] == ["skip"]       # imported labels are not "my decisions"
    assert Q.next_task(db, "ann2")["task_id"] in ids


def test_a_rolled_back_outer_transaction_leaves_no_trace(db):
    (tid,) = make_tasks(db, 1)
    Q.next_task(db, "ann")
    with pytest.raises(RuntimeError):
        with db.transaction():
            Q.save_annotation(db, tid, "ann", "good")
            raise RuntimeError("caller changed its mind")
    assert db.scalar("SELECT count(*) FROM annotations") == 0
    assert db.scalar("SELECT n_done FROM tasks WHERE id = ?", [tid]) == 0
    assert Q.next_task(db, "ann")["task_id"] == tid
    assert Q.progress(db, "ann")["mine"] == 0


def test_the_queue_finds_open_tasks_behind_many_done_ones(db, monkeypatch):
    monkeypatch.setattr(Q, "CANDIDATES", 3)                             # force the widening path
    ids = make_tasks(db, 40, required=2)
    for tid in ids[:35]:
        Q.save_annotation(db, tid, "ann1", "good")
    got = []
    while (t := Q.next_task(db, "ann1", rng=random.Random(len(got)))) is not None:
        got.append(t["task_id"])
        Q.save_annotation(db, t["task_id"], "ann1", "bad")
    assert sorted(got) == sorted(ids[35:])
    # started tasks come first: ann2 gets one ann1 labeled, not a fresh one
    fresh = Q.create_task(db, "single", "Fresh prompt", ["fresh answer"], required=2)
    assert Q.next_task(db, "ann2")["task_id"] != fresh


def test_undo_brings_back_the_pair_in_the_same_order_and_leases_it(db):
    (tid,) = make_tasks(db, 1, kind="pair", required=1)
    t = Q.next_task(db, "ann", rng=random.Random(3))
    Q.save_annotation(db, tid, "ann", Q.pair_value_from_shown("2", t["shown_order"]), shown_order=t["shown_order"])
    assert Q.next_task(db, "other") is None
    back = Q.undo_last(db, "ann")
    assert back["shown_order"] == t["shown_order"] and back["responses"] == t["responses"]
    assert Q.next_task(db, "other") is None                             # the undone slot is leased back to ann
    assert Q.undo_last(db, "ann") is None                               # nothing left to undo
    right = "a" if t["shown_order"] == "ba" else "b"
    assert [r[0] for r in db.fetchall("SELECT value FROM annotations ORDER BY id")] == [right, "retracted"]


def test_history_progress_and_write_tasks(db):
    singles = make_tasks(db, 12)
    w = Q.create_task(db, "write", "Write the ideal answer", ["a draft"])
    for i, tid in enumerate(singles):
        Q.save_annotation(db, tid, "ann", "good" if i % 2 else "bad")
    Q.save_annotation(db, w, "ann", "written", text="The ideal answer.")
    hist = Q.history(db, "ann")
    assert len(hist) == 10 and hist[0]["task_id"] == w and hist[0]["text"] == "The ideal answer."
    assert hist[0]["kind"] == "write" and hist[0]["prompt"] == "Write the ideal answer"
    assert [h["task_id"] for h in hist[1:]] == singles[::-1][:9]
    assert Q.progress(db, "ann", "single") == {"mine": 12, "total": 12, "everyone": 12, "remaining": 0}
    assert Q.progress(db, "ann", "write")["mine"] == 1
    assert Q.progress(db, "someone else") == {"mine": 0, "total": 13, "everyone": 13, "remaining": 0}
    with pytest.raises(Q.LabelError, match="needs 2"):
        Q.create_task(db, "pair", "p", ["only one"])
    with pytest.raises(Q.LabelError, match="Unknown task kind"):
        Q.create_task(db, "poll", "p", ["x"])


def test_a_bulk_import_after_the_queue_started_is_seen(db, monkeypatch):
    monkeypatch.setattr(Q, "BULK", 5)                                   # a "big" import: memory is re-read
    ids = make_tasks(db, 20, required=2)
    Q.next_task(db, "ann")
    db.execute("""INSERT INTO annotations (task_id, annotator, value, source)
                  SELECT unnest(?), 'ann', 'good', 'import'""", [ids[:19]])
    assert Q.next_task(db, "ann")["task_id"] == ids[19]
    Q.save_annotation(db, ids[19], "ann", "bad")
    assert Q.next_task(db, "ann") is None
    assert Q.progress(db, "ann")["mine"] == 20

"""Several annotators labeling at once through one Database (Gradio runs handlers on worker threads): no task gets
more labels than it requires, no acknowledged label is lost, nobody labels a task twice, n_done stays exact."""
import random
import threading

from labeling import queue as Q
from storage.db import open_db


def make_tasks(db, n_single=40, n_pair=20, required=2):
    ids = [Q.create_task(db, "single", f"Single prompt {i}", [f"answer {i}"], required=required)
           for i in range(n_single)]
    ids += [Q.create_task(db, "pair", f"Pair prompt {i}", [f"left {i}", f"right {i}"], required=required + 1)
            for i in range(n_pair)]
    return ids


def check_invariants(db):
    """n_done equals the number of annotators whose current decision is a label, never above required."""
    rows = db.fetchall("""
        WITH cur AS (SELECT task_id, annotator, arg_max(value, id) AS v FROM annotations GROUP BY ALL)
        SELECT t.id, t.required, t.n_done, count(cur.v) FILTER (WHERE cur.v NOT IN ('skip', 'retracted'))
        FROM tasks t LEFT JOIN cur ON cur.task_id = t.id GROUP BY ALL""")
    for tid, required, n_done, labels in rows:
        assert n_done == labels, f"task {tid}: n_done {n_done} but {labels} current labels"
        assert labels <= required, f"task {tid}: {labels} labels for {required} required"
    return rows


def annotate(db, who, acked, errors, seed, idle, lease_s=300, undo_every=0):
    rng = random.Random(seed)
    n = 0
    try:
        while (task := next_or_wait(db, who, lease_s, rng, idle)) is not None:
            if task["kind"] == "pair":
                value = Q.pair_value_from_shown(rng.choice("1230"), task["shown_order"])
            else:
                value = rng.choice(("good", "bad"))
            if rng.random() < 0.1:
                Q.skip(db, task["task_id"], who)
                continue
            try:
                aid = Q.save_annotation(db, task["task_id"], who, value, shown_order=task["shown_order"])
            except Q.LabelError as e:      # only possible when leases expire: the slot went to someone else
                assert "all the labels" in str(e)
                continue
            acked.append((aid, task["task_id"], who, value))
            n += 1
            if undo_every and n % undo_every == 0:
                back = Q.undo_last(db, who)
                acked.remove(next(a for a in acked if a[1] == back["task_id"] and a[2] == who))
    except Exception as e:  # noqa: BLE001 - surfaced by the test
        errors.append(repr(e))
    finally:
        idle.leave(who)


class Idle:
    """Who is out of tasks. An annotator with none leaves only once everybody is out of tasks at the same time:
    until then someone may still undo or skip and free a slot (a person on the Label page would come back to it)."""

    def __init__(self, n: int):
        self.cond, self.n, self.out = threading.Condition(), n, set()

    def wait(self, who: str) -> bool:
        """Mark `who` out of tasks; True once everyone is, else False after a moment (look again)."""
        with self.cond:
            self.out.add(who)
            if len(self.out) == self.n:
                self.cond.notify_all()
                return True
            self.cond.wait(0.05)
            return len(self.out) == self.n

    def back(self, who: str) -> None:
        with self.cond:
            self.out.discard(who)

    def leave(self, who: str) -> None:
        with self.cond:     # a finished annotator counts as out of tasks for good
            self.out.add(who)
            self.cond.notify_all()


def next_or_wait(db, who, lease_s, rng, idle):
    """The next task; with none, wait until everybody is out of tasks (a state, not a time)."""
    while True:
        task = Q.next_task(db, who, lease_s=lease_s, rng=rng)
        if task is not None:
            idle.back(who)
            return task
        if idle.wait(who):
            return None


def run_annotators(db, n, **kw):
    acked, errors, idle = [], [], Idle(n)
    threads = [threading.Thread(target=annotate, args=(db, f"ann{i}", acked, errors, i, idle), kwargs=kw)
               for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return acked


def test_six_annotators_fill_every_task_exactly(tmp_path):
    db = open_db(tmp_path / "p.duckdb")
    make_tasks(db)
    acked = run_annotators(db, 6, undo_every=7)
    rows = check_invariants(db)
    # every task got exactly what it required (6 annotators are enough for 3 labels even with skips)
    assert all(n_done == required for _, required, n_done, _ in rows)
    assert len(acked) == sum(required for _, required, _, _ in rows)
    # every acknowledged label is the current decision of its annotator on that task
    current = {(t, a): (i, v) for i, t, a, v in db.fetchall(
        "SELECT arg_max(id, id), task_id, annotator, arg_max(value, id) FROM annotations GROUP BY task_id, annotator")}
    for aid, tid, who, value in acked:
        assert current[(tid, who)] == (aid, value)
    # nobody labeled a task twice: one live chain per (task, annotator), each row superseding the previous
    chains = db.fetchall("""SELECT count(*) FROM annotations a WHERE supersedes IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM annotations b WHERE b.id = a.supersedes AND b.task_id = a.task_id AND b.annotator = a.annotator)""")
    assert chains == [(0,)]
    db.close()


def test_expired_leases_race_for_the_last_slot_without_overfilling(tmp_path):
    """lease_s=0: every fetch sees every slot free, so annotators race for the last one; saving refuses the loser."""
    db = open_db(tmp_path / "p.duckdb")
    make_tasks(db, n_single=30, n_pair=0, required=1)
    acked = run_annotators(db, 5, lease_s=0)
    rows = check_invariants(db)
    assert all(n_done == 1 for _, _, n_done, _ in rows)
    assert len(acked) == 30 and len({a[1] for a in acked}) == 30
    db.close()


def test_labels_survive_reopening_the_file(tmp_path):
    db = open_db(tmp_path / "p.duckdb")
    make_tasks(db, n_single=20, n_pair=5)
    acked = run_annotators(db, 4)
    db.close()
    db = open_db(tmp_path / "p.duckdb")
    stored = set(db.fetchall("SELECT id, task_id, annotator, value FROM annotations"))
    assert set(acked) <= stored
    check_invariants(db)
    db.close()

"""Agreement: Krippendorff's alpha overall / per annotator pair / per task, disputes, and admin resolution."""
import numpy as np
import pytest

from labeling import agreement as A
from labeling import queue as Q
from labeling.dataset import training_rows

# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", the nominal example: 3 coders (rows), 12
# units; the published nominal alpha is 0.743 (the krippendorff package's own example agrees to 3 decimals).
PAPER = [[1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
         [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
         [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
         [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None]]
PAPER_ALPHA = 0.743


def label(db, tid, who, value):
    return Q.save_annotation(db, tid, who, value)


def single_tasks(db, n, required=4):
    return [Q.create_task(db, "single", f"Prompt {i}", [f"answer {i}"], required=required) for i in range(n)]


def test_alpha_matches_the_published_example(db):
    """Five codes do not fit one task kind, so this checks the counts-based computation the DB path uses."""
    counts = np.zeros((12, 5))
    for coder in PAPER:
        for unit, v in enumerate(coder):
            if v is not None:
                counts[unit, v - 1] += 1
    assert A.alpha_from_counts(counts) == pytest.approx(PAPER_ALPHA, abs=5e-4)


def test_alpha_from_the_database_equals_the_package_on_the_same_votes(db):
    import krippendorff

    tids = single_tasks(db, 6)
    votes = {"ann1": ["good", "good", "bad", "bad", "good", None],
             "ann2": ["good", "bad", "bad", "bad", "good", "good"],
             "ann3": ["good", "good", "bad", "good", None, "good"]}
    for who, vs in votes.items():
        for tid, v in zip(tids, vs):
            if v:
                label(db, tid, who, v)
    code = {"good": 0, "bad": 1, None: np.nan}
    expected = krippendorff.alpha(reliability_data=[[code[v] for v in vs] for vs in votes.values()],
                                  level_of_measurement="nominal")
    ag = A.agreement(db, "single")
    assert ag["alpha"] == pytest.approx(expected, abs=1e-9)
    assert ag["n_tasks"] == 6 and ag["n_labels"] == 16
    # per pair: ann1/ann2 share 5 tasks and disagree on one of them
    pair = ag["per_pair"]["ann1 / ann2"]
    assert pair["shared_tasks"] == 5
    assert pair["alpha"] == pytest.approx(krippendorff.alpha(
        reliability_data=[[0, 0, 1, 1, 0], [0, 1, 1, 1, 0]], level_of_measurement="nominal"), abs=1e-9)
    # per task, keyed by task id: 0 when all agree, 2/3 for a 2-1 split, 1 for a 1-1 split
    assert ag["per_task"][tids[0]] == 0
    assert ag["per_task"][tids[1]] == pytest.approx(2 / 3, abs=1e-3)
    assert ag["per_task"][tids[4]] == 0 and ag["per_task"][tids[5]] == 0


def test_only_current_votes_count(db):
    (tid,) = single_tasks(db, 1)
    label(db, tid, "ann1", "good")
    label(db, tid, "ann2", "bad")
    assert A.agreement(db)["per_task"][tid] == 1.0
    Q.undo_last(db, "ann2")                       # undone: ann2 has no vote any more
    assert A.agreement(db)["per_task"] == {} and A.agreement(db)["alpha"] is None
    label(db, tid, "ann2", "good")
    Q.skip(db, single_tasks(db, 2)[1], "ann3")    # skips are not votes
    ag = A.agreement(db)
    assert ag["per_task"] == {tid: 0.0} and ag["alpha"] == 1.0 and ag["n_labels"] == 2


def test_pairs_agree_in_canonical_terms_whatever_side_was_shown(db):
    tid = Q.create_task(db, "pair", "Which?", ["first", "second"], required=2)
    # ann1 saw A on the left and pressed 1; ann2 saw A on the right and pressed 2: both chose A
    label(db, tid, "ann1", Q.pair_value_from_shown("1", "ab"))
    label(db, tid, "ann2", Q.pair_value_from_shown("2", "ba"))
    assert A.agreement(db, "pair")["per_task"] == {tid: 0.0}
    assert A.disputed_tasks(db) == []


def test_disputed_tasks_show_votes_and_an_admin_resolution_settles_them(db):
    a, b, c = single_tasks(db, 3, required=3)
    for who, v in (("ann1", "good"), ("ann2", "bad"), ("ann3", "bad")):
        label(db, a, who, v)
    for who, v in (("ann1", "good"), ("ann2", "bad")):
        label(db, b, who, v)
    for who in ("ann1", "ann2"):
        label(db, c, who, "good")
    disputed = A.disputed_tasks(db)
    assert [d["task_id"] for d in disputed] == [b, a]            # 1-1 split first, then 2-1
    first = disputed[1]
    assert first["votes"] == [{"annotator": "ann1", "value": "good"}, {"annotator": "ann2", "value": "bad"},
                              {"annotator": "ann3", "value": "bad"}]
    assert first["values"] == "bad: 2, good: 1" and first["prompt"] == "Prompt 0"
    assert first["responses"] == ["answer 0"] and first["kind"] == "single"

    with pytest.raises(Q.LabelError, match="not a label"):
        A.resolve(db, b, "boss", "a")
    with pytest.raises(Q.LabelError, match="no task"):
        A.resolve(db, "nope", "boss", "good")
    r1 = A.resolve(db, b, "boss", "bad")
    r2 = A.resolve(db, b, "boss", "good")                        # changing one's mind supersedes
    assert db.scalar("SELECT supersedes FROM annotations WHERE id = ?", [r2]) == r1
    assert [d["task_id"] for d in A.disputed_tasks(db)] == [a]
    # votes stay untouched and still count for agreement; the training data takes the resolution
    assert A.agreement(db)["per_task"][b] == 1.0
    rows = training_rows(db, "unpaired")
    assert rows.set_index("task_id").loc[b, "label"] == True  # noqa: E712 - numpy bool
    # a resolution is not a queue decision: it neither fills a slot nor blocks the admin from voting
    assert db.scalar("SELECT n_done FROM tasks WHERE id = ?", [b]) == 2
    assert Q.next_task(db, "boss", kind="single")["task_id"] in (b, c)   # a is complete


def test_agreement_stays_usable_on_many_annotators(db):
    """30 annotators on 200 tasks: per-pair alpha is capped to the pairs sharing most tasks, n_pairs counts all."""
    rng = np.random.default_rng(0)
    tids = single_tasks(db, 200, required=30)
    rows = [(str(tid), f"ann{i:02d}", "good" if rng.random() < 0.7 else "bad")
            for i in range(30) for tid in rng.choice(tids, 60, replace=False)]
    db.con.executemany("INSERT INTO annotations (task_id, annotator, value) VALUES (?, ?, ?)", rows)
    ag = A.agreement(db, max_pairs=10)
    assert len(ag["per_pair"]) == 10 and ag["n_pairs"] > 10
    shared = [p["shared_tasks"] for p in ag["per_pair"].values()]
    assert shared == sorted(shared, reverse=True)
    assert -0.2 < ag["alpha"] < 0.2          # random labels: no agreement beyond chance

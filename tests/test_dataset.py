"""From annotations to training rows and exports: majority rule, ties, resolutions, snapshots."""
import json

import pandas as pd

from labeling import queue as Q
from labeling.agreement import agreement, disputed_tasks, resolve
from labeling.dataset import training_rows
from labeling.label_export import export
from storage.snapshots import create_snapshot, snapshot_diff


def pair_task(db, i=0, required=3):
    return Q.create_task(db, "pair", f"P{i}", [f"A{i}", f"B{i}"], site="s1", required=required)


def test_majority_decides_and_ties_are_dropped_or_kept(db):
    t1, t2 = pair_task(db, 1), pair_task(db, 2, required=2)
    for who, v in (("x", "a"), ("y", "a"), ("z", "b")):
        Q.save_annotation(db, t1, who, v)
    Q.save_annotation(db, t2, "x", "a")
    Q.save_annotation(db, t2, "y", "b")
    df = training_rows(db, "pairs")
    assert len(df) == 1 and df.iloc[0]["chosen"] == "A1" and abs(df.iloc[0]["agreement"] - 2 / 3) < 1e-9
    kept = training_rows(db, "pairs", ties="keep")
    assert len(kept) == 2 and kept[kept.task_id == t2].iloc[0]["tie"]
    unpaired = training_rows(db, "unpaired")
    assert sorted(unpaired["label"]) == [False, True]
    assert len(training_rows(db, "pairs", min_agreement=0.9)) == 0


def test_undo_removes_a_vote(db):
    t = pair_task(db, required=1)
    Q.save_annotation(db, t, "x", "b")
    Q.undo_last(db, "x")
    assert training_rows(db, "pairs").empty


def test_single_and_write_tasks(db):
    s = Q.create_task(db, "single", "P", ["A"], site="s2")
    w = Q.create_task(db, "write", "Q", [])
    Q.save_annotation(db, s, "x", "good")
    Q.save_annotation(db, w, "x", "written", text="The ideal answer")
    un = training_rows(db, "unpaired")
    assert un.iloc[0].to_dict()["label"] and un.iloc[0]["site"] == "s2"
    sft = training_rows(db, "sft")
    assert set(sft["completion"]) == {"A", "The ideal answer"}


def test_resolution_overrides_the_vote(db):
    t = pair_task(db)
    for who, v in (("x", "a"), ("y", "b"), ("z", "tie")):
        Q.save_annotation(db, t, who, v)
    assert [d["task_id"] for d in disputed_tasks(db)] == [t]
    resolve(db, t, "boss", "b")
    assert training_rows(db, "pairs").iloc[0]["chosen"] == "B0"
    assert disputed_tasks(db) == []


def test_agreement_alpha(db):
    ts = [pair_task(db, i, required=2) for i in range(6)]
    for t in ts:
        Q.save_annotation(db, t, "x", "a")
        Q.save_annotation(db, t, "y", "a")
    for i in range(4):
        t = pair_task(db, 10 + i, required=2)
        Q.save_annotation(db, t, "x", "b")
        Q.save_annotation(db, t, "y", "b")
    ag = agreement(db)
    assert ag["alpha"] == 1.0 and "x / y" in ag["per_pair"]
    t = pair_task(db, 99, required=2)
    Q.save_annotation(db, t, "x", "a")
    Q.save_annotation(db, t, "y", "b")
    assert agreement(db)["alpha"] < 1.0


def test_export_formats(db, tmp_path):
    t = pair_task(db, required=1)
    Q.save_annotation(db, t, "x", "a")
    r = export(db, "preference", tmp_path / "p.jsonl")
    row = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])
    assert r["rows"] == 1 and row["chosen"] == "A0" and row["rejected"] == "B0" and row["prompt"] == "P0"
    export(db, "unpaired", tmp_path / "u.parquet")
    assert sorted(pd.read_parquet(tmp_path / "u.parquet")["label"]) == [False, True]


def test_snapshots_are_content_addressed_and_diffable(db, tmp_path):
    t1 = pair_task(db, 1, required=1)
    Q.save_annotation(db, t1, "x", "a")
    s1 = create_snapshot(db, tmp_path, "pairs", training_rows(db, "pairs"))
    assert create_snapshot(db, tmp_path, "pairs", training_rows(db, "pairs"))["id"] == s1["id"]
    t2 = pair_task(db, 2, required=1)
    Q.save_annotation(db, t2, "x", "b")
    aid = db.scalar("SELECT max(id) FROM annotations WHERE task_id = ?", [t1])
    Q.edit_annotation(db, aid, "x", "b")
    s2 = create_snapshot(db, tmp_path, "pairs", training_rows(db, "pairs"))
    d = snapshot_diff(db, s1["id"], s2["id"])
    assert d["added"] == [t2] and d["changed"] == [t1] and d["removed"] == []

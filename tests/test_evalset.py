"""The evaluation set: made once, versioned, never trained on, recorded by every snapshot, what runs are scored on."""
import pytest

from labeling import evalset
from labeling import queue as Q
from labeling.dataset import training_rows
from storage.snapshots import create_snapshot


def labeled_project(db, n=60, sites=("s1", "s2")):
    """n pair tasks, one prompt each, spread over sites, each decided 'a' by one annotator."""
    tids = []
    for i in range(n):
        t = Q.create_task(db, "pair", f"Question {i}", [f"good {i}", f"bad {i}"], site=sites[i % len(sites)],
                          required=1)
        Q.save_annotation(db, t, "x", "a")
        tids.append(t)
    return tids


def test_default_set_is_a_stratified_slice_frozen_on_first_use(db):
    labeled_project(db, 100, sites=("s1", "s1", "s1", "s2"))     # 75 prompts at s1, 25 at s2
    first = evalset.current(db)
    assert first["version"] == 1 and len(first["prompt_ids"]) == 20   # 10% would be 10: at least 20
    sites = dict(db.fetchall(f"SELECT site, count(*) FROM prompts WHERE id IN "
                             f"({', '.join('?' * 20)}) GROUP BY site", first["prompt_ids"]))
    assert sites == {"s1": 15, "s2": 5}                                # each site its share
    Q.create_task(db, "pair", "A later question", ["x", "y"], site="s1")
    assert evalset.current(db) == first                               # frozen: new prompts do not move it
    assert evalset.prompt_ids(db) == set(first["prompt_ids"])


def test_small_projects_get_no_default_set(db):
    labeled_project(db, 12)
    assert evalset.current(db) == {"version": 0, "prompt_ids": []}
    assert len(training_rows(db, "pairs")) == 12                      # nothing held back


def test_training_never_selects_evaluation_prompts_and_the_snapshot_records_the_version(db, tmp_path):
    labeled_project(db, 60)
    es = evalset.current(db)
    eval_prompts = set(es["prompt_ids"])
    for kind in ("pairs", "unpaired", "sft"):
        rows = training_rows(db, kind)
        prompts = {r[0] for r in db.fetchall(
            f"SELECT prompt_id FROM tasks WHERE id IN ({', '.join('?' * len(rows))})", list(rows["task_id"]))}
        assert prompts and not prompts & eval_prompts
    scored = evalset.rows(db, "pairs")
    assert len(scored) == len(eval_prompts) and len(scored) + len(training_rows(db, "pairs")) == 60
    snap = create_snapshot(db, tmp_path, "pairs", training_rows(db, "pairs"), evalset_version=es["version"])
    assert db.scalar("SELECT evalset_version FROM snapshots WHERE id = ?", [snap["id"]]) == es["version"]


def test_edits_make_new_versions(db):
    labeled_project(db, 60)
    v1 = evalset.current(db)
    outside = db.scalar("SELECT id FROM prompts WHERE id NOT IN (SELECT prompt_id FROM evalset_prompts) LIMIT 1")
    assert evalset.add(db, [outside])["version"] == 2
    assert outside in evalset.prompt_ids(db)
    assert outside not in set(training_rows(db, "pairs")["task_id"].map(
        lambda t: db.scalar("SELECT prompt_id FROM tasks WHERE id = ?", [t])))
    assert evalset.remove(db, [v1["prompt_ids"][0]])["version"] == 3
    assert set(evalset.current(db)["prompt_ids"]) == (set(v1["prompt_ids"]) | {outside}) - {v1["prompt_ids"][0]}
    assert db.fetchall("SELECT count(*) FROM evalset_prompts WHERE version = 1")[0][0] == len(v1["prompt_ids"])
    with pytest.raises(ValueError, match="No prompt has the id"):
        evalset.add(db, ["nope"])


def test_import_a_file_of_evaluation_prompts(db, tmp_path):
    f = tmp_path / "eval.jsonl"
    f.write_text('{"prompt": "How do I reset the pump?", "site": "s1"}\n{"prompt": "Who signs the audit?"}\n')
    r = evalset.import_prompts(db, f, site="s2")
    assert r["ok"] and r["added"] == 2 and r["version"] == 1
    texts = {t for (t,) in db.fetchall(f"SELECT text FROM prompts WHERE id IN "
                                        f"({', '.join('?' * 2)})", sorted(evalset.prompt_ids(db)))}
    assert texts == {"How do I reset the pump?", "Who signs the audit?"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "no prompt field"}\n')
    assert not evalset.import_prompts(db, bad)["ok"] and evalset.current(db)["version"] == 1


def test_data_page_shows_the_set_to_admins_and_lets_only_them_change_it(ctx):
    from app.context import PermissionDenied, User, UserError
    from app.pages import evalset_section as E

    labeled_project(ctx.db, 40)
    admin, ann = User("boss", "admin"), User("ann", "annotator")
    md, table, found = E.view(ctx, admin)
    assert md.startswith("**Version 1** (default: 8 prompts") and "8 labeled pairs" in md and len(table) == 8
    assert list(found.iloc[:, 0]) == ["No conflicting labels: no answer is called good in one place and worse in "
                                      "another."]
    assert E.view(ctx, ann)[0] == "Only admins see the evaluation set."
    first = table["prompt id"].iloc[0]
    assert E.edit(ctx, admin, "remove", first) == "Removed 1 prompt(s): the evaluation set is now version 2."
    assert first not in evalset.prompt_ids(ctx.db)
    with pytest.raises(PermissionDenied, match="only an admin can change the evaluation set"):
        E.edit(ctx, ann, "add", first)
    with pytest.raises(UserError, match="No prompt has the id 'zzz'"):
        E.edit(ctx, admin, "add", "zzz")

"""Label and Data page handlers without a browser: what a decision stores, what the page shows next, undo and
edit in the annotator's own terms, guidelines shown as text, and every admin action refused to an annotator."""
import json
import random

import pytest

from app.context import User, UserError
from app.pages import data as D
from app.pages import label as L
from labeling import queue as Q

ANN = User("alice", "annotator", "plant-a")
BOB = User("bob", "annotator", "plant-a")
ADMIN = User("boss", "admin", None)


def seed(ctx, singles=3, pairs=3, writes=1, required=1):
    for i in range(singles):
        Q.create_task(ctx.db, "single", f"How do I fix pump {i}?", [f"Check seal {i}."], site="plant-a",
                      required=required)
    for i in range(pairs):
        Q.create_task(ctx.db, "pair", f"Pair {i}", [f"First {i}", f"Second {i}"], site="plant-b", required=required)
    for i in range(writes):
        Q.create_task(ctx.db, "write", f"Write {i}", [f"Draft {i}"], site="plant-a", required=required)


def current(ctx, annotator="alice"):
    return ctx.db.records("""SELECT task_id, value, text, shown_order, source FROM annotations WHERE annotator = ?
                             QUALIFY row_number() OVER (PARTITION BY task_id ORDER BY id DESC) = 1""", [annotator])


def test_good_bad_keys_store_labels_and_show_the_next_task(ctx):
    seed(ctx)
    v = L.next_view(ctx, ANN, "Good / bad", None)
    first = v["task"]
    assert first["kind"] == "single" and v["progress"] == {"mine": 0, "everyone": 0, "remaining": 3, "total": 3}
    assert v["about"] == "site plant-a · 0 of 1 label(s) so far"
    v = L.decide(ctx, ANN, first, "a", "Good / bad", None)
    assert v["note"] == "Saved: good." and v["task"]["task_id"] != first["task_id"]
    v = L.decide(ctx, ANN, v["task"], "x", "Good / bad", None)
    assert v["progress"]["mine"] == 2 and [h[2] for h in v["history"]] == ["bad", "good"]
    assert sorted(r["value"] for r in current(ctx)) == ["bad", "good"]
    with pytest.raises(UserError, match="does not label a single task"):
        L.decide(ctx, ANN, v["task"], "1", "Good / bad", None)


def test_pairs_are_blind_and_map_back_in_the_history_and_edits(ctx):
    seed(ctx, singles=0, pairs=3)
    v = L.next_view(ctx, ANN, "Pairs", None)
    shown = v["task"]
    left_text = v["responses"][0]
    v = L.decide(ctx, ANN, shown, "1", "Pairs", None)                  # the left one is better
    (row,) = current(ctx)
    a_text = ctx.db.scalar("SELECT r.text FROM tasks t JOIN responses r ON r.id = t.response_a WHERE t.id = ?",
                           [shown["task_id"]])
    assert row["value"] == ("a" if left_text == a_text else "b") and row["shown_order"] == shown["shown_order"]
    assert v["note"] == "Saved: left better." and v["history"][0][2] == "left better"
    # change it to "right better": stored as the other canonical side, shown as the side the annotator saw
    aid = v["history"][0][0]
    v = L.edit(ctx, ANN, aid, "right better", v["task"], "Pairs")
    (row,) = current(ctx)
    assert row["value"] == ("b" if left_text == a_text else "a") and row["source"] == "edit"
    assert v["history"][0][2] == "right better"
    assert [h[0] for h in v["history"]] == [1]                           # rows say their place, not an id
    single = Q.create_task(ctx.db, "single", "Q", ["A"])
    Q.save_annotation(ctx.db, single, ANN.name, "good")
    with pytest.raises(UserError, match="Decision 1 is not about a pair"):
        L.edit(ctx, ANN, 1, "left better", None, "Pairs")
    with pytest.raises(UserError, match="Pick a decision from the history first"):
        L.edit(ctx, ANN, 3, "tie", None, "Pairs")


def test_change_to_offers_the_choices_of_the_decisions_own_kind():
    assert [label for label, _ in L.edit_choices("pair")] == ["Left is better", "Right is better", "Tie", "Both bad"]
    assert [value for _, value in L.edit_choices("single")] == ["good", "bad"] and L.edit_choices("write") == []


def test_pair_order_varies_across_showings(ctx):
    seed(ctx, singles=0, pairs=12)
    orders = set()
    for _ in range(12):
        v = L.next_view(ctx, ANN, "Pairs", None)
        orders.add(v["task"]["shown_order"])
        L.decide(ctx, ANN, v["task"], "3", "Pairs", None)
    assert orders == {"ab", "ba"}


def test_undo_brings_the_task_back_and_keeps_every_row(ctx):
    seed(ctx, singles=2, pairs=0, writes=0)
    v = L.next_view(ctx, ANN, "Good / bad", None)
    t1 = v["task"]
    v = L.decide(ctx, ANN, t1, "a", "Good / bad", None)
    v = L.undo(ctx, ANN, "Good / bad")
    assert v["task"]["task_id"] == t1["task_id"] and v["progress"]["mine"] == 0 and "Undone" in v["note"]
    L.decide(ctx, ANN, v["task"], "x", "Good / bad", None)
    values = [r[0] for r in ctx.db.fetchall("SELECT value FROM annotations ORDER BY id")]
    assert values == ["good", "retracted", "bad"]
    with pytest.raises(UserError, match="Nothing to undo"):
        L.undo(ctx, BOB, "Good / bad")


def test_write_mode_needs_text_and_stores_it(ctx):
    seed(ctx, singles=0, pairs=0, writes=1)
    v = L.next_view(ctx, ANN, "Write", None)
    assert v["kind"] == "write" and v["task"]["responses"] == ["Draft 0"]
    with pytest.raises(UserError, match="empty"):
        L.decide(ctx, ANN, v["task"], "submit", "Write", None, text="  ")
    assert v["draft"] == "Draft 0"                                        # the box starts from the draft
    v = L.decide(ctx, ANN, v["task"], "submit", "Write", None, text="The ideal answer.")
    assert current(ctx)[0]["text"] == "The ideal answer." and v["task"] is None
    v = L.undo(ctx, ANN, "Write")                                          # undo gives the written text back
    assert v["draft"] == "The ideal answer." and current(ctx)[0]["value"] == "retracted"
    L.decide(ctx, ANN, v["task"], "submit", "Write", None, text="The ideal answer, fixed.")
    assert current(ctx)[0]["text"] == "The ideal answer, fixed."


def test_skip_passes_the_task_to_someone_else(ctx):
    seed(ctx, singles=1, pairs=0, writes=0)
    v = L.next_view(ctx, ANN, "Good / bad", None)
    v = L.decide(ctx, ANN, v["task"], "skip", "Good / bad", None)
    assert v["task"] is None and v["note"] == "Skipped." and v["progress"]["mine"] == 0
    assert L.next_view(ctx, BOB, "Good / bad", None)["task"] is not None


def test_a_task_completed_by_others_meanwhile_moves_on_with_a_sentence(ctx):
    seed(ctx, singles=2, pairs=0, writes=0)
    v = L.next_view(ctx, ANN, "Good / bad", None)
    Q.save_annotation(ctx.db, v["task"]["task_id"], "bob", "bad")         # e.g. after alice's lease ran out
    v2 = L.decide(ctx, ANN, v["task"], "a", "Good / bad", None)
    assert "Others completed that task" in v2["note"] and v2["task"]["task_id"] != v["task"]["task_id"]
    assert current(ctx) == [] and v2["progress"]["mine"] == 0


def test_html_in_text_and_guidelines_is_shown_as_text(ctx):
    Q.create_task(ctx.db, "single", "Hi <script>alert(1)</script> **bold**", ["<img src=x onerror=alert(2)>ok"])
    v = L.next_view(ctx, ANN, "Good / bad", None)
    assert "<script" not in v["prompt"] and "&lt;script" in v["prompt"] and "**bold**" in v["prompt"]
    assert "<img" not in v["responses"][0]
    assert "No guidelines yet" in L.guidelines(ctx)
    D.save_guidelines(ctx, ADMIN, "Be *kind*. <b onmouseover=x>hi</b>")
    assert L.guidelines(ctx).startswith("Be *kind*. &lt;b onmouseover=x") and "<b" not in L.guidelines(ctx)


def test_an_annotator_is_refused_every_admin_action(ctx, tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text(json.dumps({"prompt": "P", "response": "R"}) + "\n")
    actions = [
        lambda u: D.do_import(ctx, u, str(f), "", None, False, ""),
        lambda u: D.do_export(ctx, u, "preference", "jsonl", "drop"),
        lambda u: D.save_guidelines(ctx, u, "pwned"),
        lambda u: D.add_user(ctx, u, "mallory", "secret-pw", "admin", ""),
        lambda u: D.resolve_task(ctx, u, "x", "a"),
    ]
    for act in actions:
        with pytest.raises(UserError, match="only an admin"):
            act(ANN)
    assert ctx.db.scalar("SELECT count(*) FROM tasks") == 0
    assert ctx.db.get_setting("guidelines") is None
    assert ctx.db.scalar("SELECT count(*) FROM annotators") == 0
    # the same actions work for an admin
    head, report = D.do_import(ctx, ADMIN, str(f), "plant-a", 2, False, "")
    assert head.startswith("Imported 1 new item") and report.empty
    assert ctx.db.fetchone("SELECT site, required FROM tasks") == ("plant-a", 2)
    assert "created" in D.add_user(ctx, ADMIN, "mallory", "secret-pw", "annotator", "")
    assert D.accounts(ctx, ADMIN)["name"].tolist() == ["mallory"] and D.accounts(ctx, ANN).empty


def test_import_report_names_the_line_and_field(ctx, tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"prompt": "ok", "response": "fine"}) + "\n" + json.dumps({"prompt": "", "response": "x"}))
    head, report = D.do_import(ctx, ADMIN, str(f), "", None, False, "")
    assert head.startswith("Nothing was imported from bad.jsonl") and ctx.db.scalar("SELECT count(*) FROM tasks") == 0
    assert report.iloc[0]["line"] == 2 and report.iloc[0]["field"] == "prompt"
    with pytest.raises(UserError, match="Choose a file"):
        D.do_import(ctx, ADMIN, None, "", None, False, "")


def test_export_downloads_the_majority_labels(ctx):
    seed(ctx, singles=0, pairs=2, writes=0)
    for _ in range(2):
        t = Q.next_task(ctx.db, "alice", rng=random.Random(0))
        Q.save_annotation(ctx.db, t["task_id"], "alice", "a", shown_order=t["shown_order"])
    path = D.do_export(ctx, ADMIN, "preference", "jsonl", "drop")
    rows = [json.loads(line) for line in open(path)]
    assert sorted(r["chosen"] for r in rows) == ["First 0", "First 1"]


def test_counts_agreement_and_resolving_a_dispute(ctx):
    tids = [Q.create_task(ctx.db, "single", f"Q{i}", [f"A{i}"], site="plant-a", required=2) for i in range(4)]
    for who, values in (("alice", ["good", "good", "bad", "bad"]), ("bob", ["good", "bad", "bad", "bad"])):
        for tid, v in zip(tids, values):
            Q.save_annotation(ctx.db, tid, who, v)
    tasks, per_site, per_ann, outcomes, text = D.summary_tables(ctx)
    assert dict(zip(per_ann["annotator"], per_ann["labels"])) == {"alice": 4, "bob": 4}
    assert per_site[["good", "bad"]].sum().tolist() == [3, 5]
    assert list(outcomes.columns) == ["value", "n"] and outcomes.empty
    # nominal alpha, 4 tasks x 2 coders, one disagreement; 3 good and 5 bad values: 1 - (8-1)*1/(3*5) = 0.533
    assert "0.533" in text and "alice / bob" in text
    disputed = D.disputes(ctx)
    assert disputed["task"].tolist() == [tids[1]]
    with pytest.raises(UserError, match="only an admin"):
        D.dispute_detail(ctx, ANN, tids[1])
    text, finals = D.dispute_detail(ctx, ADMIN, tids[1])
    assert "Q1" in text and "A1" in text and "alice → good" in text and "bob → bad" in text
    assert finals == ["good", "bad"]
    assert "resolved as good" in D.resolve_task(ctx, ADMIN, tids[1], "good")
    assert D.disputes(ctx).empty
    with pytest.raises(UserError, match="not disputed"):
        D.dispute_detail(ctx, ADMIN, tids[1])
    with pytest.raises(UserError, match="not a label"):
        D.resolve_task(ctx, ADMIN, tids[0], "a")


def test_names_and_sites_from_outside_are_shown_as_text(ctx):
    tids = [Q.create_task(ctx.db, "single", f"Q{i}", [f"A{i}"], site="<img src=x onerror=alert(1)>", required=2)
            for i in range(3)]
    for who, values in (("<i>eve</i>", ["good", "good", "bad"]), ("mal", ["good", "bad", "bad"])):
        for tid, v in zip(tids, values):
            Q.save_annotation(ctx.db, tid, who, v)
    *_, text = D.summary_tables(ctx)
    assert "&lt;i&gt;eve&lt;/i&gt;" in text and "<i>" not in text
    detail, _ = D.dispute_detail(ctx, ADMIN, tids[1])
    assert "<img" not in detail and "<i>" not in detail
    Q.create_task(ctx.db, "single", "Open one", ["Answer"], site="<img src=x onerror=alert(1)>")
    v = L.next_view(ctx, ANN, "Good / bad", None)
    assert v["about"].startswith("site &lt;img") and "<img" not in v["about"]


def test_a_reload_shows_the_task_you_hold_in_its_mode_with_the_same_sides(ctx):
    import gradio as gr

    seed(ctx, singles=3, pairs=3)
    me = ctx.user(None)
    assert L.held_mode(ctx, me) is None
    first = L.next_view(ctx, me, "Pairs", None)["task"]
    assert L.held_mode(ctx, me) == "Pairs"
    with gr.Blocks() as demo:
        L.build(ctx)(demo)
    reload = next(f for f in demo.fns.values() if f.fn.__name__ == "on_reload")
    for _ in range(4):                                       # the page opens in Good / bad mode by default
        mode, task, *_ = reload.fn("Good / bad", "(all sites)", None)
        assert mode == "Pairs" and task["task_id"] == first["task_id"] and task["responses"] == first["responses"]


def test_data_page_says_pair_outcomes_as_left_or_right_and_empty_tables_in_a_sentence(ctx):
    import gradio as gr

    with gr.Blocks() as demo:
        D.build(ctx)
    refresh = next(f for f in demo.fns.values() if f.fn.__name__ == "on_refresh")
    _, tasks, outcomes, *_ = refresh.fn(None)
    assert list(tasks.iloc[:, 0]) == [D.EMPTY["tasks"]] and list(outcomes.iloc[:, 0]) == [D.EMPTY["outcomes"]]
    seed(ctx, singles=0, pairs=3, writes=0)
    for key in ("1", "1", "2"):                               # left, left, right: as the labeler saw them
        v = L.next_view(ctx, ANN, "Pairs", None)
        L.decide(ctx, ANN, v["task"], key, "Pairs", None)
    _, _, outcomes, *_ = refresh.fn(None)
    assert dict(zip(outcomes["value"], outcomes["n"])) == {"left is better": 2, "right is better": 1}

"""Conflicting labels: found, listed, and left out of training by default."""
from labeling import conflicts
from labeling import queue as Q
from labeling.dataset import training_rows


def test_good_here_and_worse_there_is_a_conflict_and_is_left_out(db):
    single = Q.create_task(db, "single", "Reset the pump?", ["Turn it off and on."], site="s1")
    pair = Q.create_task(db, "pair", "Reset the pump?", ["Turn it off and on.", "Call the supplier."], site="s1")
    fine = Q.create_task(db, "single", "Who signs?", ["The QA lead."], site="s1")
    Q.save_annotation(db, single, "x", "good")
    Q.save_annotation(db, pair, "y", "b")             # the same answer is the worse one here
    Q.save_annotation(db, fine, "x", "good")
    rep = conflicts.report(db)
    assert rep["n_answers"] == 1 and rep["n_tasks"] == 2
    row = rep["conflicts"].iloc[0]
    assert row["answer"] == "Turn it off and on." and row["conflict"] == "labeled good but the worse answer of a pair"
    assert sorted(row["tasks"]) == sorted([single, pair])
    kept = training_rows(db, "unpaired")
    assert list(kept["task_id"]) == [fine]                          # both sides of the conflict left out
    everything = training_rows(db, "unpaired", drop_conflicts=False)
    assert len(everything) == 4 and set(everything["task_id"]) == {single, pair, fine}   # the pair gives two rows


def test_opposite_pairs_conflict_but_a_ranking_does_not(db):
    p1 = Q.create_task(db, "pair", "Q", ["A", "B"])
    p2 = Q.create_task(db, "pair", "Q", ["B", "A"], source="second")   # the same two answers, asked again
    Q.save_annotation(db, p1, "x", "a")          # A better than B
    Q.save_annotation(db, p2, "y", "a")          # B better than A
    rep = conflicts.report(db)
    assert rep["n_tasks"] == 2
    assert set(rep["conflicts"]["conflict"]) == {"better and worse than the same rival in two pairs"}
    assert training_rows(db, "pairs").empty


def test_a_ranking_is_not_a_conflict(db):
    p1 = Q.create_task(db, "pair", "Q", ["A", "B"])
    p2 = Q.create_task(db, "pair", "Q", ["B", "C"])
    Q.save_annotation(db, p1, "x", "a")          # A > B
    Q.save_annotation(db, p2, "x", "a")          # B > C: B is better once and worse once, against different rivals
    assert conflicts.report(db)["n_answers"] == 0
    assert len(training_rows(db, "pairs")) == 2


def test_report_counts_what_dpo_drops(db):
    for i, v in enumerate(("tie", "both_bad", "both_bad", "a")):
        Q.save_annotation(db, Q.create_task(db, "pair", f"Q{i}", [f"A{i}", f"B{i}"]), "x", v)
    split = Q.create_task(db, "pair", "Q9", ["A9", "B9"], required=2)
    Q.save_annotation(db, split, "x", "a")
    Q.save_annotation(db, split, "y", "b")
    rep = conflicts.report(db)
    assert (rep["ties"], rep["both_bad"], rep["split_votes"]) == (1, 2, 1)
    assert len(training_rows(db, "pairs")) == 1


def test_train_preview_lists_conflicts_and_the_checkbox_puts_them_back(ctx, tiny_model_dir):
    import gradio as gr

    from app.pages import train as T

    for i in range(6):
        Q.save_annotation(ctx.db, Q.create_task(ctx.db, "pair", f"Q{i}", [f"good {i}", f"bad {i}"]), "x", "a")
    Q.save_annotation(ctx.db, Q.create_task(ctx.db, "single", "Q0", ["bad 0"]), "x", "good")   # worse above
    Q.save_annotation(ctx.db, Q.create_task(ctx.db, "pair", "Q9", ["tied 1", "tied 2"]), "x", "tie")
    with gr.Blocks() as demo:
        T.build(ctx)(demo)
    check = next(f for f in demo.fns.values() if f.api_name == "train_check")
    boxes = {c.label: c for c in check.inputs}
    values = {c: c.value for c in check.inputs}
    values.update({boxes["Model folder (Hugging Face format)"]: str(tiny_model_dir), boxes["Batch size"]: 2})
    assert values[boxes["Leave conflicting examples out"]] is True                     # on by default
    text = check.fn(values, None)[0]
    assert "**DPO** on **5** examples" in text
    assert "**1 answer(s) have conflicting labels** (2 task(s)), left out of this run" in text
    assert "“bad 0” to “Q0”: labeled good but the worse answer of a pair" in text and "Data page" in text
    assert "drops 1 tie(s)" in text
    values[boxes["Leave conflicting examples out"]] = False
    text = check.fn(values, None)[0]
    assert "**DPO** on **6** examples" in text and "**included** as they are" in text

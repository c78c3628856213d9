"""The reads pages make through labeling/ (no SQL in app/pages/): runs and their settings, held-out metrics, queue
filters, the prompts a generation job answers, and what an undo gives back."""
import json

from labeling import queue as Q
from labeling import runs
from labeling.dataset import annotator_names, prompts_to_answer
from labeling.evaluation import heldout_table


def add_run(db, rid, kind="train", state="finished", config=None, at="2024-01-01 10:00"):
    db.execute("""INSERT INTO runs (id, name, kind, algorithm, config, state, step, total_steps, created_at)
                  VALUES (?, ?, ?, 'dpo', ?, ?, 3, 10, ?)""",
               [rid, f"run {rid}", kind, json.dumps(config or {}), state, at])


def test_runs_newest_first_filtered_by_kind_and_state(db):
    add_run(db, "old", at="2024-01-01 10:00")
    add_run(db, "gen", kind="generate", at="2024-01-02 10:00")
    add_run(db, "busy", state="running", at="2024-01-03 10:00")
    assert runs.run_ids(db) == ["busy", "gen", "old"]
    assert runs.run_ids(db, kind="train") == ["busy", "old"]
    assert runs.run_ids(db, kind="train", state="finished") == ["old"]
    table = runs.run_table(db)
    assert list(table["run"]) == ["busy", "gen", "old"] and table.iloc[0]["progress"] == "3 / 10"
    assert runs.run(db, "busy")["state"] == "running" and runs.run(db, "nope") is None


def test_config_diff_lists_only_the_settings_that_differ(db):
    add_run(db, "a", config={"beta": 0.1, "lora": {"r": 8, "alpha": 16}})
    add_run(db, "b", config={"beta": 0.2, "lora": {"r": 8, "alpha": 32}})
    diff = runs.config_diff(db, ["a", "b"])
    assert diff.to_dict("records") == [{"setting": "beta", "a": "0.1", "b": "0.2"},
                                       {"setting": "lora.alpha", "a": "16", "b": "32"}]


def test_heldout_table_takes_first_and_last_values_with_n_and_intervals(db, tmp_path):
    import pandas as pd

    from storage import rundir

    add_run(db, "r")
    (tmp_path / "data").mkdir()
    pd.DataFrame({"prompt": list("abcd"), "chosen": list("wxyz"), "rejected": list("stuv")}).to_parquet(
        tmp_path / rundir.EVAL_DATA)                                     # 4 held-out pairs
    db.execute("UPDATE runs SET run_dir = ? WHERE id = 'r'", [str(tmp_path)])
    rows = [("eval/accuracy", 1, 0.5, "eval"), ("eval/accuracy", 2, 0.75, "eval"),
            ("eval/likelihood_accuracy", 1, 0.5, "eval"), ("eval/likelihood_accuracy", 2, 1.0, "eval"),
            ("m_theta", 2, 0.123456, "train")]
    for name, step, value, split in rows:
        db.execute("INSERT INTO run_scalars (run_id, step, name, value, split) VALUES ('r', ?, ?, ?, ?)",
                   [step, name, value, split])
    row = heldout_table(db, ["r"]).iloc[0]
    assert row["run"] == "run r" and row["held-out rows"] == 4
    assert row["accuracy (implicit reward)"] == "75% (30%–95%)"          # Wilson: 3 of 4
    assert row["likelihood accuracy: start → end"] == "50% (15%–85%) → 100% (51%–100%)"
    assert row["train mean m_θ (last step)"] == 0.1235 and row["held-out mean m_θ"] is None


def test_queue_reads_for_the_label_page(db):
    t = Q.create_task(db, "pair", "P", ["A", "B"], site="north", required=1)
    Q.create_task(db, "single", "Q", ["C"], site="east")
    Q.create_task(db, "single", "R", ["D"])
    assert Q.sites(db) == ["east", "north"]
    assert Q.needs_labels(db, t) and not Q.needs_labels(db, "gone")
    aid = Q.save_annotation(db, t, "x", "a", shown_order="ba")
    assert not Q.needs_labels(db, t) and Q.shown_order(db, aid) == "ba"
    assert annotator_names(db) == ["x"]


def test_undo_gives_back_the_written_answer(db):
    w = Q.create_task(db, "write", "Explain", [])
    Q.save_annotation(db, w, "x", "written", text="My draft")
    back = Q.undo_last(db, "x")
    assert back["task_id"] == w and back["previous_text"] == "My draft"
    s = Q.create_task(db, "single", "Q", ["C"])
    Q.save_annotation(db, s, "x", "good")
    assert Q.undo_last(db, "x")["previous_text"] is None


def test_prompts_to_answer_oldest_first_optionally_only_unanswered(db):
    for i, text in enumerate(("first", "second", "third")):
        db.execute("INSERT INTO prompts (id, text, created_at) VALUES (?, ?, ?)", [f"p{i}", text, f"2024-01-0{i + 1}"])
    db.execute("INSERT INTO tasks (id, kind, prompt_id, response_a) VALUES ('t', 'single', 'p1', 'r')")
    db.execute("INSERT INTO tasks (id, kind, prompt_id) VALUES ('w', 'write', 'p2')")     # no answer yet
    assert list(prompts_to_answer(db, 10)["prompt"]) == ["first", "second", "third"]
    assert list(prompts_to_answer(db, 10, only_unanswered=True)["prompt"]) == ["first", "third"]
    assert list(prompts_to_answer(db, 1)["prompt"]) == ["first"]

"""Blind human evaluation: the win-rate and Bradley-Terry maths against cases worked by hand, the Evaluate queue
(blind, random sides, never in Pairs), the exclusion rule (a judgment never changes a training selection unless an
admin opts in), generate jobs becoming pair tasks, and who may start an evaluation or see who judged."""
import json
import math
import random

import pandas as pd
import pytest

from app import evaluations as E
from app.context import User, UserError
from app.pages import label as L
from labeling import arena, blind_eval
from labeling import queue as Q
from labeling.dataset import training_rows

ANN = User("nora", "annotator", None)
ADMIN = User("boss", "admin", None)


# -- maths ------------------------------------------------------------------------------------------------------
def test_win_rate_counts_ties_half_with_the_wilson_interval():
    judged = [("A", "B", 1.0)] * 7 + [("B", "A", 0.0)] + [("A", "B", 0.5)] * 2 + [("A", "B", 0.0)] * 2
    (r,) = arena.win_rates(judged)
    assert (r["model"], r["opponent"], r["n"], r["wins"], r["ties"], r["losses"]) == ("A", "B", 12, 8, 2, 2)
    assert r["rate"] == pytest.approx(9 / 12)
    # Wilson by hand: p = .75, n = 12, z = 1.96: centre (p + z²/2n)/(1 + z²/n), half z·√(p(1-p)/n + z²/4n²)/(1 + z²/n)
    z, n, p = 1.959963984540054, 12, 0.75
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (r["low"], r["high"]) == pytest.approx((centre - half, centre + half))
    assert r["low"] == pytest.approx(0.468, abs=1e-3) and r["direction"] == "no measurable change"
    (clear,) = arena.win_rates([("A", "B", 1.0)] * 18 + [("A", "B", 0.0)] * 2)
    assert clear["low"] > 0.5 and clear["direction"] == "better"


def test_bradley_terry_recovers_strengths_that_fit_the_counts_exactly():
    # strengths 4 : 2 : 1 predict A beats B 2/3, B beats C 2/3, A beats C 4/5; with exactly those counts every
    # model's expected wins equal its observed wins, so (4, 2, 1) is the MLE: 400·log10(2) = 120.4 points apart
    judged = ([("A", "B", 1.0)] * 2 + [("A", "B", 0.0)] + [("B", "C", 1.0)] * 2 + [("C", "B", 1.0)]
              + [("A", "C", 1.0)] * 4 + [("A", "C", 0.0)])
    r = arena.ratings(judged, ["A", "B", "C"], prior=0, anchor="C")
    assert r == pytest.approx({"A": 1000 + 800 * math.log10(2), "B": 1000 + 400 * math.log10(2), "C": 1000})
    mean_anchored = arena.ratings(judged, ["A", "B", "C"], prior=0)
    assert sum(mean_anchored.values()) / 3 == pytest.approx(1000)


def test_a_clean_sweep_stays_finite_through_the_virtual_ties():
    # 3-0 plus one virtual tie (half a win each): strengths 3.5 : 0.5, so 400·log10(7) apart
    r = arena.ratings([("A", "B", 1.0)] * 3, ["A", "B"], prior=1.0)
    assert r["A"] - r["B"] == pytest.approx(400 * math.log10(7))


def test_leaderboard_is_seeded_sorted_and_its_intervals_hold_the_rating():
    rng = random.Random(0)
    strength = {"base": 1.0, "dpo": 2.0, "kto": 4.0}
    judged = []
    for _ in range(300):
        a, b = rng.sample(sorted(strength), 2)
        judged.append((a, b, float(rng.random() < strength[a] / (strength[a] + strength[b]))))
    board = arena.leaderboard(judged, anchor="base", rounds=100, seed=1)
    assert [b["model"] for b in board] == ["kto", "dpo", "base"]
    assert board == arena.leaderboard(judged, anchor="base", rounds=100, seed=1)
    for b in board:
        assert b["low"] <= b["rating"] <= b["high"]
    assert next(b for b in board if b["model"] == "base")["rating"] == 1000
    assert 0 < board[0]["low"] - 1000 and abs(board[0]["rating"] - 1000 - 400 * math.log10(4)) < 80
    assert arena.leaderboard([]) == []


# -- evaluation tasks in the database ----------------------------------------------------------------------------
def answers(prompts: list[str], texts: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"prompt": prompts, "site": [None] * len(prompts), "sample": 0, "response": texts})


def evaluation(db, eid="eval-1", n=4) -> list[str]:
    prompts = [f"Question {i}?" for i in range(n)]
    made = blind_eval.make_tasks(db, eid, {
        "base": answers(prompts, [f"base answer {i}" for i in range(n)]),
        "run1": answers(prompts, [f"run answer {i}" if i else "base answer 0" for i in range(n)])})
    assert made == n - 1                                            # identical answers cannot be judged
    return [r[0] for r in db.fetchall("SELECT task_id FROM evaluation_tasks WHERE evaluation_id = ?", [eid])]


def judge_all(db, who: str, key: str) -> None:
    """Judge every evaluation task as the Label page does: the shown sides, the same keys as Pairs."""
    while (task := Q.next_task(db, who, kind="pair", purpose="evaluation")) is not None:
        Q.save_annotation(db, task["task_id"], who, Q.pair_value_from_shown(key, task["shown_order"]),
                          shown_order=task["shown_order"])


def test_evaluation_tasks_are_only_in_the_evaluate_queue_blind_with_random_sides(db):
    label = Q.create_task(db, "pair", "Label me", ["x", "y"])
    tids = evaluation(db)
    served = Q.next_task(db, "ann", kind="pair")
    assert served["task_id"] == label                               # the Pairs queue: never an evaluation task
    Q.save_annotation(db, label, "ann", "a", shown_order=served["shown_order"])
    assert Q.next_task(db, "ann", kind="pair") is None
    assert Q.progress(db, "ann", "pair")["total"] == 1
    seen = Q.next_task(db, "ann", kind="pair", purpose="evaluation")
    assert seen["task_id"] in tids and "model" not in json.dumps(seen)   # nothing says which model wrote which
    assert Q.progress(db, "ann", "pair", "evaluation") == {"mine": 0, "total": 3, "everyone": 0, "remaining": 3}
    orders = {Q.get_task(db, seen["task_id"])["shown_order"] for _ in range(40)}
    assert orders == {"ab", "ba"}                                   # each showing picks the sides at random
    sides = {(m_a, m_b) for m_a, m_b in db.fetchall("SELECT model_a, model_b FROM evaluation_tasks")}
    assert len(sides) >= 1 and {m for s in sides for m in s} == {"base", "run1"}


def test_an_evaluation_judgment_never_changes_the_training_selection_unless_asked(db):
    for i in range(3):
        t = Q.create_task(db, "pair", f"P{i}", [f"A{i}", f"B{i}"])
        Q.save_annotation(db, t, "ann", "a")
    before = {k: training_rows(db, k) for k in ("pairs", "unpaired", "sft")}
    evaluation(db)
    judge_all(db, "ann", "1")
    for kind, rows in before.items():
        pd.testing.assert_frame_equal(training_rows(db, kind), rows)
    opted = training_rows(db, "pairs", with_evaluation=True)
    assert len(opted) == 3 + 3 and set(rows["example_id"]) < set(opted["example_id"])
    assert len(blind_eval.judgments(db, "eval-1")) == 3


def test_label_page_evaluate_mode_uses_the_pair_keys(ctx):
    evaluation(ctx.db)
    Q.create_task(ctx.db, "pair", "Label me", ["x", "y"])
    v = L.next_view(ctx, ANN, "Evaluate", None)
    assert v["kind"] == "pair" and v["progress"]["total"] == 3
    task = v["task"]
    v = L.decide(ctx, ANN, task, "1", "Evaluate", None)            # 1: the left answer is better
    assert v["note"].startswith("Saved: left better") and v["progress"]["mine"] == 1
    (_, _, score), = blind_eval.judgments(ctx.db)
    text_a = ctx.db.scalar("SELECT r.text FROM tasks t JOIN responses r ON r.id = t.response_a WHERE t.id = ?",
                           [task["task_id"]])
    assert score == (1.0 if task["responses"][0] == text_a else 0.0)
    assert L.next_view(ctx, ANN, "Pairs", None)["task"]["prompt"] == "Label me"


def test_results_name_models_and_say_the_win_rate_in_words(ctx):
    ctx.db.execute("INSERT INTO runs (id, name, kind, state) VALUES ('run1', 'DPO on ward notes', 'train', 'finished')")
    evaluation(ctx.db)
    judge_all(ctx.db, "ann", "1")
    r = blind_eval.results(ctx.db)
    assert r["n"] == 3 and r["leaderboard"] == []                  # two models: a win rate, no leaderboard
    (s,) = r["sentences"]
    assert "blind judgments (95% interval" in s and "DPO on ward notes" in s and "the base model" in s
    md = E.results_markdown(ctx)
    assert "of 3 blind judgments" in md and "Leaderboard" not in md


def test_generate_jobs_become_tasks_when_the_last_one_finishes_and_a_failure_says_which(ctx):
    def job(run_id, texts):
        d = ctx.runs_dir / run_id
        d.mkdir(parents=True)
        answers(["Q1?", "Q2?"], texts).to_parquet(d / "generations.parquet")
        ctx.db.execute("INSERT INTO runs (id, name, kind, state, run_dir) VALUES (?, ?, 'generate', 'running', ?)",
                       [run_id, run_id, str(d)])

    job("g1", ["a1", "a2"])
    job("g2", ["b1", "b2"])
    ctx.db.execute("""INSERT INTO evaluations (id, models, n_prompts) VALUES ('e', '["base", "r"]', 2)""")
    ctx.db.execute("INSERT INTO evaluation_jobs VALUES ('e', 'base', 'g1'), ('e', 'r', 'g2')")
    assert blind_eval.evaluation_of(ctx.db, "g1") == "e" and blind_eval.evaluation_of(ctx.db, "other") is None
    ctx.db.execute("UPDATE runs SET state = 'finished' WHERE id = 'g1'")
    assert blind_eval.job_ended(ctx.db, "g1", "finished") == 0     # g2 is still writing
    ctx.db.execute("UPDATE runs SET state = 'finished' WHERE id = 'g2'")
    assert blind_eval.job_ended(ctx.db, "g2", "finished") == 2
    assert ctx.db.scalar("SELECT state FROM evaluations WHERE id = 'e'") == "ready"
    assert ctx.db.scalar("SELECT count(*) FROM tasks WHERE purpose = 'evaluation'") == 2
    assert ctx.db.scalar("SELECT count(*) FROM tasks WHERE purpose = 'label'") == 0   # not the labeling queues
    ctx.db.execute("""INSERT INTO evaluations (id, models, n_prompts) VALUES ('f', '["base", "r"]', 2)""")
    ctx.db.execute("INSERT INTO evaluation_jobs VALUES ('f', 'r', 'g3')")
    ctx.db.execute("INSERT INTO runs (id, name, kind, state) VALUES ('r', 'kto', 'train', 'finished')")
    blind_eval.job_ended(ctx.db, "g3", "failed")
    assert ctx.db.scalar("SELECT error FROM evaluations WHERE id = 'f'").startswith("Writing the answers of kto failed")


def test_only_an_admin_starts_an_evaluation_or_sees_who_judged(ctx):
    with pytest.raises(UserError, match="nora is an annotator; only an admin can start a blind evaluation"):
        E.start(ctx, ANN, ["base", "run1"], 10)
    with pytest.raises(UserError, match="only an admin can see who judged what"):
        E.judges(ctx, ANN)
    evaluation(ctx.db)
    judge_all(ctx.db, "ann", "1")
    assert E.judges(ctx, ADMIN).to_dict("records") == [{"annotator": "ann", "judgments": 3}]
    with pytest.raises(UserError, match="at least two models"):
        E.start(ctx, ADMIN, ["base"], 10)
    with pytest.raises(UserError, match="not available"):
        E.start(ctx, ADMIN, ["base", "no-such-run"], 10)


def test_earlier_ab_tasks_and_try_picks_become_evaluation_tasks_on_upgrade():
    from labeling import ids
    from storage import migrations as M
    from storage.db import Database, migrate

    shipped = list(M.MIGRATIONS)
    db = Database(":memory:")
    try:
        M.MIGRATIONS[:] = [m for m in shipped if m[0] < "m007"]      # a database from before blind evaluation
        migrate(db)
        for prompt, batch, oa, ob in (("p1", "ab:r1:r2", "run:r1", "run:r2"),
                                      ("p2", "playground", "playground:base", "playground:r1"),
                                      ("p3", "import", "import", "import")):
            pid = ids.prompt_id(prompt, None)
            ra, rb = ids.response_id(pid, "x"), ids.response_id(pid, "y")
            db.execute("INSERT INTO prompts (id, text) VALUES (?, ?)", [pid, prompt])
            db.execute("INSERT INTO responses (id, prompt_id, text, origin) VALUES (?, ?, 'x', ?), (?, ?, 'y', ?)",
                       [ra, pid, oa, rb, pid, ob])
            db.execute("""INSERT INTO tasks (id, kind, prompt_id, response_a, response_b, batch)
                          VALUES (?, 'pair', ?, ?, ?, ?)""", [ids.task_id("pair", pid, ra, rb), pid, ra, rb, batch])
        M.MIGRATIONS[:] = shipped
        migrate(db)
        assert db.fetchall("SELECT batch, purpose FROM tasks ORDER BY batch") == [
            ("ab:r1:r2", "evaluation"), ("import", "label"), ("playground", "evaluation")]
        assert sorted(db.fetchall("SELECT evaluation_id, model_a, model_b FROM evaluation_tasks")) == [
            ("ab:r1:r2", "r1", "r2"), ("try", "base", "r1")]
    finally:
        M.MIGRATIONS[:] = shipped
        db.close()


def test_starting_an_evaluation_queues_one_generate_job_per_model_on_evaluation_prompts(ctx, tiny_model_dir,
                                                                                         monkeypatch):
    from labeling import evalset
    from tests.test_try_model import make_run

    monkeypatch.setenv("PREFLAB_MODEL", str(tiny_model_dir))
    for i in range(30):
        Q.create_task(ctx.db, "single", f"Question {i}?", [f"answer {i}"], site="ward")
    run = make_run(ctx, tiny_model_dir)
    with pytest.raises(UserError, match="Number of prompts"):
        E.start(ctx, ADMIN, ["base", run], "ten")
    msg = E.start(ctx, ADMIN, ["base", run], 3, "first look")
    assert "2 models answer 3 evaluation prompts" in msg
    (e,) = blind_eval.evaluations(ctx.db)
    assert (e["name"], e["state"], json.loads(e["models"])) == ("first look", "generating", ["base", run])
    jobs = ctx.db.records("""SELECT j.model, r.kind, r.state, r.config, r.run_dir FROM evaluation_jobs j
                             JOIN runs r ON r.id = j.run_id ORDER BY j.rowid""")
    assert [(j["model"], j["kind"], j["state"]) for j in jobs] == [("base", "generate", "queued"),
                                                                   (run, "generate", "queued")]
    assert json.loads(jobs[0]["config"])["adapter_init"] is None
    assert json.loads(jobs[1]["config"])["adapter_init"].endswith(f"{run}/adapter")
    asked = [set(pd.read_parquet(f"{j['run_dir']}/data/train.parquet")["prompt_id"]) for j in jobs]
    assert asked[0] == asked[1] and len(asked[0]) == 3 and asked[0] <= evalset.prompt_ids(ctx.db)
    assert E.status_table(ctx).iloc[0]["state"] == "generating"

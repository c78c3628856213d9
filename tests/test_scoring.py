"""Every run scored on the same evaluation set, the base model once per set version, a verdict in words; Compare
answers an empty selection with a sentence."""
import json

from app import scoring
from app.launch import create_run
from labeling import evalset, evaluation
from labeling import queue as Q
from labeling.dataset import training_rows
from storage import rundir
from training.config import JobConfig, LoraConfig


def run_here(ctx, run_id):
    """Run a queued job in this process, then ingest its metrics and record it finished as the supervisor would."""
    from app.supervisor import Supervisor
    from training.__main__ import run_job

    assert run_job(ctx.runs_dir / run_id) == 0
    Supervisor(ctx).ingest(run_id, ctx.runs_dir / run_id)
    ctx.db.execute("UPDATE runs SET state = 'finished' WHERE id = ?", [run_id])


def project(ctx, n=30):
    for i in range(n):
        t = Q.create_task(ctx.db, "pair", f"How do I fix machine {i}?", [f"Stop it and check part {i}.", "No idea."],
                          site="plant-a" if i % 2 else "plant-b", required=1)
        Q.save_annotation(ctx.db, t, "x", "a")


def test_runs_are_scored_on_the_evaluation_set_and_get_a_verdict(ctx, tiny_model_dir):
    project(ctx)
    es = evalset.current(ctx.db)
    assert es["version"] == 1 and len(es["prompt_ids"]) == 6            # 30 prompts: 20% is 6
    cfg = JobConfig(algorithm="dpo", model=str(tiny_model_dir), lora=LoraConfig(r=4, alpha=8), batch_size=2,
                    max_steps=2, max_length=64, max_prompt_length=32, max_new_tokens=4, checkpoint_every=0)
    rid = create_run(ctx, cfg, training_rows(ctx.db, "pairs"), name="first dpo")
    run_dir = ctx.runs_dir / rid
    import pandas as pd

    held = pd.read_parquet(run_dir / rundir.EVAL_DATA)
    assert len(held) == 6 and not set(held["prompt"]) & set(pd.read_parquet(run_dir / rundir.TRAIN_DATA)["prompt"])
    snap = ctx.db.scalar("SELECT snapshot_id FROM runs WHERE id = ?", [rid])
    assert ctx.db.scalar("SELECT evalset_version FROM snapshots WHERE id = ?", [snap]) == 1
    assert "when it finishes" in evaluation.verdict_text(ctx.db, rid)
    run_here(ctx, rid)

    made = scoring.queue_scores(ctx, rid)
    assert len(made) == 2                                                # the run, and the base once
    assert scoring.queue_scores(ctx, rid) == []                          # never twice
    assert "Being scored" in evaluation.verdict_text(ctx.db, rid)
    for m in made:
        run_here(ctx, m)
    s = evaluation.score(ctx.db, rid)
    assert s["state"] == "scored" and s["n"] == 6 and s["version"] == 1
    assert s["base_likelihood"] is not None and s["verdict"]["direction"] in ("better", "worse", "no measurable change")
    text = evaluation.verdict_text(ctx.db, rid)
    assert text.startswith("Prefers the answers your team preferred on ")
    assert "of 6 held-out pairs (95% interval" in text
    from app.pages.runs import status_line

    assert f"**Verdict:** {text}" in status_line(ctx, rid)             # the Runs page says it under the status
    board = evaluation.scoreboard(ctx.db, [rid])
    assert list(board["model"]) == ["base model (evaluation set v1)", "first dpo"]
    assert board.iloc[0]["prefers the team's answer (vs base)"] == "50% (by definition)" and board.iloc[1]["pairs"] == 6
    base = json.loads((ctx.runs_dir / made[1] / rundir.EVAL_REPORT).read_text())
    assert len(evaluation.base_generations(ctx.db, [rid])) == len({g["prompt"] for g in base["generations"]})

    second = create_run(ctx, cfg, training_rows(ctx.db, "pairs"), name="second dpo")
    run_here(ctx, second)
    assert len(scoring.queue_scores(ctx, second)) == 1                   # the base is scored already

    # Compare names runs (ids on hover), says each verdict, and shows one answer column per run and the base
    C, on_compare = compare_page(ctx)
    out = on_compare.fn([rid, second], None)
    summary, verdicts, board, loss, answers = out[0], out[1], out[2], out[3], out[-1]
    assert f'<span title="{rid}">first dpo</span>' in verdicts and "Being scored" in verdicts   # second not run yet
    assert "Prefers the answers your team preferred on" in verdicts
    assert {t.name.split(" · ")[0] for t in loss.data} == {"first dpo", "second dpo"}
    assert "<th" in answers and ">base model</th>" in answers and ">first dpo</th>" in answers
    import pandas as pd                                                  # the base answered the run's prompts
    run_prompts = set(pd.read_parquet(ctx.runs_dir / rid / rundir.GENERATIONS)["prompt"])
    assert run_prompts and set(evaluation.base_generations(ctx.db, [rid])) == run_prompts
    assert list(board["model"])[:2] == ["base model (evaluation set v1)", "first dpo"]


def compare_page(ctx):
    import gradio as gr

    from app.pages import compare as C

    with gr.Blocks() as demo:
        C.build(ctx)
    return C, next(f for f in demo.fns.values() if f.fn.__name__ == "on_compare")


def test_compare_with_nothing_selected_answers_with_one_sentence(ctx):
    C, on_compare = compare_page(ctx)
    out = on_compare.fn([], None)
    assert out[0] == C.EMPTY == "Pick one or more runs above, then press Compare."
    assert out[1] == "" and out[-1] == ""

"""Compare page: runs by name (id on hover), each run's verdict against the base model on the evaluation set and a
score table with n and 95% intervals (labeling/evaluation.py), overlaid curves, config diff, data diff between
snapshots, held-out metrics, side-by-side answers (one column per run and the base model), and a blind evaluation
of the selected runs (app/evaluations.py: their answers to evaluation prompts, judged in the Label page's Evaluate
mode) with each win rate, its 95% interval and, for 3+ models, the leaderboard."""
from __future__ import annotations

from html import escape
from pathlib import Path

import gradio as gr
import pandas as pd

from app import charts, evaluations
from app.context import AppContext
from app.handlers import handler
from app.tables import shown
from labeling import evaluation, runs
from storage import rundir
from storage.snapshots import snapshot_diff


def data_diff(ctx: AppContext, run_ids: list[str]) -> str:
    if len(run_ids) < 2:
        return ""
    snaps = [(runs.run(ctx.db, r) or {}).get("snapshot_id") for r in run_ids[:2]]
    if not all(snaps):
        return "Data diff: one of the runs has no snapshot."
    if snaps[0] == snaps[1]:
        return f"**Data:** both runs trained on the same snapshot ({snaps[0]})."
    d = snapshot_diff(ctx.db, snaps[0], snaps[1])
    a, b = (named(ctx.db, r) for r in run_ids[:2])
    return (f"**Data from {a} to {b}:** {len(d['added'])} example(s) added, {len(d['changed'])} "
            f"changed (a label flipped), {len(d['removed'])} removed ({d['n_a']} → {d['n_b']}).")


def named(db, run_id: str) -> str:
    """A run's name with its id on hover."""
    return f'<span title="{escape(run_id)}">{escape(runs.names(db, [run_id])[run_id])}</span>'


def generations(ctx: AppContext, run_ids: list[str]) -> pd.DataFrame:
    """prompt, then one column per run (by name) and the base model's (from its score on the evaluation set): the
    greedy answers each wrote to held-out prompts; a blank where a model did not answer that prompt."""
    db = ctx.db.reader()
    cols: dict[str, dict[str, str]] = {}
    base = evaluation.base_generations(db, run_ids)
    if base:
        cols["base model"] = base
    for rid, name in runs.names(db, run_ids).items():
        d = (runs.run(db, rid) or {}).get("run_dir")
        p = Path(d or "") / rundir.GENERATIONS
        if d and p.exists():
            g = pd.read_parquet(p)
            cols[name if name not in cols else f"{name} ({rid})"] = dict(
                zip(g[g["sample"] == 0]["prompt"], g[g["sample"] == 0]["response"]))
    prompts = list(dict.fromkeys(p for c in cols.values() for p in c))
    return pd.DataFrame([{"prompt": p, **{k: c.get(p, "") for k, c in cols.items()}} for p in prompts],
                        columns=["prompt", *cols])


def answers_html(df: pd.DataFrame) -> str:
    """The side-by-side answers as a table of equal, wrapping columns, so every run's answer is readable."""
    if df.empty or len(df.columns) < 2:
        return "<p>No answers to show: runs write answers to held-out prompts when they finish.</p>"
    width = f"{100 / len(df.columns):.1f}%"
    head = "".join(f'<th style="width:{width}">{escape(str(c))}</th>' for c in df.columns)
    body = "".join("<tr>" + "".join(f'<td style="vertical-align:top;white-space:pre-wrap;overflow-wrap:anywhere">{escape(str(v)) or "—"}</td>'
                                    for v in r) + "</tr>" for r in df.itertuples(index=False))
    return f'<table style="table-layout:fixed;width:100%"><tr>{head}</tr>{body}</table>'


def verdicts(ctx: AppContext, run_ids: list[str]) -> str:
    """One verdict per run, in words, against the base model on the evaluation set."""
    db = ctx.db.reader()
    return "\n\n".join(f"**{named(db, rid)}:** {escape(evaluation.verdict_text(db, rid))}" for rid in run_ids)


EMPTY = "Pick one or more runs above, then press Compare."


def build(ctx: AppContext) -> None:
    with gr.Row():
        pick = gr.Dropdown([], multiselect=True, label="Runs to compare", elem_id="compare-runs", scale=3)
        b_go = gr.Button("Compare", variant="primary", elem_id="compare-go")
        b_load = gr.Button("Reload run list", size="sm")
    data_md = gr.Markdown(EMPTY, elem_id="compare-summary")
    verdict_md = gr.Markdown(elem_id="compare-verdicts")
    scores = gr.Dataframe(label="On the evaluation set (pairs, with 95% intervals)", interactive=False,
                          elem_id="compare-scores")
    with gr.Row():
        p_loss = gr.Plot(elem_id="compare-loss")
        p_m = gr.Plot()
    with gr.Row():
        p_acc = gr.Plot()
        p_margin = gr.Plot()
    held = gr.Dataframe(label="Held-out metrics", interactive=False, elem_id="compare-heldout")
    cfg = gr.Dataframe(label="Settings that differ", interactive=False)
    gr.Markdown("**Side-by-side answers on held-out prompts**")
    gens = gr.HTML(elem_id="compare-answers")
    # The blind evaluation's win rates and leaderboard (app/evaluations.py) follow here.
    with gr.Accordion("Blind evaluation of the selected runs (judged in the Label page's Evaluate mode)", open=True):
        with gr.Row():
            ab_base = gr.Checkbox(value=False, label="Include the base model", elem_id="compare-ab-base")
            ab_n = gr.Number(value=evaluations.DEFAULT_PROMPTS, precision=0, label="Evaluation prompts",
                             elem_id="compare-ab-n")
            b_ab = gr.Button("Start a blind evaluation", elem_id="compare-ab")
        ab_msg = gr.Markdown(elem_id="compare-ab-result")
        ab_results = gr.Markdown(elem_id="compare-ab-results")

    @handler(ctx, user=False)
    def on_load():
        return gr.update(choices=runs.choices(ctx.db.reader(), kind="train"))

    @handler(ctx, user=False)
    def on_compare(ids):
        ids = ids or []
        if not ids:     # a sentence, not seven red panels
            none = shown(None, "No run selected.")
            return EMPTY, "", none, *(gr.update(value=None) for _ in range(4)), none, none, ""
        db = ctx.db.reader()
        cfg_diff = runs.config_diff(db, ids).rename(columns=runs.names(db, ids))
        return (data_diff(ctx, ids), verdicts(ctx, ids), evaluation.scoreboard(db, ids), charts.loss_chart(db, ids),
                charts.line_chart(db, ids, ["m_theta"], "Mean m_θ"),
                charts.accuracy_chart(db, ids), charts.line_chart(db, ids, ["rewards/margins"], "Reward margin"),
                evaluation.heldout_table(db, ids), cfg_diff, answers_html(generations(ctx, ids)))

    @handler(ctx)
    def on_ab(user, ids, with_base, n):
        models = [*(ids or []), *(["base"] if with_base else [])]
        return evaluations.start(ctx, user, models, n)

    @handler(ctx, user=False)
    def on_ab_results(ids, with_base):
        """Win rates among the selected runs (and the base), from every blind judgment so far."""
        return evaluations.results_markdown(ctx, None, [*(ids or []), *(["base"] if with_base else [])]) if ids else ""

    b_load.click(on_load, None, pick, api_name=False)
    gr.Timer(5.0).tick(on_load, None, pick, api_name=False, show_progress="hidden")
    b_go.click(on_compare, pick, [data_md, verdict_md, scores, p_loss, p_m, p_acc, p_margin, held, cfg, gens],
               api_name="compare")
    b_ab.click(on_ab, [pick, ab_base, ab_n], ab_msg, api_name="compare_ab")
    b_go.click(on_ab_results, [pick, ab_base], ab_results, api_name="compare_blind_results")
    return lambda demo: demo.load(on_load, None, pick, api_name=False)

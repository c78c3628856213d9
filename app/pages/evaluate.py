"""Evaluate tab, the admin's evaluation panel: start a blind evaluation of two or more models on prompts of the
evaluation set, follow it, and read the win rates and the leaderboard (app/evaluations.py). Annotators judge the
pairs in the Label page's Evaluate mode; who judged what is shown to admins only."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from app import evaluations as E
from app.context import AppContext
from app.handlers import handler

ALL = "(all evaluations and Try-page picks)"


def build(ctx: AppContext):
    gr.Markdown("Compare models the way your team would: each model answers the same evaluation prompts, "
                "annotators pick the better answer blind (Label page, **Evaluate** mode), and the win rates below "
                "say which model they prefer. These judgments never become training data unless an admin ticks "
                "\"Also train on evaluation judgments\" on the Train page.")
    with gr.Row():
        models = gr.Dropdown([], multiselect=True, label="Models (two or more)", scale=3, elem_id="eval-models")
        n_prompts = gr.Number(value=E.DEFAULT_PROMPTS, precision=0, label="Evaluation prompts", scale=1,
                              elem_id="eval-n")
        name = gr.Textbox(label="Name (optional)", scale=1)
    with gr.Row():
        b_start = gr.Button("Start evaluation", variant="primary", elem_id="eval-start")
        b_refresh = gr.Button("Refresh", size="sm", elem_id="eval-refresh")
    msg = gr.Markdown(elem_id="eval-message")
    table = gr.Dataframe(label="Evaluations", interactive=False, elem_id="eval-table")
    which = gr.Dropdown([ALL], value=ALL, label="Results of", elem_id="eval-which")
    results = gr.Markdown(elem_id="eval-results")
    judges = gr.Dataframe(label="Judgments per annotator (admins only)", interactive=False, elem_id="eval-judges")

    def _id(w):
        return None if w in (None, "", ALL) else w

    @handler(ctx)
    def on_refresh(user, chosen, w):
        table_df = E.status_table(ctx)
        ids = [ALL, *table_df["evaluation"].tolist()]
        w = w if w in ids else ALL
        keys = [k for _, k in E.choices(ctx)]
        who = E.judges(ctx, user, _id(w)) if user.is_admin else pd.DataFrame(columns=["annotator", "judgments"])
        return (gr.update(choices=E.choices(ctx), value=[c for c in chosen or [] if c in keys]), table_df,
                gr.update(choices=ids, value=w), E.results_markdown(ctx, _id(w)), who)

    @handler(ctx)
    def on_start(user, chosen, n, nm):
        return E.start(ctx, user, chosen, n, nm)

    outputs = [models, table, which, results, judges]
    b_refresh.click(on_refresh, [models, which], outputs, api_name="evaluation_refresh")
    which.change(on_refresh, [models, which], outputs, api_name=False)
    b_start.click(on_start, [models, n_prompts, name], msg, api_name="evaluation_start") \
        .then(on_refresh, [models, which], outputs, api_name=False)
    return lambda demo: demo.load(on_refresh, [models, which], outputs, api_name=False)

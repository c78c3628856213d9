"""Compare page: overlaid curves, config diff, data diff between snapshots, held-out metrics, side-by-side
answers, and blind A/B evaluation: pair tasks from two runs' answers, labeled on the Label page, with the
win rate and its 95% interval."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from app import charts
from app.context import AppContext, UserError, admin_only
from app.handlers import handler
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
    return (f"**Data from {run_ids[0]} to {run_ids[1]}:** {len(d['added'])} example(s) added, {len(d['changed'])} "
            f"changed (a label flipped), {len(d['removed'])} removed ({d['n_a']} → {d['n_b']}).")


def generations(ctx: AppContext, run_ids: list[str]) -> pd.DataFrame:
    frames = []
    for rid in run_ids:
        d = (runs.run(ctx.db, rid) or {}).get("run_dir")
        p = Path(d or "") / rundir.GENERATIONS
        if d and p.exists():
            g = pd.read_parquet(p)
            frames.append(g[g["sample"] == 0][["prompt", "response"]].rename(columns={"response": rid}).set_index("prompt"))
    if not frames:
        return pd.DataFrame(columns=["prompt"])
    return pd.concat(frames, axis=1, join="inner").reset_index()


@admin_only("create evaluation tasks")
def create_ab_tasks(ctx: AppContext, user, run_a: str, run_b: str) -> str:
    """Blind pair tasks on the prompts both runs answered; each answer remembers its run (responses.origin)."""
    from labeling.queue import create_task

    gen = generations(ctx, [run_a, run_b])
    if gen.empty or run_a not in gen or run_b not in gen:
        raise UserError("Both runs need answers to the same held-out prompts (runs with held-out data write them).")
    n = 0
    for r in gen.to_dict("records"):
        if r[run_a] != r[run_b]:
            create_task(ctx.db, "pair", r["prompt"], [r[run_a], r[run_b]], source=f"ab:{run_a}:{run_b}",
                        origins=[f"run:{run_a}", f"run:{run_b}"], required=1)
            n += 1
    return f"Created {n} blind pair task(s) (identical answers skipped). Annotators find them on the Label page (Pairs)."


def build(ctx: AppContext) -> None:
    with gr.Row():
        pick = gr.Dropdown([], multiselect=True, label="Runs to compare", elem_id="compare-runs", scale=3)
        b_go = gr.Button("Compare", variant="primary", elem_id="compare-go")
        b_load = gr.Button("Reload run list", size="sm")
    data_md = gr.Markdown()
    with gr.Row():
        p_loss = gr.Plot(elem_id="compare-loss")
        p_m = gr.Plot()
    with gr.Row():
        p_acc = gr.Plot()
        p_margin = gr.Plot()
    held = gr.Dataframe(label="Held-out metrics", interactive=False, elem_id="compare-heldout")
    cfg = gr.Dataframe(label="Settings that differ", interactive=False)
    gens = gr.Dataframe(label="Side-by-side answers on held-out prompts", interactive=False, wrap=True)
    with gr.Accordion("Blind A/B evaluation (first two selected runs)", open=False):
        b_ab = gr.Button("Create blind pair tasks", elem_id="compare-ab")
        ab_msg = gr.Markdown(elem_id="compare-ab-result")

    @handler(ctx, user=False)
    def on_load():
        return gr.update(choices=runs.run_ids(ctx.db.reader(), kind="train"))

    @handler(ctx, user=False)
    def on_compare(ids):
        ids = ids or []
        if not ids:
            raise UserError("Pick at least one run.")
        db = ctx.db.reader()
        wr = ""
        if len(ids) >= 2:
            w = evaluation.win_rate(db, ids[0], ids[1])
            wr = (f"  \n**Blind A/B:** {ids[0]} wins {w['rate']:.0%} of {w['n']} judged pairs "
                  f"(95% interval {w['low']:.0%}–{w['high']:.0%})." if w["n"] else
                  "  \n**Blind A/B:** no judged pairs yet.")
        return (data_diff(ctx, ids) + wr, charts.loss_chart(db, ids),
                charts.line_chart(db, ids, ["m_theta"], "Mean m_θ"),
                charts.accuracy_chart(db, ids), charts.line_chart(db, ids, ["rewards/margins"], "Reward margin"),
                evaluation.heldout_table(db, ids), runs.config_diff(db, ids), generations(ctx, ids))

    @handler(ctx)
    def on_ab(user, ids):
        if not ids or len(ids) < 2:
            raise UserError("Pick two runs.")
        return create_ab_tasks(ctx, user, ids[0], ids[1])

    b_load.click(on_load, None, pick, api_name=False)
    gr.Timer(5.0).tick(on_load, None, pick, api_name=False, show_progress="hidden")
    b_go.click(on_compare, pick, [data_md, p_loss, p_m, p_acc, p_margin, held, cfg, gens], api_name="compare")
    b_ab.click(on_ab, pick, ab_msg, api_name="compare_ab")
    return lambda demo: demo.load(on_load, None, pick, api_name=False)

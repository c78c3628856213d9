"""Runs page, live: every run with its state; for the selected run, progress and ETA, alerts in words, and the
charts (loss, rewards, log-probs, accuracy, KL, β trajectory, m_θ bands and histogram, MinorSFT coefficient,
per-site curves), plus the training examples with the most extreme m_θ. Refreshes every 2 seconds."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from app import charts
from app.context import AppContext, UserError, admin_only, require_admin
from app.handlers import handler
from labeling import runs
from storage import rundir


def status_line(ctx: AppContext, run_id: str | None) -> str:
    if not run_id:
        return "Pick a run."
    db = ctx.db.reader()       # read on the page's own cursor: a refresh never holds up a label being saved
    r = runs.run(db, run_id)
    if r is None:
        return f"There is no run {run_id}."
    state, error = r["state"], r["error"]
    st = rundir.read_status(r["run_dir"]) or {}
    parts = [f"**{run_id}** ({r['algorithm']}) is **{state}**: step {r['step']} of {r['total_steps'] or '?'}"]
    if r["origin"] == "external":
        parts.append("Started outside the app (a Flower coordinator): followed here, stopped where it was started; "
                     "per-example values (m_θ) stay at the sites.")
    if state == "running" and st.get("eta_s") is not None:
        parts.append(f"about {int(st['eta_s'])} s left")
    if st.get("phase") and state == "running":
        parts.append(st["phase"])
    if st.get("note"):       # how the job adapted to the model, e.g. padding where it cannot pack prompts
        parts.append(f"ℹ️ {st['note']}")
    if error:
        parts.append(f"❌ {error}")
    for a in charts.alerts(db, run_id):
        parts.append(f"⚠️ {a}")
    return "  \n".join(parts)


def figures(ctx: AppContext, run_id: str | None) -> list:
    ids = [run_id] if run_id else []
    db = ctx.db.reader()
    return [charts.loss_chart(db, ids), charts.rewards_chart(db, ids), charts.logps_chart(db, ids),
            charts.accuracy_chart(db, ids), charts.kl_chart(db, ids), charts.beta_chart(db, run_id or ""),
            charts.m_theta_bands(db, run_id or ""), charts.m_theta_histogram(db, run_id or ""),
            charts.minor_coef_chart(db, run_id or ""), charts.per_site_chart(db, run_id or "")]


def act(ctx: AppContext, user, action: str, run_id: str | None) -> str:
    require_admin(user, f"{action} runs")
    if not run_id:
        raise UserError("Pick a run first.")
    sup = ctx.supervisor
    if sup is None:
        raise UserError("The job supervisor is not running.")
    if action == "stop":
        return sup.stop(run_id)
    if action == "resume":
        return sup.resume(run_id)
    if action == "delete":
        return sup.delete(run_id)
    if action == "new":
        import json

        from app.launch import create_run
        from labeling.dataset import training_rows
        from training.config import JobConfig

        r = runs.run(ctx.db, run_id)
        if r is None:
            raise UserError(f"There is no run {run_id}.")
        cfg = JobConfig.from_dict(json.loads(r["config"]))
        data = training_rows(ctx.db, cfg.data_kind)   # today's labels: new ones are included
        new = create_run(ctx, cfg, data, name=f"{r['name']} (again)", parent_id=run_id, eval_fraction=0.1)
        return f"New run {new} queued with the same settings and today's labels."
    raise UserError(f"Unknown action {action}.")


@admin_only("export models")
def export(ctx: AppContext, user, run_id: str | None, kind: str) -> str:
    """Zip of the run's adapter (PEFT folder) or merged model with its model card."""
    if not run_id:
        raise UserError("Pick a run first.")
    from pathlib import Path

    from storage.snapshots import load_snapshot
    from training.model_export import ExportError, export_run

    r = runs.run(ctx.db, run_id)
    if r is None:
        raise UserError(f"There is no run {run_id}.")
    if r["state"] != "finished":
        raise UserError(f"Run {run_id} is {r['state']}; export it once it has finished.")
    counts = {}
    if r["snapshot_id"]:
        snap = load_snapshot(ctx.db, r["snapshot_id"])
        counts = snap["site"].fillna("(no site)").value_counts().to_dict()
    try:
        out = export_run(Path(r["run_dir"]), ctx.exports_dir / f"{run_id}-{kind}", form=kind,
                         info={"run_id": run_id, "run_name": r["name"], "snapshot_id": r["snapshot_id"],
                               "label_counts": counts})
    except ExportError as e:
        raise UserError(str(e)) from None
    return out["zip"]


def build(ctx: AppContext) -> None:
    table = gr.Dataframe(runs.run_table(ctx.db.reader()), interactive=False, label="Runs", elem_id="runs-table")
    with gr.Row():
        run = gr.Dropdown(choices=[], label="Run", elem_id="runs-select", scale=2, allow_custom_value=True)
        b_stop = gr.Button("Stop", size="sm", elem_id="runs-stop")
        b_resume = gr.Button("Resume", size="sm")
        b_new = gr.Button("New run from this one", size="sm")
        b_delete = gr.Button("Delete", size="sm", variant="stop")
    with gr.Row():
        exp_kind = gr.Radio([("LoRA adapter (PEFT)", "adapter"), ("Merged model (Hugging Face)", "merged")],
                            value="adapter", label="Export (admin)", scale=2)
        b_export = gr.Button("Export as zip", size="sm", scale=1, elem_id="runs-export")
        exp_file = gr.File(label="Download", scale=2)
    msg = gr.Markdown()
    status = gr.Markdown(elem_id="runs-status")
    plots = []
    for row in range(5):
        with gr.Row():
            for col in range(2):
                plots.append(gr.Plot(elem_id=f"runs-plot-{row * 2 + col}"))
    gr.Markdown("**Examples with the most extreme m_θ at the latest step** (their prompt, answer and labels)")
    extreme = gr.Dataframe(interactive=False, elem_id="runs-extreme", wrap=True)
    timer = gr.Timer(2.0)

    def choices():
        return runs.run_ids(ctx.db.reader())

    @handler(ctx, user=False)
    def refresh(run_id):
        ids = choices()
        if run_id not in ids:
            run_id = ids[0] if ids else None
        return (runs.run_table(ctx.db.reader()), gr.update(choices=ids, value=run_id), status_line(ctx, run_id),
                *figures(ctx, run_id), charts.extreme_instances(ctx.db.reader(), run_id) if run_id else pd.DataFrame())

    outputs = [table, run, status, *plots, extreme]
    timer.tick(refresh, run, outputs, api_name=False, show_progress="hidden")
    run.select(refresh, run, outputs, api_name=False)

    @handler(ctx)
    def on_export(user, run_id, kind):
        return export(ctx, user, run_id, kind)

    b_export.click(on_export, [run, exp_kind], exp_file, api_name="run_export")

    def make_action(action: str):
        def run_action(user, run_id):
            return act(ctx, user, action, run_id)
        run_action.__name__ = f"run_{action}"
        return handler(ctx)(run_action)

    for btn, action in ((b_stop, "stop"), (b_resume, "resume"), (b_delete, "delete"), (b_new, "new")):
        btn.click(make_action(action), run, msg, api_name=f"run_{action}")

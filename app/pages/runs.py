"""Runs page, live: every run with its state; for the selected run, progress and ETA, alerts in words, and the
charts (loss, rewards, log-probs, accuracy, KL, β trajectory, m_θ bands and histogram, MinorSFT coefficient,
per-site curves), plus the training examples with the most extreme m_θ. Refreshes every 2 seconds."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from app import charts
from app.context import AppContext, UserError, friendly
from storage import rundir


def runs_table(ctx: AppContext) -> pd.DataFrame:
    return ctx.db.reader().df("""SELECT id AS run, name, kind, algorithm, state, step || ' / ' || coalesce(total_steps, 0) AS progress,
                               strftime(created_at, '%Y-%m-%d %H:%M') AS created, coalesce(error, '') AS error
                        FROM runs ORDER BY created_at DESC""")


def status_line(ctx: AppContext, run_id: str | None) -> str:
    if not run_id:
        return "Pick a run."
    db = ctx.db.reader()       # read on the page's own cursor: a refresh never holds up a label being saved
    row = db.fetchone("SELECT state, step, total_steps, error, run_dir, algorithm, origin FROM runs WHERE id = ?",
                      [run_id])
    if row is None:
        return f"There is no run {run_id}."
    state, step, total, error, run_dir, algo, origin = row
    st = rundir.read_status(run_dir) or {}
    parts = [f"**{run_id}** ({algo}) is **{state}**: step {step} of {total or '?'}"]
    if origin == "external":
        parts.append("Started outside the app (a Flower coordinator): followed here, stopped where it was started; "
                     "per-example values (m_θ) stay at the sites.")
    if state == "running" and st.get("eta_s") is not None:
        parts.append(f"about {int(st['eta_s'])} s left")
    if st.get("phase") and state == "running":
        parts.append(st["phase"])
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
    if not user.is_admin:
        raise UserError(f"{user.name} is an annotator; only an admin can {action} runs.")
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

        from app.jobs import create_run
        from labeling.dataset import training_rows
        from training.config import JobConfig

        row = ctx.db.fetchone("SELECT config, name FROM runs WHERE id = ?", [run_id])
        cfg = JobConfig.from_dict(json.loads(row[0]))
        data = training_rows(ctx.db, cfg.data_kind)   # today's labels: new ones are included
        new = create_run(ctx, cfg, data, name=f"{row[1]} (again)", parent_id=run_id, eval_fraction=0.1)
        return f"New run {new} queued with the same settings and today's labels."
    raise UserError(f"Unknown action {action}.")


def export(ctx: AppContext, user, run_id: str | None, kind: str) -> str:
    """Zip of the run's adapter (PEFT folder) or merged model with its model card; admins only."""
    if not user.is_admin:
        raise UserError(f"{user.name} is an annotator; only an admin can export models.")
    if not run_id:
        raise UserError("Pick a run first.")
    from pathlib import Path

    from storage.snapshots import load_snapshot
    from training.export import ExportError, export_run

    row = ctx.db.fetchone("SELECT run_dir, snapshot_id, state, name FROM runs WHERE id = ?", [run_id])
    if row is None:
        raise UserError(f"There is no run {run_id}.")
    if row[2] != "finished":
        raise UserError(f"Run {run_id} is {row[2]}; export it once it has finished.")
    counts = {}
    if row[1]:
        snap = load_snapshot(ctx.db, row[1])
        counts = snap["site"].fillna("(no site)").value_counts().to_dict()
    try:
        r = export_run(Path(row[0]), ctx.exports_dir / f"{run_id}-{kind}", form=kind,
                       info={"run_id": run_id, "run_name": row[3], "snapshot_id": row[1], "label_counts": counts})
    except ExportError as e:
        raise UserError(str(e)) from None
    return r["zip"]


def build(ctx: AppContext) -> None:
    table = gr.Dataframe(runs_table(ctx), interactive=False, label="Runs", elem_id="runs-table")
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
        return [r[0] for r in ctx.db.reader().fetchall("SELECT id FROM runs ORDER BY created_at DESC")]

    @friendly
    def refresh(run_id):
        ids = choices()
        if run_id not in ids:
            run_id = ids[0] if ids else None
        return (runs_table(ctx), gr.update(choices=ids, value=run_id), status_line(ctx, run_id),
                *figures(ctx, run_id), charts.extreme_instances(ctx.db.reader(), run_id) if run_id else pd.DataFrame())

    outputs = [table, run, status, *plots, extreme]
    timer.tick(refresh, run, outputs, api_name=False, show_progress="hidden")
    run.select(refresh, run, outputs, api_name=False)

    def on_export(run_id, kind, request: gr.Request):
        return export(ctx, ctx.user(request), run_id, kind)

    b_export.click(friendly(on_export), [run, exp_kind], exp_file, api_name="run_export")

    for btn, action in ((b_stop, "stop"), (b_resume, "resume"), (b_delete, "delete"), (b_new, "new")):
        def handler(run_id, request: gr.Request, _a=action):
            return act(ctx, ctx.user(request), _a, run_id)
        handler.__name__ = f"run_{action}"
        btn.click(friendly(handler), run, msg, api_name=f"run_{action}")

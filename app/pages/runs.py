"""Runs page, live: every run with its state; for the selected run, progress in words (each phase, the time left),
alerts in words (displacement, overfitting, KL, NaN), the actions its state allows, and the charts that apply to its
algorithm, each with a sentence saying what it shows (app/chart_guide.py), optionally smoothed; plus the training
examples with the most extreme m_θ. Refreshes every 2 seconds."""
from __future__ import annotations

import html
import re
from pathlib import Path

import gradio as gr
import pandas as pd

from app import chart_guide, charts
from app.context import AppContext, UserError, admin_only, require_admin
from app.handlers import handler
from app.tables import shown
from app.train_guide import duration, plan
from labeling import evaluation, runs
from storage import rundir
from training import algorithms


NO_RUNS = "No runs yet: start one on the Train page."
NO_VALUES = "No per-example values yet: they appear after the first training step."


JOB_KINDS = {"generate": "answers to label", "evaluate": "scoring on the evaluation set",
             "score": "scores for the labeling queue's order"}


def status_line(ctx: AppContext, run_id: str | None) -> str:
    if not run_id:
        return "Pick a run."
    db = ctx.db.reader()       # read on the page's own cursor: a refresh never holds up a label being saved
    r = runs.run(db, run_id)
    if r is None:
        return f"There is no run {run_id}."
    state, error = r["state"], r["error"]
    st = rundir.read_status(r["run_dir"]) or {}
    title = html.escape(r["name"] or run_id)          # typed by a person: shown as text
    title = f"**{title}**" + ("" if run_id in title else f" <small>{run_id}</small>")
    algo = algorithms.ALGORITHMS.get(r["algorithm"] or "")
    what = algo.title if algo and r["kind"] == "train" else JOB_KINDS.get(r["kind"], r["kind"])
    parts = [f"{title} ({what}) is **{state}**: "
             + progress_words(state, r["step"] or 0, r["total_steps"], st)]
    if r["origin"] == "external":
        parts.append("Started outside the app (a Flower coordinator): followed here, stopped where it was started; "
                     "per-example values (m_θ) stay at the sites.")
    if st.get("note"):       # how the job adapted to the model, e.g. padding where it cannot pack prompts
        parts.append(f"ℹ️ {st['note']}")
    if error:
        parts.append(f"❌ {error}")
    for a in charts.alerts(db, run_id) + [w for w in [overfitting(db, r)] if w]:
        parts.append(f"⚠️ {a}")
    if r["kind"] == "train":   # the verdict on the evaluation set, against the base model (labeling/evaluation.py)
        parts.append(f"**Verdict:** {evaluation.verdict_text(db, run_id)}")
    return "  \n".join(parts)


def progress_words(state: str, step: int, total: int | None, status: dict) -> str:
    """Where a run is, in words: the step, and while it runs what it is doing and the time left. A pass with its
    own progress (reference log-probs, answers to held-out prompts) is said instead of the training ETA, which
    would read "about 0 s left" there."""
    head = f"step {step} of {total or '?'}"
    if state != "running":
        return head
    phase = status.get("phase") or ""
    if re.search(r"\b(\d+) of \1 answers", phase):   # a reference pass that has ended ("40 of 40 answers"): the
        phase = "training"                            # job goes on with the steps without saying so
    if phase not in ("", "training", "starting", "generating"):   # those go by steps and the ETA
        return phase if not step else f"{head}; {phase}"
    if not step:
        return "starting: loading the model and the data"
    if total and step >= total:
        return f"{head}; finishing: scoring held-out examples and saving the model"
    if status.get("eta_s") is not None:
        return f"{head}, about {duration(status['eta_s'])} left"
    return head


def overfitting(db, r: dict) -> str | None:
    """The overfitting warning for a pair-trained run (app/chart_guide.py) from its settings and data size."""
    import json

    if r["algorithm"] not in chart_guide.PAIRS or not r["run_dir"]:
        return None
    path = Path(r["run_dir"]) / rundir.TRAIN_DATA
    if not path.exists():
        return None
    import pyarrow.parquet as pq

    cfg = json.loads(r["config"] or "{}")
    steps, passes = plan(pq.ParquetFile(path).metadata.num_rows, "pairs", cfg.get("batch_size", 4),
                         cfg.get("grad_accum", 1), cfg.get("max_steps", 0), cfg.get("epochs", 1.0), cfg.get("gpus", 1))
    acc = charts.scalars(db, [r["id"]], ["rewards/accuracies"])
    return chart_guide.overfitting_warning(list(zip(acc["step"], acc["value"])), steps / passes if passes else 0,
                                           r["total_steps"] or steps)


def figures(ctx: AppContext, run_id: str | None, smooth: bool = False) -> list[tuple[bool, object]]:
    """Per panel of app/chart_guide.py: whether it applies to the run's algorithm, and its figure (None where it
    does not: no empty charts); with `smooth`, every line as its EMA."""
    db = ctx.db.reader()
    r = runs.run(db, run_id) if run_id else None
    out = []
    for panel in chart_guide.PANELS:
        if r is None or not panel.applies(r["algorithm"]):
            out.append((False, None))
            continue
        fig = panel.draw(db, run_id)
        out.append((True, chart_guide.smoothed(fig) if smooth else fig))
    return out


def offered(state: str | None, origin: str | None = None, kind: str | None = "train") -> dict[str, bool]:
    """Which run actions apply in a state: stop a queued or running run, resume a stopped or failed one, delete
    what is not running, start a new run from a training run that ended, export a finished training run."""
    inside = origin != "external"       # a Flower run is stopped and resumed where it was started
    ended = state in ("stopped", "failed", "finished")
    return {"stop": inside and state in ("queued", "running"), "resume": inside and state in ("stopped", "failed"),
            "delete": state not in (None, "running", "stopping"), "new": kind == "train" and ended,
            "export": kind == "train" and state == "finished"}


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
    return ctx.offer_download(out["zip"], user)     # for this admin only


def build(ctx: AppContext) -> None:
    table = gr.Dataframe(shown(runs.run_table(ctx.db.reader()), NO_RUNS), interactive=False, label="Runs",
                         elem_id="runs-table")
    with gr.Row():
        run = gr.Dropdown(choices=[], label="Run", elem_id="runs-select", scale=2, allow_custom_value=True)
        b_stop = gr.Button("Stop", size="sm", elem_id="runs-stop", visible=False)
        b_resume = gr.Button("Resume", size="sm", elem_id="runs-resume", visible=False)
        b_new = gr.Button("New run from this one", size="sm", elem_id="runs-new", visible=False)
        b_delete = gr.Button("Delete", size="sm", variant="stop", elem_id="runs-delete", visible=False)
    with gr.Row(visible=False) as export_row:
        exp_kind = gr.Radio([("LoRA adapter (PEFT)", "adapter"), ("Merged model (Hugging Face)", "merged")],
                            value="adapter", label="Export (admin)", scale=2)
        b_export = gr.Button("Export as zip", size="sm", scale=1, elem_id="runs-export")
        exp_file = gr.File(label="Download", scale=2)
    msg = gr.Markdown()
    status = gr.Markdown(elem_id="runs-status")
    with gr.Row():
        smooth = gr.Checkbox(value=False, label="Smooth the curves (EMA)", elem_id="runs-smooth",
                             info="Each point blends in the recent ones: the trend shows through step-to-step noise.")
        with gr.Accordion("What the charts' words mean", open=False):
            gr.Markdown(chart_guide.glossary_markdown(), elem_id="runs-glossary")
    cells, plots = [], []                    # one column per chart: the chart and its sentence
    panels = chart_guide.PANELS
    for start in range(0, len(panels), 2):
        with gr.Row():
            for panel in panels[start:start + 2]:
                with gr.Column(visible=False, elem_id=f"runs-cell-{panel.key}") as cell:
                    plots.append(gr.Plot(elem_id=f"runs-plot-{panel.key}", show_label=False))
                    gr.Markdown(panel.explanation, elem_classes="runs-explain")
                cells.append(cell)
    gr.Markdown("**Examples with the most extreme m_θ at the latest step** (their prompt, answer and labels)")
    extreme = gr.Dataframe(shown(None, NO_VALUES), interactive=False, elem_id="runs-extreme", wrap=True)
    timer = gr.Timer(2.0)

    def choices():
        return runs.run_ids(ctx.db.reader())

    @handler(ctx)
    def refresh(user, run_id, smooth_on):
        db = ctx.db.reader()
        ids = choices()
        if run_id not in ids:
            run_id = ids[0] if ids else None
        r = runs.run(db, run_id) if run_id else None
        can = offered(r["state"] if r else None, r["origin"] if r else None, r["kind"] if r else None)
        figs = figures(ctx, run_id, smooth_on)
        # an annotator sees only their own labels there, never another annotator's votes
        extremes = charts.extreme_instances(db, run_id, only=None if user.is_admin else user.name) if run_id else None
        return (shown(runs.run_table(db), NO_RUNS),
                gr.update(choices=ids, value=run_id), status_line(ctx, run_id),
                *(gr.update(visible=can[a]) for a in ("stop", "resume", "new", "delete", "export")),
                *(gr.update(visible=on) for on, _ in figs), *(fig if on else gr.update() for on, fig in figs),
                shown(extremes, NO_VALUES))

    outputs = [table, run, status, b_stop, b_resume, b_new, b_delete, export_row, *cells, *plots, extreme]
    timer.tick(refresh, [run, smooth], outputs, api_name=False, show_progress="hidden")
    run.select(refresh, [run, smooth], outputs, api_name=False)
    smooth.change(refresh, [run, smooth], outputs, api_name=False)

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

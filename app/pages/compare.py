"""Compare page: overlaid curves, config diff, data diff between snapshots, held-out metrics, side-by-side
answers, and blind A/B evaluation: pair tasks from two runs' answers, labeled on the Label page, with the
win rate and its 95% interval."""
from __future__ import annotations

import json
import math
from pathlib import Path

import gradio as gr
import pandas as pd

from app import charts
from app.context import AppContext, UserError, friendly
from storage import rundir
from storage.snapshots import snapshot_diff


def config_diff(ctx: AppContext, run_ids: list[str]) -> pd.DataFrame:
    cfgs = {}
    for rid in run_ids:
        row = ctx.db.fetchone("SELECT config FROM runs WHERE id = ?", [rid])
        if row:
            cfgs[rid] = _flat(json.loads(row[0]))
    keys = sorted({k for c in cfgs.values() for k in c})
    rows = [{"setting": k, **{rid: str(c.get(k)) for rid, c in cfgs.items()}} for k in keys
            if len({str(c.get(k)) for c in cfgs.values()}) > 1]
    return pd.DataFrame(rows, columns=["setting", *cfgs])


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def data_diff(ctx: AppContext, run_ids: list[str]) -> str:
    if len(run_ids) < 2:
        return ""
    snaps = [ctx.db.scalar("SELECT snapshot_id FROM runs WHERE id = ?", [r]) for r in run_ids[:2]]
    if not all(snaps):
        return "Data diff: one of the runs has no snapshot."
    if snaps[0] == snaps[1]:
        return f"**Data:** both runs trained on the same snapshot ({snaps[0]})."
    d = snapshot_diff(ctx.db, snaps[0], snaps[1])
    return (f"**Data from {run_ids[0]} to {run_ids[1]}:** {len(d['added'])} example(s) added, {len(d['changed'])} "
            f"changed (a label flipped), {len(d['removed'])} removed ({d['n_a']} → {d['n_b']}).")


def heldout_table(ctx: AppContext, run_ids: list[str]) -> pd.DataFrame:
    rows = []
    for rid in run_ids:
        ev = ctx.db.df("""SELECT name, arg_max(value, step) AS last, arg_min(value, step) AS first FROM run_scalars
                          WHERE run_id = ? AND split = 'eval' GROUP BY name""", [rid])
        m = {r["name"]: r for r in ev.to_dict("records")}
        tr = ctx.db.scalar("SELECT arg_max(value, step) FROM run_scalars WHERE run_id = ? AND name = 'm_theta' "
                           "AND split = 'train'", [rid])
        fmt = lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 4)  # noqa: E731
        rows.append({"run": rid,
                     "held-out accuracy (implicit reward)": fmt(m.get("eval/accuracy", {}).get("last")),
                     "held-out likelihood accuracy: base → run": (
                         f"{fmt(m['eval/likelihood_accuracy']['first'])} → {fmt(m['eval/likelihood_accuracy']['last'])}"
                         if "eval/likelihood_accuracy" in m else None),
                     "held-out mean m_θ": fmt(m.get("eval/m_theta", {}).get("last")),
                     "train mean m_θ (last step)": fmt(tr)})
    return pd.DataFrame(rows)


def generations(ctx: AppContext, run_ids: list[str]) -> pd.DataFrame:
    frames = []
    for rid in run_ids:
        d = ctx.db.scalar("SELECT run_dir FROM runs WHERE id = ?", [rid])
        p = Path(d or "") / rundir.GENERATIONS
        if d and p.exists():
            g = pd.read_parquet(p)
            frames.append(g[g["sample"] == 0][["prompt", "response"]].rename(columns={"response": rid}).set_index("prompt"))
    if not frames:
        return pd.DataFrame(columns=["prompt"])
    return pd.concat(frames, axis=1, join="inner").reset_index()


def create_ab_tasks(ctx: AppContext, user, run_a: str, run_b: str) -> str:
    """Blind pair tasks on the prompts both runs answered; each answer remembers its run (responses.origin)."""
    if not user.is_admin:
        raise UserError(f"{user.name} is an annotator; only an admin can create evaluation tasks.")
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


def win_rate(ctx: AppContext, run_a: str, run_b: str) -> dict:
    """Share of decided A/B pairs that run_a won (ties count half) with a Wilson 95% interval."""
    df = ctx.db.df("""
        WITH cur AS (SELECT task_id, annotator, arg_max(value, id) AS value FROM annotations GROUP BY task_id, annotator)
        SELECT cur.value, ra.origin AS oa, rb.origin AS ob FROM cur JOIN tasks t ON t.id = cur.task_id
        JOIN responses ra ON ra.id = t.response_a JOIN responses rb ON rb.id = t.response_b
        WHERE t.kind = 'pair' AND cur.value IN ('a', 'b', 'tie')
          AND ((ra.origin = ? AND rb.origin = ?) OR (ra.origin = ? AND rb.origin = ?))""",
                   [f"run:{run_a}", f"run:{run_b}", f"run:{run_b}", f"run:{run_a}"])
    if df.empty:
        return {"n": 0, "rate": None, "low": None, "high": None}
    wins = ((df.value == "a") & (df.oa == f"run:{run_a}")) | ((df.value == "b") & (df.ob == f"run:{run_a}"))
    score = wins.astype(float) + 0.5 * (df.value == "tie")
    n, p = len(df), float(score.mean())
    z = 1.96
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return {"n": n, "rate": p, "low": max(0.0, centre - half), "high": min(1.0, centre + half)}


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

    @friendly
    def on_load():
        return gr.update(choices=[r[0] for r in ctx.db.reader().fetchall(
            "SELECT id FROM runs WHERE kind = 'train' ORDER BY created_at DESC")])

    @friendly
    def on_compare(ids):
        ids = ids or []
        if not ids:
            raise UserError("Pick at least one run.")
        db = ctx.db.reader()
        wr = ""
        if len(ids) >= 2:
            w = win_rate(ctx, ids[0], ids[1])
            wr = (f"  \n**Blind A/B:** {ids[0]} wins {w['rate']:.0%} of {w['n']} judged pairs "
                  f"(95% interval {w['low']:.0%}–{w['high']:.0%})." if w["n"] else
                  "  \n**Blind A/B:** no judged pairs yet.")
        return (data_diff(ctx, ids) + wr, charts.loss_chart(db, ids),
                charts.line_chart(db, ids, ["m_theta"], "Mean m_θ"),
                charts.accuracy_chart(db, ids), charts.line_chart(db, ids, ["rewards/margins"], "Reward margin"),
                heldout_table(ctx, ids), config_diff(ctx, ids), generations(ctx, ids))

    @friendly
    def on_ab(ids, request: gr.Request):
        if not ids or len(ids) < 2:
            raise UserError("Pick two runs.")
        return create_ab_tasks(ctx, ctx.user(request), ids[0], ids[1])

    b_load.click(on_load, None, pick, api_name=False)
    gr.Timer(5.0).tick(on_load, None, pick, api_name=False, show_progress="hidden")
    b_go.click(on_compare, pick, [data_md, p_loss, p_m, p_acc, p_margin, held, cfg, gens], api_name="compare")
    b_ab.click(on_ab, pick, ab_msg, api_name="compare_ab")
    return lambda demo: demo.load(on_load, None, pick, api_name=False)

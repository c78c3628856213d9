"""Starting a blind human evaluation and showing its results, for the Evaluate tab and the Compare page.

Starting one (admins only) queues one generate job per model on the same evaluation prompts; the supervisor turns
their answers into blind pair tasks when the last one finishes (labeling/blind_eval.py). Results name models by
what people called them; who judged what is read only by `judges`, which refuses annotators.
"""
from __future__ import annotations

import html
import json

import pandas as pd

from app.chat import model_choices
from app.context import AppContext, User, UserError, admin_only, require_admin
from app.launch import create_run
from labeling import blind_eval
from labeling.queue import LabelError
from training.config import JobConfig

DEFAULT_PROMPTS = 30
TEMPERATURE = 0.7    # sampled, as people will use the models; the same seed for every model


def choices(ctx: AppContext) -> list[tuple[str, str]]:
    """(label, key) of every model an evaluation can include: the base model and finished runs with a model."""
    return [(s.label, s.key) for s in model_choices(ctx)]


@admin_only("start a blind evaluation")
def start(ctx: AppContext, user: User, models: list[str], n_prompts=DEFAULT_PROMPTS, name: str = "") -> str:
    """Queue a generate job per model over `n_prompts` prompts of the evaluation set; returns a sentence."""
    models = list(dict.fromkeys(m for m in models or [] if m))
    if len(models) < 2:
        raise UserError("Pick at least two models to compare (runs and/or the base model).")
    try:
        n = int(n_prompts)
    except (TypeError, ValueError):
        raise UserError("Number of prompts: write a whole number, e.g. 30.") from None
    if not 1 <= n <= 1000:
        raise UserError(f"Number of prompts: {n} is outside 1-1000.")
    specs = {s.key: s for s in model_choices(ctx)}
    missing = [m for m in models if m not in specs]
    if missing:
        raise UserError(f"The model {missing[0]!r} is not available (only the base model and finished runs are).")
    try:
        prompts = blind_eval.draw_prompts(ctx.db, n)
    except LabelError as e:
        raise UserError(str(e)) from None
    eid = blind_eval.new_id()
    jobs = {}
    with ctx.db.lock:   # the supervisor must know these jobs are the evaluation's before it sees one end
        for m in models:
            s = specs[m]
            cfg = JobConfig(kind="generate", model=s.base_path, adapter_init=s.adapter_path, num_samples=1,
                            temperature=TEMPERATURE)
            jobs[m] = create_run(ctx, cfg, prompts, name=f"answers of {blind_eval.model_name(ctx.db, m)} for {eid}")
        blind_eval.record(ctx.db, eid, models, len(prompts), user.name, jobs, name or None)
    return (f"Evaluation **{eid}** started: {len(models)} models answer {len(prompts)} evaluation prompts; the "
            f"blind pairs appear in the Label page's Evaluate mode when the answers are written.")


def status_table(ctx: AppContext) -> pd.DataFrame:
    rows = [{"evaluation": e["id"], "name": e["name"] or "",
             "models": ", ".join(blind_eval.model_name(ctx.db.reader(), m) for m in json.loads(e["models"])),
             "prompts": e["n_prompts"], "state": e["error"] or e["state"], "pairs": e["tasks"],
             "judged": e["judged"]} for e in blind_eval.evaluations(ctx.db.reader())]
    return pd.DataFrame(rows, columns=["evaluation", "name", "models", "prompts", "state", "pairs", "judged"])


def results_markdown(ctx: AppContext, evaluation_id: str | None = None, models: list[str] | None = None) -> str:
    """Each pair's win rate as a sentence, and the leaderboard with three or more models; `models` keeps only
    pairs among these (the Compare page's selection)."""
    r = blind_eval.results(ctx.db.reader(), evaluation_id)
    rates = [(w, s) for w, s in zip(r["win_rates"], r["sentences"])
             if not models or (w["model"] in models and w["opponent"] in models)]
    if not rates:
        return "No blind judgments yet: judged pairs appear here (Label page, Evaluate mode)."
    lines = ["**Blind evaluation** (ties and both-bad count half):", *[f"- {html.escape(s)}" for _, s in rates]]
    board = [b for b in r["leaderboard"] if not models or b["model"] in models]
    if board:
        lines += ["", "**Leaderboard** (Bradley-Terry rating, Chatbot Arena style; base model = 1000, 95% bootstrap "
                  "interval; 120 points apart = the higher one preferred 2 times in 3):", "",
                  "| # | model | rating | 95% interval | judgments | won |", "|---|---|---|---|---|---|"]
        lines += [f"| {i} | {html.escape(b['model_name'])} | {b['rating']:.0f} | {b['low']:.0f}–{b['high']:.0f} | {b['n']} | "
                  f"{100 * b['score']:.0f}% |" for i, b in enumerate(board, 1)]
    return "\n".join(lines)


def judges(ctx: AppContext, user: User, evaluation_id: str | None = None) -> pd.DataFrame:
    """Judgments per annotator, for admins only: who judged what stays hidden from annotators."""
    require_admin(user, "see who judged what")
    return blind_eval.judges(ctx.db.reader(), evaluation_id)

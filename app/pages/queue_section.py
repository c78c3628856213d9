"""The Data page's queue-order section (admin): which task each labeling mode serves first (labeling/queue_order.py),
and what the "model unsure first" order stands on (app/queue_scores.py). Annotators never see the scores."""
from __future__ import annotations

from html import escape

import gradio as gr

from app import queue_scores
from app.context import AppContext, User, UserError, admin_only
from app.handlers import handler
from labeling import queue_order

MODES = {"pair": "Pairs", "single": "Good / bad", "write": "Write"}
HELP = ("**Random** serves tasks others started first, then fresh ones. **Model unsure first** serves the tasks the "
        "newest finished run (the base model before any) is least sure about: scored in the background, never shown "
        "to annotators, and re-scored when a run finishes. **Disagreement first** serves tasks whose votes split, and "
        "gives a task whose votes are tied one more label to break the tie.")


def summary(ctx: AppContext, user: User) -> str:
    if not user.is_admin:
        return "Only admins set the queue order."
    lines = [f"- {MODES[k]}: **{queue_order.ORDERS[o]}**" for k, o in queue_order.orders(ctx.db).items()]
    kinds = queue_scores.modes_to_score(ctx.db)
    if kinds:
        s = queue_scores.status(ctx.db)
        open_n = queue_scores.n_open(ctx.db, kinds)
        by = escape(s["name"] or "")
        lines.append(f"\nScores: {s['open_scored']} of {open_n} open tasks scored"
                     + (f", by the job *{by}* ({s['scored_at']:%Y-%m-%d %H:%M})" if s["run_id"] else "")
                     + (f"; a score job is queued or running ({s['pending']})." if s["pending"] else ".")
                     + (" Tasks without a score come after the scored ones." if s["open_scored"] < open_n else ""))
    return "\n".join(lines)


@admin_only("set the queue order")
def set_order(ctx: AppContext, user: User, mode: str, order: str) -> str:
    kind = next((k for k, name in MODES.items() if name == mode or k == mode), None)
    try:
        queue_order.set_order(ctx.db, kind or mode, order)
    except ValueError as e:
        raise UserError(str(e)) from None
    text = f"{MODES[kind]} now serve: {queue_order.ORDERS[order]}."
    if order == "unsure":
        run_id = queue_scores.queue_scoring(ctx)
        text += (f" Score job **{run_id}** queued; until it finishes the queue serves in the random order."
                 if run_id else " A score job is already waiting, or no task is open.")
    return text


@admin_only("re-score the queue")
def rescore(ctx: AppContext, user: User) -> str:
    if not queue_scores.modes_to_score(ctx.db):
        raise UserError("No mode is ordered by the model: pick 'Model unsure first' for one first.")
    run_id = queue_scores.queue_scoring(ctx)
    return f"Score job **{run_id}** queued." if run_id else "A score job is already waiting, or no task is open."


def build(ctx: AppContext):
    """The accordion; returns what the page's load and refresh call to fill it, and its outputs."""
    with gr.Accordion("Queue order (admin): which tasks annotators get first", open=False):
        gr.Markdown(HELP)
        q_md = gr.Markdown(elem_id="data-queue-summary")
        with gr.Row():
            q_mode = gr.Dropdown(list(MODES.values()), value="Pairs", label="Labeling mode", elem_id="data-queue-mode")
            q_order = gr.Radio([(label, key) for key, label in queue_order.ORDERS.items()], value="random",
                               label="Order", elem_id="data-queue-order")
            q_set = gr.Button("Set order", size="sm", elem_id="data-queue-set")
            q_rescore = gr.Button("Re-score now", size="sm", elem_id="data-queue-rescore")
        q_msg = gr.Markdown(elem_id="data-queue-result")

    @handler(ctx)
    def on_queue(user):
        return summary(ctx, user)

    @handler(ctx)
    def on_set(user, mode, order):
        return set_order(ctx, user, mode, order)

    @handler(ctx)
    def on_rescore(user):
        return rescore(ctx, user)

    q_set.click(on_set, [q_mode, q_order], q_msg, api_name="queue_order_set").success(on_queue, None, q_md,
                                                                                       api_name=False)
    q_rescore.click(on_rescore, None, q_msg, api_name="queue_rescore").success(on_queue, None, q_md, api_name=False)
    return on_queue, [q_md]

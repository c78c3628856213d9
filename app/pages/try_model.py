"""Try page: ask the base model or a finished run's model something, or two of them side by side (blind), watch
the answer stream in shaded by the model's confidence, and turn an opinion about it into training data on the
spot: 👍/👎 becomes a good/bad label (KTO), "left/right is better" a pair label (DPO), and "write the right answer"
an SFT example. They are stored exactly like Label-page decisions (tasks + annotations, the annotator, their
site), with source 'playground' and the run that produced the answer. A side-by-side pick measures the two models,
so it is a blind-evaluation judgment (labeling/blind_eval.py): counted in their win rate, not trained on unless an
admin asks.

The handlers below are plain functions of (ctx, user, state, inputs); `build` only lays out and wires them.
"""
from __future__ import annotations

import html
import random
from typing import Iterator

import gradio as gr

from app.chat import Answer, ModelCache, ModelSpec, answer_html, confidence_note, model_choices, stream_answer
from app.context import AppContext, User, UserError, admin_only
from app.handlers import handler
from labeling import blind_eval
from labeling import queue as Q

THRESHOLD_KEY = "low_confidence_logp"
# Mean log-prob per token. SmolLM2-135M-Instruct measured here: greedy answers -0.6 to -0.7, sampled at T=0.7
# -0.6 to -1.3; below -1.5 the answer has wandered off what the model knows.
DEFAULT_THRESHOLD = -1.5
NO_MODEL = ("There is no model to talk to yet: start the app with ./run.sh (it sets up the base model) or finish a "
            "training run.")


def threshold(ctx: AppContext) -> float:
    return float(ctx.db.get_setting(THRESHOLD_KEY, str(DEFAULT_THRESHOLD)))


@admin_only("change the low-confidence threshold")
def set_threshold(ctx: AppContext, user: User, value) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError("The threshold must be a number, e.g. -1.5 (mean log-probability per token).") from None
    if not -20 <= v <= 0:
        raise UserError(f"The threshold {v} is outside -20..0: it is a mean log-probability per token.")
    ctx.db.set_setting(THRESHOLD_KEY, str(v))
    return f"Answers with a mean log-probability per token below {v:.2f} are now flagged as low confidence."


def find_spec(ctx: AppContext, key: str | None) -> ModelSpec:
    specs = {s.key: s for s in model_choices(ctx)}
    if not specs:
        raise UserError(NO_MODEL)
    if key not in specs:
        raise UserError(f"The model {key!r} is not available (only the base model and finished runs are).")
    return specs[key]


# -- asking ---------------------------------------------------------------------------------------------------------
def pick_models(ctx: AppContext, first: str | None, second: str | None, side_by_side: bool) -> list[str]:
    """The model keys to ask. An empty pick (Ask clicked before the page filled its model lists) means the
    default the lists would show: the first model, and for side by side the next one."""
    if first and (second or not side_by_side):
        return [first, second] if side_by_side else [first]
    keys = [s.key for s in model_choices(ctx)]
    if not keys:
        raise UserError(NO_MODEL)
    first = first or keys[0]
    second = second or next((k for k in keys if k != first), None)
    if side_by_side and not second:
        raise UserError("Side by side needs two models: finish a training run to compare it with the base model.")
    return [first, second] if side_by_side else [first]


def ask(ctx: AppContext, cache: ModelCache, prompt: str, keys: list[str], temperature: float = 0.7,
        top_p: float = 0.95, max_new_tokens: int = 128, rng: random.Random | None = None,
        seed: int | None = None) -> Iterator[tuple[dict, list[Answer]]]:
    """Stream one answer per model in `keys` (two: interleaved token by token). Yields (state, answers in shown
    order). With two models the left/right order is random, so the comparison is blind until revealed."""
    prompt = (prompt or "").strip()
    if not prompt:
        raise UserError("Type a question first.")
    keys = [k for k in keys if k]
    if len(keys) == 2 and keys[0] == keys[1]:
        raise UserError("Pick two different models to compare side by side.")
    specs = [find_spec(ctx, k) for k in keys]
    if not 0 <= float(temperature) <= 2 or not 0 < float(top_p) <= 1 or not 1 <= int(max_new_tokens) <= 2048:
        raise UserError("Settings out of range: temperature 0-2, top-p above 0 up to 1, max new tokens 1-2048.")
    order = [0, 1] if len(specs) == 2 else [0]
    if len(specs) == 2:
        (rng or random.Random()).shuffle(order)
    state = {"prompt": prompt, "order": order, "done": False,
             "models": [{"key": s.key, "label": s.label, "run_id": s.run_id} for s in specs],
             "texts": ["" for _ in specs], "mean_logp": [None for _ in specs]}
    try:
        entries = [cache.get(s) for s in specs]
    except (OSError, ValueError) as e:
        raise UserError(f"Could not load the model: {e}") from None
    streams = [stream_answer(e, s.key if s.adapter_path else None, prompt, float(temperature), float(top_p),
                             int(max_new_tokens), seed=None if seed is None else seed + i)
               for i, (e, s) in enumerate(zip(entries, specs))]
    answers = [Answer() for _ in specs]
    live = set(range(len(specs)))
    while live:
        for i in sorted(live):
            try:
                answers[i] = next(streams[i])
            except StopIteration:
                live.discard(i)
        for i, a in enumerate(answers):
            state["texts"][i], state["mean_logp"][i] = a.text, a.mean_logp
        state["answers"] = list(answers)         # in model order: redrawn shaded or as markdown on request
        state["done"] = all(a.done for a in answers)
        yield state, [answers[i] for i in order]


def _answer_at(state: dict | None, position: int) -> tuple[str, dict]:
    """(text, model) of the answer shown at `position` (0 = left or only)."""
    if not state or not state.get("texts"):
        raise UserError("Ask something first: there is no answer to rate yet.")
    if not state.get("done"):
        raise UserError("The answer is still being written; rate it when it is finished.")
    if position >= len(state["order"]):
        raise UserError("There is no second answer: switch on side by side first.")
    i = state["order"][position]
    if not state["texts"][i].strip():
        raise UserError("That answer is empty; ask again or write the right answer instead.")
    return state["texts"][i], state["models"][i]


def _save(ctx: AppContext, user: User, kind: str, prompt: str, responses: list[str], value: str,
          run_id: str | None, origins: list[str], text: str | None = None, shown_order: str | None = None,
          models: list[str] | None = None) -> int:
    """`models` (the keys of a side-by-side pair's two models) makes the task a blind-evaluation one."""
    try:
        tid = Q.create_task(ctx.db, kind, prompt, responses, site=user.site, source="playground",
                            run_id=run_id, origins=origins, purpose="evaluation" if models else "label")
        if models:
            blind_eval.add_task(ctx.db, blind_eval.TRY, tid, *models)
        Q.make_room(ctx.db, tid, user.name)
        return Q.save_annotation(ctx.db, tid, user.name, value, text=text, shown_order=shown_order,
                                 source="playground", run_id=run_id, site=user.site)
    except Q.LabelError as e:
        raise UserError(str(e)) from None


def rate(ctx: AppContext, user: User, state: dict | None, position: int, value: str) -> str:
    """👍/👎 on one answer: a single task with this annotator's good/bad label (KTO data)."""
    if value not in ("good", "bad"):
        raise UserError(f"{value!r} is not a rating (good or bad).")
    text, model = _answer_at(state, position)
    aid = _save(ctx, user, "single", state["prompt"], [text], value, model["run_id"], [f"playground:{model['key']}"])
    side = "" if len(state["order"]) == 1 else (" left", " right")[position]
    return f"Saved: the{side} answer is {value} (label #{aid}, counted on the Data page)."


def prefer(ctx: AppContext, user: User, state: dict | None, choice: str) -> str:
    """'Left/right is better', tie or both bad on a side-by-side pair: a blind-evaluation judgment. The task keeps
    the models in the order they were picked (a = first model); shown_order maps the blind sides back."""
    if not state or len(state.get("order", [])) != 2:
        raise UserError("Compare two models side by side first.")
    for position in (0, 1):
        _answer_at(state, position)
    if state["texts"][0].strip() == state["texts"][1].strip():
        raise UserError("Both answers are the same text: there is nothing to prefer. Ask again.")
    shown_order = "".join("ab"[i] for i in state["order"])
    value = Q.pair_value_from_shown(choice, shown_order)
    winner = {"a": state["models"][0], "b": state["models"][1]}.get(value)
    aid = _save(ctx, user, "pair", state["prompt"], state["texts"], value, winner["run_id"] if winner else None,
                [f"playground:{m['key']}" for m in state["models"]], shown_order=shown_order,
                models=[m["key"] for m in state["models"]])
    said = {"1": "left is better", "2": "right is better", "3": "a tie", "0": "both bad"}[choice]
    return (f"Saved: {said} (blind-evaluation judgment #{aid}: it counts in the models' win rate, not as training "
            "data). Reveal to see which model was which.")


def write_answer(ctx: AppContext, user: User, state: dict | None, text: str) -> str:
    """'Write the right answer': an SFT example for this prompt (the model's answer kept as the draft)."""
    if not state or not state.get("prompt"):
        raise UserError("Ask something first: the written answer needs the question it answers.")
    if not state.get("done"):
        raise UserError("The answer is still being written; wait for it to finish first.")
    if not (text or "").strip():
        raise UserError("The answer box is empty: write the right answer first.")
    i = state["order"][0]
    model = state["models"][i]
    draft = [state["texts"][i]] if state["texts"][i].strip() else []
    aid = _save(ctx, user, "write", state["prompt"], draft, "written", model["run_id"],
                [f"playground:{model['key']}"], text=text.strip())
    return f"Saved your answer as a training example (#{aid})."


def reveal(state: dict | None) -> str:
    if not state or len(state.get("order", [])) != 2:
        return "Nothing to reveal: compare two models side by side first."
    left, right = (html.escape(state["models"][i]["label"]) for i in state["order"])   # run names are typed in
    return f"**Left:** {left} · **Right:** {right}"


# -- layout ---------------------------------------------------------------------------------------------------------
def answer_column(k: int, title: str):
    """One answer's heading, text, confidence line and 👍/👎 (k = 1 left/alone, 2 right)."""
    head = gr.Markdown(title)
    out = gr.HTML(elem_id=f"try-answer-{k}", elem_classes=["preflab-card"])
    conf = gr.Markdown(elem_id=f"try-confidence-{k}")
    with gr.Row():
        up = gr.Button("👍 Good", size="sm", elem_id=f"try-good-{k}")
        down = gr.Button("👎 Bad", size="sm", elem_id=f"try-bad-{k}")
    return head, out, conf, up, down


def build(ctx: AppContext):
    cache = ModelCache()
    state = gr.State(None)
    gr.Markdown("Ask a model a question from your work. Rate the answer, or write the right one: it becomes "
                "training data like a label on the Label page. While an answer is written, and with \"Shade words\" "
                "ticked, redder text = the model was less sure (hover a word for its probability). Each question "
                "is answered on its own, without earlier ones, so what you rate is exactly what training will see.")
    with gr.Row():
        m1 = gr.Dropdown([], label="Model", scale=3, elem_id="try-model-1")
        both = gr.Checkbox(label="Side by side (blind)", value=False, scale=1, elem_id="try-side-by-side")
        m2 = gr.Dropdown([], label="Second model", scale=3, visible=False, elem_id="try-model-2")
        refresh = gr.Button("Refresh models", size="sm", scale=1)
    with gr.Accordion("Generation settings", open=False):
        with gr.Row():
            temperature = gr.Slider(0, 1.5, value=0.7, step=0.05, label="Temperature (0 = always the likeliest)")
            top_p = gr.Slider(0.05, 1, value=0.95, step=0.05, label="Top-p")
            max_new = gr.Slider(8, 512, value=128, step=8, label="Max new tokens")
    prompt = gr.Textbox(label="Your question", lines=3, elem_id="try-prompt")
    with gr.Row():
        b_ask = gr.Button("Ask", variant="primary", elem_id="try-ask", scale=3)
        shade = gr.Checkbox(value=False, label="Shade words by the model's confidence", scale=1, elem_id="try-shade",
                            info="Off: the answer as formatted text (bold, lists, code), like the Label page.")
    with gr.Row():
        with gr.Column():
            head1, out1, conf1, up1, down1 = answer_column(1, "**Answer**")
        with gr.Column(visible=False) as col2:
            _, out2, conf2, up2, down2 = answer_column(2, "**Right answer**")
    with gr.Row(visible=False) as pair_row:
        p1 = gr.Button("Left is better", elem_id="try-left-better")
        p2 = gr.Button("Right is better", elem_id="try-right-better")
        p3 = gr.Button("Tie", elem_id="try-tie")
        p0 = gr.Button("Both bad", elem_id="try-both-bad")
        b_reveal = gr.Button("Reveal which is which", elem_id="try-reveal")
    revealed = gr.Markdown(elem_id="try-revealed")
    with gr.Accordion("Write the right answer", open=False):
        written = gr.Textbox(label="The answer it should have given (starts from the model's answer)", lines=6,
                             elem_id="try-write")
        b_write = gr.Button("Save as a training example", elem_id="try-write-save")
    note = gr.Markdown(elem_id="try-note")
    with gr.Accordion("Low-confidence threshold (admin)", open=False):
        thr = gr.Number(label="Flag answers whose mean log-probability per token is below", value=DEFAULT_THRESHOLD)
        b_thr = gr.Button("Save threshold", elem_id="try-threshold-save")

    @handler(ctx)
    def on_models(user, first, second):
        specs = model_choices(ctx)
        choices = [(s.label, s.key) for s in specs]
        keys = [s.key for s in specs]
        a = first if first in keys else (keys[0] if keys else None)
        b = second if second in keys and second != a else next((k for k in keys if k != a), None)
        return gr.update(choices=choices, value=a), gr.update(choices=choices, value=b), threshold(ctx)

    @handler(ctx)
    def on_ask(user, text, first, second, side_by_side, t, p, n, shade):
        limit = threshold(ctx)
        keys = pick_models(ctx, first, second, side_by_side)
        first_update = True
        for st, shown in ask(ctx, cache, text, keys, t, p, n):
            # the confidence note and the draft come once the answer is complete; the old note and reveal are
            # cleared once, so a "Saved" message from a click during streaming is not wiped by the next token
            notes = [confidence_note(a, limit) if a.done else "*writing…*" for a in shown]
            clear = "" if first_update else gr.update()
            first_update = False
            yield (st, answer_html(shown[0], shade), notes[0],
                   answer_html(shown[1], shade) if len(shown) > 1 else "", notes[1] if len(shown) > 1 else "",
                   "**Left answer**" if len(shown) > 1 else f"**Answer** from {html.escape(st['models'][0]['label'])}",
                   st["texts"][st["order"][0]] if st["done"] else gr.update(), clear, clear)

    @handler(ctx, user=False)
    def on_layout(side_by_side):
        return gr.update(visible=side_by_side), gr.update(visible=side_by_side), gr.update(visible=side_by_side)

    def make_rater(position: int, value: str):
        def rate_answer(user, st):
            return rate(ctx, user, st, position, value)
        rate_answer.__name__ = f"rate_{position + 1}_{value}"
        return handler(ctx)(rate_answer)

    def make_preferrer(choice: str):
        def prefer_answer(user, st):
            return prefer(ctx, user, st, choice)
        prefer_answer.__name__ = f"prefer_{choice}"
        return handler(ctx)(prefer_answer)

    @handler(ctx)
    def on_write(user, st, text):
        return write_answer(ctx, user, st, text)

    @handler(ctx)
    def on_reveal(user, st):
        return reveal(st)

    @handler(ctx)
    def on_threshold(user, value):
        return set_threshold(ctx, user, value)

    model_outputs = [m1, m2, thr]
    refresh.click(on_models, [m1, m2], model_outputs, api_name="try_models")
    both.change(on_layout, [both], [m2, col2, pair_row], api_name=False)
    # Ask is off while the answers are written: a rating needs the finished answers, which the page's state holds
    # only once the streaming event has ended (clicked earlier, a rating is refused with "still being written")
    @handler(ctx, user=False)
    def ask_enabled(on: bool):
        return gr.update(interactive=on)

    b_ask.click(ask_enabled, gr.State(False), b_ask, api_name=False) \
        .then(on_ask, [prompt, m1, m2, both, temperature, top_p, max_new, shade],
              [state, out1, conf1, out2, conf2, head1, written, revealed, note], api_name="try_ask") \
        .then(ask_enabled, gr.State(True), b_ask, api_name=False)
    for btn, pos, value in ((up1, 0, "good"), (down1, 0, "bad"), (up2, 1, "good"), (down2, 1, "bad")):
        btn.click(make_rater(pos, value), [state], note, api_name=f"try_rate_{pos + 1}_{value}")
    for btn, choice in ((p1, "1"), (p2, "2"), (p3, "3"), (p0, "0")):
        btn.click(make_preferrer(choice), [state], note, api_name=f"try_prefer_{choice}")
    b_reveal.click(on_reveal, [state], revealed, api_name="try_reveal")

    @handler(ctx, user=False)
    def on_shade(st, on):
        """The finished answers again, shaded by confidence or as formatted text."""
        answers = (st or {}).get("answers") or []
        views = [answer_html(answers[i], on) for i in st["order"]] if answers else []
        return (views[0] if views else gr.update()), (views[1] if len(views) > 1 else gr.update())

    shade.change(on_shade, [state, shade], [out1, out2], api_name=False)
    b_write.click(on_write, [state, written], note, api_name="try_write")
    b_thr.click(on_threshold, [thr], note, api_name="try_threshold")
    return lambda demo: demo.load(on_models, [m1, m2], model_outputs, api_name=False)

"""Label page: good/bad (KTO), blind pairs (DPO) and writing the ideal answer (SFT), keyboard first; and Evaluate,
the blind pairs of model evaluations (never training data unless an admin asks).

The handlers are plain functions of (state, inputs, user) so they are tested without a browser; `build` only lays
out components and wires them, each served labeling first (the app's training job paused, app.priority).
Keys (see app/keys.js): a good, x bad, 1/2 pick, 3 tie, 0 both bad, ctrl+enter submit, space skip, backspace
undo, h guidelines; none act while a text box has focus.
"""
from __future__ import annotations

import html
import time

import gradio as gr

from app.context import AppContext, User, UserError
from app.handlers import handler
from labeling import queue as Q
from labeling.render import safe_markdown

MODES = {"Good / bad": "single", "Pairs": "pair", "Write": "write", "Evaluate": "pair"}
# Evaluate: the blind pairs of model evaluations (labeling/blind_eval.py), a queue of their own, same keys as Pairs.
PURPOSES = {"Evaluate": "evaluation"}
VALUE_NAMES = {"good": "good", "bad": "bad", "a": "answer A", "b": "answer B", "tie": "tie",
               "both_bad": "both bad", "written": "written", "skip": "skipped"}
# What the edit menu offers for each kind of task, named as the Label page's buttons name them (pairs: the side the
# annotator saw, not the stored a/b): (label, value).
EDIT_CHOICES = {"single": [("Good", "good"), ("Bad", "bad")],
                "pair": [("Left is better", "left better"), ("Right is better", "right better"), ("Tie", "tie"),
                         ("Both bad", "both bad")]}
HEADS = {"single": "**Answer**", "pair": "**Left answer** (1)", "write": "**Draft answer**"}


def decision_name(value: str, shown_order: str | None) -> str:
    """A stored decision as the annotator saw it: pair values a/b become the side that answer was shown on."""
    if value in ("a", "b") and shown_order in ("ab", "ba"):
        return "left better" if shown_order[0] == value else "right better"
    return VALUE_NAMES.get(value, value)


def view(ctx: AppContext, user: User, task: dict | None, mode: str, note: str = "") -> dict:
    """Everything the page shows for `task` (None: nothing left)."""
    kind = MODES.get(mode, "single")
    prog = Q.progress(ctx.db, user.name, kind, PURPOSES.get(mode, "label"))
    out = {
        "task": task, "note": note,
        "progress": prog,
        # the row's position (1 = newest), not the decision's internal id, which changes on every edit
        "history": [[i, _short(h["prompt"]), decision_name(h["value"], h["shown_order"]),
                     h["created_at"].strftime("%H:%M:%S")] for i, h in enumerate(Q.history(ctx.db, user.name), 1)],
    }
    if task is None:
        out.update(prompt="**Nothing left to label here.** Try another mode or site, or come back later.",
                   responses=[], kind=kind)
        return out
    out.update(prompt=safe_markdown(task["prompt"]), kind=task["kind"],
               responses=[safe_markdown(r) for r in task["responses"]],
               # write mode starts from the answer on file (or, after an undo, from what this person wrote)
               draft=task.get("previous_text") or (task["responses"][0] if task["responses"] else "") or "",
               about=f"site {html.escape(task['site'] or '-')} · {task['n_done']} of {task['required']} label(s) so far")
    task["shown_at"] = time.time()
    return out


def _short(text: str, n: int = 70) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 1] + "…"


def held_mode(ctx: AppContext, user: User) -> str | None:
    """The mode that shows the task this person holds (a lease), None if they hold none."""
    t = Q.held(ctx.db, user.name)
    if t is None:
        return None
    return next((m for m, kind in MODES.items() if kind == t["kind"] and PURPOSES.get(m, "label") == t["purpose"]),
                None)


def next_view(ctx: AppContext, user: User, mode: str, site: str | None, note: str = "") -> dict:
    task = Q.next_task(ctx.db, user.name, kind=MODES.get(mode, "single"), site=site or None,
                       purpose=PURPOSES.get(mode, "label"))
    return view(ctx, user, task, mode, note)


def decide(ctx: AppContext, user: User, task: dict | None, key: str, mode: str, site: str | None,
           text: str | None = None) -> dict:
    """Save the decision for the shown task (committed), then show the next one."""
    if not task:
        return next_view(ctx, user, mode, site)
    spent = int(1000 * (time.time() - task.get("shown_at", time.time())))
    if key == "skip":
        Q.skip(ctx.db, task["task_id"], user.name)
        return next_view(ctx, user, mode, site, "Skipped.")
    kind = task["kind"]
    if kind == "pair":
        value = Q.pair_value_from_shown(key, task["shown_order"])
    elif kind == "single":
        value = {"a": "good", "good": "good", "x": "bad", "bad": "bad"}.get(key)
    else:
        value = "written"
    if value is None:
        raise UserError(f"The key {key!r} does not label a {kind} task.")
    try:
        Q.save_annotation(ctx.db, task["task_id"], user.name, value, text=text if kind == "write" else None,
                          shown_order=task.get("shown_order"), time_ms=spent, site=task.get("site"))
    except Q.LabelError as e:
        # The lease ran out while the person was away and others finished the task (or it is gone): move on
        # with a sentence instead of leaving them stuck on a task that can no longer take their label.
        if not Q.needs_labels(ctx.db, task["task_id"]):
            return next_view(ctx, user, mode, site, "Others completed that task while it was on your screen, so "
                             "your label was not needed. Here is the next one.")
        raise UserError(str(e)) from None
    return next_view(ctx, user, mode, site, f"Saved: {decision_name(value, task.get('shown_order'))}.")


def undo(ctx: AppContext, user: User, mode: str) -> dict:
    task = Q.undo_last(ctx.db, user.name)
    if task is None:
        raise UserError("Nothing to undo.")
    return view(ctx, user, task, mode, "Undone: that decision is withdrawn; here it is again.")


def picked(ctx: AppContext, user: User, position) -> dict:
    """The decision on row `position` (1 = newest) of this person's history."""
    rows = Q.history(ctx.db, user.name)
    if position in (None, "") or not 1 <= int(position) <= len(rows):
        raise UserError("Pick a decision from the history first (click its row).")
    return rows[int(position) - 1]


def edit_choices(kind: str | None) -> list[tuple[str, str]]:
    """What a decision on a task of this kind can be changed to (written answers: undo, then write again)."""
    return EDIT_CHOICES.get(kind or "", [])


def edit(ctx: AppContext, user: User, position, new_value: str, task: dict | None, mode: str) -> dict:
    row = picked(ctx, user, position)
    annotation_id, n = row["id"], int(position)
    if new_value not in {v for _, v in EDIT_CHOICES["single"] + EDIT_CHOICES["pair"]}:
        raise UserError(f"Choose what to change decision {n} to.")
    order = Q.shown_order(ctx.db, annotation_id)
    if new_value in ("left better", "right better"):
        if order not in ("ab", "ba"):
            raise UserError(f"Decision {n} is not about a pair; choose good or bad.")
        value = order[0] if new_value == "left better" else order[1]
    else:
        value = {"both bad": "both_bad"}.get(new_value, new_value)
    try:
        Q.edit_annotation(ctx.db, int(annotation_id), user.name, value)
    except (Q.LabelError, ValueError) as e:
        raise UserError(str(e)) from None
    return view(ctx, user, task, mode, f"Changed decision {n} to {decision_name(value, order)}; it is now the first "
                "row.")


def guidelines(ctx: AppContext) -> str:
    """The admins' guidelines as markdown (HTML in them shown as text, like everything else on the page)."""
    return safe_markdown(ctx.db.get_setting("guidelines")) or "*No guidelines yet: an admin writes them on the Data page.*"


# -- layout -------------------------------------------------------------------------------------------------------------
def _progress_html(p: dict) -> str:
    total = max(p["total"], 1)
    done = p["total"] - min(p["remaining"], p["total"])
    pct = int(100 * done / total) if p["total"] else 0
    return (f"<div class='preflab-progress'><div style='background:#e5e7eb;border-radius:6px;height:10px'>"
            f"<div style='width:{pct}%;background:#16a34a;height:10px;border-radius:6px'></div></div>"
            f"<small>mine <b>{p['mine']}</b> · everyone <b>{p['everyone']}</b> · remaining <b>{p['remaining']}</b>"
            f" of {p['total']} tasks</small></div>")


def build(ctx: AppContext) -> None:
    def site_choices():
        return ["(all sites)"] + Q.sites(ctx.db)

    task_state = gr.State(None)
    with gr.Row():
        mode = gr.Radio(list(MODES), value="Good / bad", label="Mode", scale=2)
        site = gr.Dropdown(site_choices(), value="(all sites)", label="Site", scale=1)
        start = gr.Button("Start / next", variant="primary", scale=1, elem_id="label-start")
    with gr.Row():
        progress = gr.HTML()
        whoami = gr.Markdown(elem_id="label-whoami")
        if ctx.auth_required:
            gr.Button("Log out", link="/logout", size="sm", scale=0)
    with gr.Accordion("Guidelines (h)", open=False, elem_id="label-guidelines"):
        guide_md = gr.Markdown(elem_id="guidelines-text")
    note = gr.Markdown(elem_id="label-note")
    prompt_head = gr.Markdown("**Prompt**")
    prompt = gr.Markdown(elem_id="label-prompt", elem_classes=["preflab-card"])
    with gr.Row():
        with gr.Column():
            head1 = gr.Markdown(HEADS["single"])
            resp1 = gr.Markdown(elem_id="label-response-1", elem_classes=["preflab-card"])
        with gr.Column(visible=False) as col2:
            gr.Markdown("**Right answer** (2)")
            resp2 = gr.Markdown(elem_id="label-response-2", elem_classes=["preflab-card"])
    write_box = gr.Textbox(label="Ideal answer (ctrl+enter to submit)", lines=6, visible=False, elem_id="label-write")
    with gr.Row(visible=True) as single_row:
        b_good = gr.Button("Good (a)", elem_id="key-a", variant="primary")
        b_bad = gr.Button("Bad (x)", elem_id="key-x", variant="stop")
    with gr.Row(visible=False) as pair_row:
        b_1 = gr.Button("Left is better (1)", elem_id="key-1")
        b_2 = gr.Button("Right is better (2)", elem_id="key-2")
        b_3 = gr.Button("Tie (3)", elem_id="key-3")
        b_0 = gr.Button("Both bad (0)", elem_id="key-0")
    with gr.Row(visible=False) as write_row:
        b_submit = gr.Button("Submit (ctrl+enter)", variant="primary", elem_id="key-submit")
    with gr.Row():
        b_skip = gr.Button("Skip (space)", elem_id="key-space", size="sm")
        b_undo = gr.Button("Undo (backspace)", elem_id="key-undo", size="sm")
    with gr.Accordion("My last 10 decisions (click one to change it)", open=True):
        hist = gr.Dataframe(headers=["#", "prompt", "decision", "time"], interactive=False, elem_id="label-history")
        with gr.Row():
            edit_id = gr.Number(label="Row", precision=0, scale=1, info="Click a row above to pick it.")
            edit_value = gr.Dropdown(edit_choices("single"), value=None, label="Change to", scale=1)
            b_edit = gr.Button("Change", scale=1, elem_id="label-edit")

    outputs = [task_state, note, prompt, resp1, resp2, col2, write_box, single_row, pair_row, write_row, progress, hist,
               head1, prompt_head]

    def render(v: dict):
        kind = v["kind"]
        rs = v["responses"]
        has_task = v["task"] is not None
        return (
            v["task"], v["note"], v["prompt"],
            (rs[0] if rs else ("" if kind != "write" or not has_task else "")),
            (rs[1] if len(rs) > 1 else ""),
            gr.update(visible=kind == "pair"),
            gr.update(visible=kind == "write" and has_task, value=v.get("draft", "")),
            gr.update(visible=kind == "single" and has_task),
            gr.update(visible=kind == "pair" and has_task),
            gr.update(visible=kind == "write" and has_task),
            _progress_html(v["progress"]),
            v["history"],
            HEADS.get(kind, HEADS["single"]),
            "**Prompt**" + (f" <small>({v['about']})</small>" if v.get("about") else ""),
        )

    def _site(s):
        return None if s in (None, "(all sites)") else s

    @handler(ctx, labeling=True)
    def on_next(user, m, s):
        return render(next_view(ctx, user, m, _site(s)))

    def make_decider(key: str):
        def decide_key(user, task, m, s, text):
            return render(decide(ctx, user, task, key, m, _site(s), text))
        decide_key.__name__ = f"decide_{key}"
        return handler(ctx, labeling=True)(decide_key)

    @handler(ctx, labeling=True)
    def on_undo(user, m):
        return render(undo(ctx, user, m))

    @handler(ctx, labeling=True)
    def on_edit(user, aid, value, task, m):
        return render(edit(ctx, user, aid, value, task, m))

    start.click(on_next, [mode, site], outputs, api_name="label_next")
    mode.change(on_next, [mode, site], outputs, api_name=False)
    site.change(on_next, [mode, site], outputs, api_name=False)
    for btn, key in ((b_good, "a"), (b_bad, "x"), (b_1, "1"), (b_2, "2"), (b_3, "3"), (b_0, "0"),
                     (b_submit, "submit"), (b_skip, "skip")):
        btn.click(make_decider(key), [task_state, mode, site, write_box], outputs, api_name=f"label_{key}")
    b_undo.click(on_undo, [mode], outputs, api_name="label_undo")
    b_edit.click(on_edit, [edit_id, edit_value, task_state, mode], outputs, api_name="label_edit")

    @handler(ctx)
    def on_pick(user, evt: gr.SelectData):
        """Clicking a row of the history picks that decision for editing, with its own kind's choices."""
        row = evt.row_value if evt is not None else None
        if not row:
            return gr.update(), gr.update()
        kind = picked(ctx, user, row[0])["kind"]
        return row[0], gr.update(choices=edit_choices(kind), value=None)

    @handler(ctx, user=False)
    def on_mode_choices(m):
        return gr.update(choices=edit_choices(MODES.get(m, "single")), value=None)

    hist.select(on_pick, None, [edit_id, edit_value], api_name=False)
    mode.change(on_mode_choices, mode, edit_value, api_name=False)

    @handler(ctx)
    def on_whoami(u):
        site = f", {html.escape(u.site)}" if u.site else ""
        return f"Signed in as **{html.escape(u.name)}** ({u.role}{site})" if ctx.auth_required else ""

    @handler(ctx, user=False)
    def on_page_load():
        """Sites imported and guidelines edited since the page was built."""
        return gr.update(choices=site_choices()), guidelines(ctx)

    @handler(ctx, labeling=True)
    def on_reload(user, m, s):
        """A (re)loaded page opens on the task this person holds, in its mode (README: a reload shows it)."""
        m = held_mode(ctx, user) or m
        return (m, *render(next_view(ctx, user, m, _site(s))))

    def on_load(demo):
        demo.load(on_reload, [mode, site], [mode, *outputs], api_name=False)
        demo.load(on_page_load, None, [site, guide_md], api_name=False)
        demo.load(on_whoami, None, whoami, api_name=False)
    return on_load

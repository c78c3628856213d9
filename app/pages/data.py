"""Data page: what has been labeled (per site, per annotator, class balance, pair outcomes, agreement), disputed
tasks an admin resolves, and, for admins only, import, export, guidelines and accounts. Every admin action is
declared `admin_only`, so it refuses an annotator also when called as an API endpoint."""
from __future__ import annotations

import tempfile
import uuid
from html import escape
from pathlib import Path

import gradio as gr
import pandas as pd

from app.context import AppContext, User, UserError, admin_only
from app.handlers import handler
from app.pages import evalset_section, queue_section
from app.tables import shown
from labeling import agreement as A
from labeling.dataset import data_summary


COLUMNS = {"tasks": ["kind", "tasks", "complete"], "per_site": ["site", "kind", "labels", "good", "bad"],
           "per_annotator": ["annotator", "labels", "first", "last"], "pair_outcomes": ["value", "n"]}
# What an empty table says instead of bare headers (app/tables.py).
EMPTY = {"tasks": "No tasks yet: import prompts or labels below, or generate answers on the Train page.",
         "outcomes": "No pair decided yet.", "per_site": "No labels yet.", "per_annotator": "No labels yet.",
         "disputed": "No disputed tasks: every task with several labels agrees (or none has several yet).",
         "accounts": "Only admins see the accounts."}
OUTCOME_NAMES = {"left": "left is better", "right": "right is better", "tie": "tie", "both_bad": "both bad",
                 "a": "answer A better (imported)", "b": "answer B better (imported)"}   # imported: never shown


def _table(rows: list[dict], name: str) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=COLUMNS[name])
    for col in ("first", "last"):
        if col in df and len(df):
            df[col] = pd.to_datetime(df[col]).dt.strftime("%Y-%m-%d %H:%M")
    return df


def summary_tables(ctx: AppContext) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, str]:
    s = data_summary(ctx.db)
    ag = A.agreement(ctx.db)
    if ag["alpha"] is None:
        text = ("**Agreement (Krippendorff's α, nominal):** not measurable yet: no task has labels from two or "
                "more annotators (set 'labels needed per task' above 1 when importing).")
    else:
        text = f"**Agreement (Krippendorff's α, nominal):** {ag['alpha']:.3f} over {ag['n_tasks']} tasks with several labels."
    pairs = "; ".join(f"{escape(k)}: {v['alpha']:.2f} on {v['shared_tasks']} tasks" for k, v in ag["per_pair"].items()
                      if v["alpha"] is not None)
    text += f"  \n**Per annotator pair:** {pairs}" if pairs else ""
    outcomes = _table(s["pair_outcomes"], "pair_outcomes")
    outcomes["value"] = outcomes["value"].map(lambda v: OUTCOME_NAMES.get(v, v))
    return (_table(s["tasks"], "tasks"), _table(s["per_site"], "per_site"), _table(s["per_annotator"], "per_annotator"),
            outcomes, text)


def disputes(ctx: AppContext) -> pd.DataFrame:
    rows = A.disputed_tasks(ctx.db)
    return pd.DataFrame([{"task": r["task_id"], "kind": r["kind"], "site": r["site"], "prompt": r["prompt"][:90],
                          "votes": r["values"], "disagreement": round(r["disagreement"], 2)} for r in rows],
                        columns=["task", "kind", "site", "prompt", "votes", "disagreement"])


FINAL = {"pair": ["a", "b", "tie", "both_bad"], "single": ["good", "bad"]}


@admin_only("see the votes of a disputed task")
def dispute_detail(ctx: AppContext, user: User, task_id: str) -> tuple[str, list[str]]:
    """What an admin needs to settle one disputed task: the prompt, the answers (A/B as stored, whatever side
    each annotator saw), who voted what; and the labels that task can take. Admins only: an annotator who saw
    the others' votes would no longer label independently."""
    from labeling.render import safe_markdown

    r = next((d for d in A.disputed_tasks(ctx.db) if d["task_id"] == task_id), None)
    if r is None:
        raise UserError(f"Task {escape(str(task_id))} is not disputed (or was resolved already).")
    parts = [f"**Prompt** ({r['kind']}, site {escape(r['site'] or '-')})\n\n{safe_markdown(r['prompt'])}"]
    for name, text in zip(("Answer A", "Answer B") if r["kind"] == "pair" else ("Answer",), r["responses"]):
        parts.append(f"**{name}**\n\n{safe_markdown(text)}")
    parts.append("**Votes:** " + ", ".join(f"{escape(v['annotator'])} → {v['value']}" for v in r["votes"]))
    return "\n\n---\n\n".join(parts), FINAL.get(r["kind"], [])


@admin_only("import")
def do_import(ctx: AppContext, user: User, path: str | None, site: str, required, skip_bad: bool, mapping: str):
    if not path:
        raise UserError("Choose a file to import first.")
    from labeling.importer import import_file, parse_mapping

    try:
        mp = parse_mapping([m for m in (mapping or "").replace(",", " ").split() if m])
    except ValueError as e:
        raise UserError(str(e)) from None
    r = import_file(ctx.db, path, site=site or None, required=int(required) if required else None,
                    skip_bad_rows=skip_bad, mapping=mp)
    r["file"] = escape(Path(path).name)   # names and text from outside are shown as text
    head = (f"Imported {r['new']} new item(s) from {r['file']} ({r['duplicates']} duplicate(s), "
            f"{r['skipped']} bad row(s) skipped)." if r["ok"] else
            f"Nothing was imported from {r['file']}: {r['errors']} problem(s). Fix them"
            + ("." if skip_bad else ", or tick 'skip bad rows'."))   # ticked: the problem is the whole file
    report = pd.DataFrame(r["report"], columns=["file", "line", "field", "message"])
    return head, report


@admin_only("export")
def do_export(ctx: AppContext, user: User, kind: str, fmt: str, ties: str) -> str:
    from labeling.label_export import export

    out = Path(tempfile.mkdtemp(prefix="preflab-export-")) / f"preflab-{kind}-{uuid.uuid4().hex[:8]}.{fmt}"
    export(ctx.db, kind, out, ties=ties)
    return ctx.offer_download(out, user)     # for this admin only


@admin_only("edit the guidelines")
def save_guidelines(ctx: AppContext, user: User, text: str) -> str:
    ctx.db.set_setting("guidelines", text or "")
    return "Guidelines saved; annotators see them on their next page load."


@admin_only("manage accounts")
def add_user(ctx: AppContext, user: User, name: str, password: str, role: str, site: str) -> str:
    from labeling.accounts import set_user

    try:
        r = set_user(ctx.db, name, password, role=role, site=site or None)
    except ValueError as e:
        raise UserError(str(e)) from None
    return f"Account {escape(r['name'])} ({r['role']}) {'updated' if r['updated'] else 'created'}."


@admin_only("manage accounts")
def switch_user(ctx: AppContext, user: User, name: str) -> str:
    """Disable an account (no login; its open sessions end at once) or enable it again."""
    from labeling.accounts import get_user, set_disabled

    name = (name or "").strip()
    found = get_user(ctx.db, name)
    if found is None:
        raise UserError(f"There is no account named {escape(name)!r}." if name else "Give the account's name.")
    if name == user.name:
        raise UserError("You cannot disable your own account.")
    set_disabled(ctx.db, name, not found["disabled"])
    return (f"Account {escape(name)} enabled again." if found["disabled"] else
            f"Account {escape(name)} disabled: it cannot log in, and its open sessions have ended.")


@admin_only("resolve disputes")
def resolve_task(ctx: AppContext, user: User, task_id: str, value: str) -> str:
    from labeling.queue import LabelError

    try:
        A.resolve(ctx.db, (task_id or "").strip(), user.name, value)
    except LabelError as e:
        raise UserError(str(e)) from None
    return f"Task {escape(task_id)} resolved as {escape(value)}."


def accounts(ctx: AppContext, user: User) -> pd.DataFrame:
    """The account list, for admins only (an annotator gets an empty table)."""
    from labeling.accounts import list_users

    rows = list_users(ctx.db) if user.is_admin else []
    return pd.DataFrame(rows, columns=["name", "role", "site", "site_only", "disabled", "created_at"])


def build(ctx: AppContext) -> None:
    with gr.Row():
        refresh = gr.Button("Refresh", size="sm", elem_id="data-refresh")
    agreement_md = gr.Markdown()
    with gr.Row():
        tasks = gr.Dataframe(label="Tasks", interactive=False)
        outcomes = gr.Dataframe(label="Pair outcomes", interactive=False)
    with gr.Row():
        per_site = gr.Dataframe(label="Labels per site (good/bad = class balance)", interactive=False,
                                elem_id="data-per-site")
        per_ann = gr.Dataframe(label="Labels per annotator", interactive=False, elem_id="data-per-annotator")
    with gr.Accordion("Disputed tasks (admin; click one to see it)", open=False):
        disputed = gr.Dataframe(interactive=False, elem_id="data-disputed")
        with gr.Row():
            d_task = gr.Textbox(label="Task id")
            d_value = gr.Dropdown(FINAL["pair"] + FINAL["single"], label="Final label")
            d_btn = gr.Button("Resolve (admin)")
        d_msg = gr.Markdown()
        d_detail = gr.Markdown(elem_id="data-dispute-detail")
    with gr.Accordion("Import (admin)", open=False):
        up = gr.File(label="JSONL, CSV or Parquet", file_types=[".jsonl", ".json", ".csv", ".parquet", ".gz"],
                     type="filepath", elem_id="data-upload")
        with gr.Row():
            i_site = gr.Textbox(label="Site (for rows without one)", elem_id="data-import-site")
            i_req = gr.Number(label="Labels needed per task (0 = project default)", value=0, precision=0, minimum=0)
            i_skip = gr.Checkbox(label="Skip bad rows", value=False)
            i_map = gr.Textbox(label="Column mapping", placeholder="prompt=question chosen=best")
        i_btn = gr.Button("Import", variant="primary", elem_id="data-import")
        i_msg = gr.Markdown(elem_id="data-import-result")
        i_report = gr.Dataframe(shown(None, "No import yet."), label="Problems (file, line, field)",
                                interactive=False, elem_id="data-import-report")
    with gr.Accordion("Export (admin)", open=False):
        with gr.Row():
            e_kind = gr.Dropdown(["preference", "unpaired", "sft"], value="preference", label="Kind")
            e_fmt = gr.Dropdown(["jsonl", "parquet"], value="jsonl", label="Format")
            e_ties = gr.Radio(["drop", "keep"], value="drop", label="Ties")
        e_btn = gr.Button("Export", elem_id="data-export")
        e_file = gr.File(label="Download", elem_id="data-export-file")
    fill_evalset, evalset_outputs = evalset_section.build(ctx)
    fill_queue, queue_outputs = queue_section.build(ctx)
    with gr.Accordion("Guidelines (admin)", open=False):
        g_text = gr.Textbox(lines=10, label="Markdown (shown on the Label page; press h there)")
        g_btn = gr.Button("Save guidelines", elem_id="data-guidelines-save")
        g_msg = gr.Markdown()
    with gr.Accordion("Accounts (admin)", open=False):
        with gr.Row():
            u_name = gr.Textbox(label="Name")
            u_pw = gr.Textbox(label="Password", type="password")
            u_role = gr.Dropdown(["annotator", "admin"], value="annotator", label="Role")
            u_site = gr.Textbox(label="Site")
        with gr.Row():
            u_btn = gr.Button("Save account")
            u_switch = gr.Button("Disable / enable account", elem_id="data-user-switch")
        u_msg = gr.Markdown()
        users = gr.Dataframe(label="Accounts", interactive=False)

    @handler(ctx)
    def on_refresh(user):
        t, s, a, o, md = summary_tables(ctx)
        conflicts = disputes(ctx) if user.is_admin else disputes(ctx).iloc[0:0]
        frames = {"tasks": t, "outcomes": o, "per_site": s, "per_annotator": a, "disputed": conflicts,
                  "accounts": accounts(ctx, user)}
        return (md, *(shown(df, EMPTY[k]) for k, df in frames.items()), ctx.db.get_setting("guidelines", ""))

    @handler(ctx)
    def on_pick(user, evt: gr.SelectData):
        row = evt.row_value if evt is not None else None
        if not row or row[0] == EMPTY["disputed"]:
            return gr.update(), gr.update(), gr.update()
        text, finals = dispute_detail(ctx, user, row[0])
        return row[0], gr.update(choices=finals, value=None), text

    @handler(ctx)
    def on_import(user, path, site, req, skip, mp):
        head, report = do_import(ctx, user, path, site, req, skip, mp)
        return head, shown(report, "No problems: every row was read.")

    @handler(ctx)
    def on_export(user, kind, fmt, ties):
        return do_export(ctx, user, kind, fmt, ties)

    @handler(ctx)
    def on_guidelines(user, text):
        return save_guidelines(ctx, user, text)

    @handler(ctx)
    def on_user(user, name, pw, role, site):
        return add_user(ctx, user, name, pw, role, site)

    @handler(ctx)
    def on_switch(user, name):
        return switch_user(ctx, user, name)

    @handler(ctx)
    def on_resolve(user, tid, value):
        return resolve_task(ctx, user, tid, value)

    tables = [agreement_md, tasks, outcomes, per_site, per_ann, disputed, users, g_text]
    refresh.click(on_refresh, None, tables, api_name="data_summary")
    refresh.click(fill_evalset, None, evalset_outputs, api_name="data_evalset")
    refresh.click(fill_queue, None, queue_outputs, api_name="data_queue")
    i_btn.click(on_import, [up, i_site, i_req, i_skip, i_map], [i_msg, i_report], api_name="data_import").success(
        on_refresh, None, tables, api_name=False)
    e_btn.click(on_export, [e_kind, e_fmt, e_ties], e_file, api_name="data_export")
    g_btn.click(on_guidelines, [g_text], g_msg, api_name="data_guidelines")
    u_btn.click(on_user, [u_name, u_pw, u_role, u_site], u_msg, api_name="data_add_user").success(
        on_refresh, None, tables, api_name=False)
    u_switch.click(on_switch, [u_name], u_msg, api_name="data_switch_user").success(
        on_refresh, None, tables, api_name=False)
    d_btn.click(on_resolve, [d_task, d_value], d_msg, api_name="data_resolve").success(
        on_refresh, None, tables, api_name=False)
    disputed.select(on_pick, None, [d_task, d_value, d_detail], api_name=False)
    return lambda demo: (demo.load(on_refresh, None, tables, api_name=False),
                         demo.load(fill_evalset, None, evalset_outputs, api_name=False),
                         demo.load(fill_queue, None, queue_outputs, api_name=False))

"""The Data page's evaluation-set and conflicting-labels sections (admin): which prompts every run is scored on
and none trains on (labeling/evalset.py), edits that make a new version, a file of evaluation prompts; and the
answers whose labels conflict (labeling/conflicts.py), which training leaves out until someone resolves them."""
from __future__ import annotations

from html import escape

import gradio as gr
import pandas as pd

from app.context import AppContext, User, UserError, admin_only
from app.handlers import handler
from app.tables import shown
from labeling import conflicts, evalset

NONE_YET = (f"No evaluation set yet: it is made from about 10% of each site's prompts once the project has "
            f"{evalset.MIN_PROMPTS} prompts, or add prompts here.")


def view(ctx: AppContext, user: User) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    """The set in force and the conflicting answers; an annotator sees neither (which prompts are scored is not
    theirs to know, and conflicts name who labeled what)."""
    if not user.is_admin:
        return "Only admins see the evaluation set.", shown(None, "Admins only."), shown(None, "Admins only.")
    es = evalset.current(ctx.db)
    note = ctx.db.scalar("SELECT note FROM evalset_versions WHERE version = ?", [es["version"]]) or ""
    n_pairs = len(evalset.rows(ctx.db, "pairs")) if es["version"] else 0
    md = (f"**Version {es['version']}** ({escape(note)}): {len(es['prompt_ids'])} prompts, {n_pairs} labeled pairs "
          f"every run is scored on. Training never uses these prompts." if es["version"] else NONE_YET)
    found = conflicts.report(ctx.db)["conflicts"].assign(tasks=lambda d: d["tasks"].map(" ".join))
    return (md, shown(evalset.table(ctx.db), NONE_YET),
            shown(found, "No conflicting labels: no answer is called good in one place and worse in another."))


@admin_only("change the evaluation set")
def edit(ctx: AppContext, user: User, action: str, ids_text: str) -> str:
    ids = [i for i in (ids_text or "").replace(",", " ").split() if i]
    if not ids:
        raise UserError("Paste one or more prompt ids (from the table below) first.")
    try:
        r = evalset.add(ctx.db, ids, user.name) if action == "add" else evalset.remove(ctx.db, ids, user.name)
    except ValueError as e:
        raise UserError(str(e)) from None
    n = r.get("added", r.get("removed"))
    return (f"{'Added' if action == 'add' else 'Removed'} {n} prompt(s): the evaluation set is now version "
            f"{r['version']}." if n else "Nothing changed: the set already is like that.")


@admin_only("import evaluation prompts")
def import_prompts(ctx: AppContext, user: User, path: str | None, site: str) -> tuple[str, pd.DataFrame]:
    if not path:
        raise UserError("Choose a file of evaluation prompts first.")
    r = evalset.import_prompts(ctx.db, path, site=site or None, who=user.name)
    report = pd.DataFrame(r["report"], columns=["file", "line", "field", "message"])
    if not r["ok"]:
        return f"Nothing was imported: {r['errors']} problem(s) (listed below).", report
    return (f"{r['added']} prompt(s) added to the evaluation set (version {r['version']}); "
            f"{r['new']} were new to the project.", report)


def build(ctx: AppContext):
    """The two accordions; returns what the page's load and refresh call to fill them."""
    with gr.Accordion("Evaluation set (admin): the prompts runs are scored on and never trained on", open=False):
        es_md = gr.Markdown(elem_id="data-evalset-summary")
        es_table = gr.Dataframe(interactive=False, wrap=True, elem_id="data-evalset")
        with gr.Row():
            es_ids = gr.Textbox(label="Prompt ids (separated by spaces or commas)", scale=3, elem_id="data-evalset-ids")
            es_add = gr.Button("Add to the set", size="sm", elem_id="data-evalset-add")
            es_remove = gr.Button("Remove from the set", size="sm", elem_id="data-evalset-remove")
        with gr.Row():
            es_file = gr.File(label="A file of evaluation prompts (JSONL, CSV or Parquet with a 'prompt' column)",
                              type="filepath", file_types=[".jsonl", ".json", ".csv", ".parquet", ".gz"])
            es_site = gr.Textbox(label="Site (for rows without one)")
            es_import = gr.Button("Import as evaluation prompts", size="sm", elem_id="data-evalset-import")
        es_msg = gr.Markdown(elem_id="data-evalset-result")
        es_report = gr.Dataframe(visible=False, interactive=False)
    with gr.Accordion("Conflicting labels (admin): left out of training until resolved", open=False):
        gr.Markdown("An answer labeled good in one place and worse in another. Resolve one of its tasks (task ids "
                    "below) with the disputed tasks' Resolve box, or leave them out (the Train page's default).")
        cf_table = gr.Dataframe(interactive=False, wrap=True, elem_id="data-conflicts")

    @handler(ctx)
    def on_evalset(user):
        return view(ctx, user)

    @handler(ctx)
    def on_edit_add(user, ids):
        return edit(ctx, user, "add", ids)

    @handler(ctx)
    def on_edit_remove(user, ids):
        return edit(ctx, user, "remove", ids)

    @handler(ctx)
    def on_import(user, path, site):
        head, report = import_prompts(ctx, user, path, site)
        return head, gr.update(value=report, visible=not report.empty)

    shows = [es_md, es_table, cf_table]
    es_add.click(on_edit_add, es_ids, es_msg, api_name="evalset_add").success(on_evalset, None, shows, api_name=False)
    es_remove.click(on_edit_remove, es_ids, es_msg, api_name="evalset_remove").success(
        on_evalset, None, shows, api_name=False)
    es_import.click(on_import, [es_file, es_site], [es_msg, es_report], api_name="evalset_import").success(
        on_evalset, None, shows, api_name=False)
    return on_evalset, shows

"""From annotations to training rows: the one place that decides what a task's label is.

The current label of (task, annotator) is their newest annotation (view current_annotations, storage/migrations.py);
'skip' and 'retracted' count as none.
Several annotators on one task are resolved by majority:
- pair tasks: the most-voted of a / b / tie / both_bad wins. a or b gives a preference (winner = chosen);
  a tie in votes, or a winning 'tie', is a tie: dropped (ties="drop", the default) or kept with tie=true
  (ties="keep", export only; Preflab never trains on ties). 'both_bad' gives no preference.
- single tasks: good vs bad by majority; equal votes are dropped.
- write tasks: every annotator's current written answer is an SFT example.
Data kinds: pairs (prompt, chosen, rejected) from pair tasks; unpaired (prompt, completion, label) from single
tasks plus decided pairs split into a good and a bad row (both_bad gives two bad rows); sft (prompt, completion)
from written answers, answers labeled good, and pair winners.
An admin's resolution (source 'resolution') replaces a task's votes. `agreement` is the share of a task's votes
that went to its majority value.
"""
from __future__ import annotations

import pandas as pd

from storage.db import Database

# Each person's current label on each task, admin resolutions left out: the votes agreement and the Data page count.
VOTES = "(SELECT * FROM current_annotations WHERE source <> 'resolution' AND value NOT IN ('skip', 'retracted'))"


def deciding_sql(where: str = "TRUE") -> str:
    """A subquery of the labels that decide tasks: the current labels (view current_annotations, skips and undone
    decisions left out) that match `where` (a condition on the view's columns), except that where a task has a
    resolution among them, the resolution alone decides it. Training data and A/B win rates both read this."""
    return f"""(WITH cur AS (SELECT * FROM current_annotations WHERE value NOT IN ('skip', 'retracted') AND ({where}))
               SELECT * FROM cur WHERE source = 'resolution'
                  OR task_id NOT IN (SELECT task_id FROM cur WHERE source = 'resolution'))"""


def deciding_labels(db: Database, sites=None, annotators=None, since=None, until=None,
                    with_evaluation: bool = False) -> pd.DataFrame:
    """The labels that decide each task (see `deciding_sql`) from these sites, annotators and dates, with the
    task's text. Judgments in blind evaluations (tasks of purpose 'evaluation': the Evaluate mode, Try-page
    side-by-side picks) are left out unless `with_evaluation`: measuring a model must not change its training data."""
    where, params = ["TRUE"], []
    if annotators:
        where.append(f"annotator IN ({', '.join('?' * len(annotators))})")
        params += list(annotators)
    if since:
        where.append("created_at >= ?")
        params.append(since)
    if until:
        where.append("created_at <= ?")
        params.append(until)
    site_filter = "WHERE TRUE" if with_evaluation else "WHERE t.purpose <> 'evaluation'"
    if sites:
        site_filter += f" AND t.site IN ({', '.join('?' * len(sites))})"
        params += list(sites)
    return db.df(f"""
        SELECT t.id AS task_id, t.kind, t.site, t.prompt_id, p.text AS prompt, ra.text AS response_a,
               rb.text AS response_b,
               a.annotator, a.value, a.text, a.created_at, a.source
        FROM {deciding_sql(' AND '.join(where))} a JOIN tasks t ON t.id = a.task_id
        JOIN prompts p ON p.id = t.prompt_id
        LEFT JOIN responses ra ON ra.id = t.response_a
        LEFT JOIN responses rb ON rb.id = t.response_b {site_filter}""", params)


def _majority(labels: pd.DataFrame) -> pd.DataFrame:
    """One row per task: majority value (None on a tie in votes), votes, agreement."""
    if labels.empty:
        return pd.DataFrame(columns=["task_id", "value", "n_votes", "agreement"])
    counts = labels.groupby(["task_id", "value"]).size().rename("n").reset_index()
    total = counts.groupby("task_id")["n"].sum().rename("n_votes")
    top = counts.sort_values(["task_id", "n"], ascending=[True, False])
    best = top.groupby("task_id").head(2).copy()
    best["rank"] = best.groupby("task_id").cumcount()
    first = best[best["rank"] == 0].set_index("task_id")
    second = best[best["rank"] == 1].set_index("task_id")["n"].reindex(first.index)
    tied = second.eq(first["n"])
    out = pd.DataFrame({"value": first["value"].where(~tied, None), "n_top": first["n"]}).join(total)
    out["agreement"] = out["n_top"] / out["n_votes"]
    return out.drop(columns="n_top").reset_index()


def training_rows(db: Database, data_kind: str, sites=None, annotators=None, since=None, until=None,
                  min_agreement: float | None = None, ties: str = "drop",
                  with_evaluation: bool = False, exclude_evalset: bool = True,
                  drop_conflicts: bool = True) -> pd.DataFrame:
    """The rows a run of `data_kind` trains on (see the module docstring). Prompts of the evaluation set are never
    trained on (`exclude_evalset=False` gives the evaluation rows' source, labeling.evalset.rows); answers with
    conflicting labels (labeling.conflicts) are left out unless `drop_conflicts=False`."""
    from labeling import conflicts, evalset

    labels = deciding_labels(db, sites, annotators, since, until, with_evaluation)
    if exclude_evalset:
        labels = labels[~labels["prompt_id"].isin(evalset.prompt_ids(db))]
    tasks = labels.drop_duplicates("task_id").set_index("task_id")[["kind", "site", "prompt", "response_a", "response_b"]]
    maj = _majority(labels[labels.kind != "write"]).set_index("task_id").join(tasks, how="left")
    if min_agreement is not None:
        maj = maj[maj["agreement"] >= min_agreement]
    if drop_conflicts:
        maj = maj[~maj.index.isin(conflicts.conflicting_tasks(maj))]
    rows: list[dict] = []
    base = lambda tid, r: {"task_id": tid, "site": r["site"], "prompt": r["prompt"],  # noqa: E731
                           "n_votes": int(r["n_votes"]), "agreement": float(r["agreement"])}
    for tid, r in maj.iterrows():
        v = None if pd.isna(r["value"]) else r["value"]
        if r["kind"] == "pair":
            win = {"a": ("response_a", "response_b"), "b": ("response_b", "response_a")}.get(v)
            if data_kind == "pairs":
                if win:
                    rows.append({**base(tid, r), "example_id": tid, "chosen": r[win[0]], "rejected": r[win[1]]})
                elif ties == "keep" and (v is None or v == "tie"):
                    rows.append({**base(tid, r), "example_id": tid, "chosen": r["response_a"],
                                 "rejected": r["response_b"], "tie": True})
            elif data_kind == "unpaired":
                if win:
                    rows.append({**base(tid, r), "example_id": f"{tid}:chosen", "completion": r[win[0]], "label": True})
                    rows.append({**base(tid, r), "example_id": f"{tid}:rejected", "completion": r[win[1]], "label": False})
                elif v == "both_bad":
                    for side in ("a", "b"):
                        rows.append({**base(tid, r), "example_id": f"{tid}:{side}", "completion": r[f"response_{side}"],
                                     "label": False})
            elif data_kind == "sft" and win:
                rows.append({**base(tid, r), "example_id": tid, "completion": r[win[0]]})
        elif r["kind"] == "single" and v in ("good", "bad"):
            if data_kind == "unpaired":
                rows.append({**base(tid, r), "example_id": tid, "completion": r["response_a"], "label": v == "good"})
            elif data_kind == "sft" and v == "good":
                rows.append({**base(tid, r), "example_id": tid, "completion": r["response_a"]})
    if data_kind == "sft":
        written = labels[(labels.kind == "write") & (labels.value == "written") & labels.text.notna()]
        for w in written.itertuples():
            rows.append({"task_id": w.task_id, "site": w.site, "prompt": w.prompt, "n_votes": 1, "agreement": 1.0,
                         "example_id": f"{w.task_id}:{w.annotator}", "completion": w.text})
    cols = {"pairs": ["prompt", "chosen", "rejected"], "unpaired": ["prompt", "completion", "label"],
            "sft": ["prompt", "completion"]}[data_kind]
    extra = ["tie"] if data_kind == "pairs" and ties == "keep" else []
    df = pd.DataFrame(rows, columns=cols + extra + ["example_id", "task_id", "site", "n_votes", "agreement"])
    if extra:
        df["tie"] = df["tie"].fillna(False).astype(bool)
    return df.sort_values("example_id").reset_index(drop=True)


def data_summary(db: Database) -> dict:
    """Counts for the Data page: per site and per annotator, class balance, pair outcomes."""
    q = db.records
    return {
        "tasks": q("SELECT kind, count(*) AS tasks, sum(CASE WHEN n_done >= required THEN 1 ELSE 0 END) AS complete "
                   "FROM tasks GROUP BY kind ORDER BY kind"),
        "per_site": q(f"""SELECT coalesce(t.site, '(none)') AS site, t.kind, count(*) AS labels,
                                  sum(CASE WHEN value = 'good' THEN 1 ELSE 0 END) AS good,
                                  sum(CASE WHEN value = 'bad' THEN 1 ELSE 0 END) AS bad
                           FROM {VOTES} v JOIN tasks t ON t.id = v.task_id GROUP BY ALL ORDER BY ALL"""),
        "per_annotator": q(f"""SELECT annotator, count(*) AS labels, min(created_at) AS first, max(created_at) AS last
                               FROM {VOTES} v GROUP BY ALL ORDER BY labels DESC"""),
        # a/b by the side the labeler saw it on (left/right), as they decided; imported votes were never shown
        "pair_outcomes": q(f"""SELECT CASE WHEN value IN ('a', 'b') AND shown_order IN ('ab', 'ba')
                                           THEN CASE WHEN left(shown_order, 1) = value THEN 'left' ELSE 'right' END
                                           ELSE value END AS value, count(*) AS n
                               FROM {VOTES} v JOIN tasks t ON t.id = v.task_id
                               WHERE t.kind = 'pair' GROUP BY ALL ORDER BY ALL"""),
    }


def label_counts(db: Database) -> dict[str, int]:
    """Current labels by what they can train: decided pairs, good and bad answers, written answers (the Train
    page's "which algorithm fits" line; votes, before majorities and filters)."""
    row = db.fetchall(f"""SELECT count(*) FILTER (WHERE t.kind = 'pair' AND v.value IN ('a', 'b')),
                                 count(*) FILTER (WHERE t.kind = 'single' AND v.value = 'good'),
                                 count(*) FILTER (WHERE t.kind = 'single' AND v.value = 'bad'),
                                 count(*) FILTER (WHERE t.kind = 'write' AND v.value = 'written')
                          FROM {VOTES} v JOIN tasks t ON t.id = v.task_id WHERE t.purpose = 'label'""")[0]
    return dict(zip(("pairs", "good", "bad", "written"), (int(x or 0) for x in row)))


def annotator_names(db: Database) -> list[str]:
    """Everyone who has annotated, in order: the Train page's data filter."""
    return [r[0] for r in db.fetchall("SELECT DISTINCT annotator FROM annotations ORDER BY 1")]


def prompts_to_answer(db: Database, limit: int, only_unanswered: bool = False) -> pd.DataFrame:
    """prompt_id, prompt, site of the first `limit` prompts (oldest first) for a generation job; with
    only_unanswered, only prompts that no task with an answer uses yet."""
    where = "WHERE p.id NOT IN (SELECT prompt_id FROM tasks WHERE response_a IS NOT NULL)" if only_unanswered else ""
    return db.df(f"SELECT p.id AS prompt_id, p.text AS prompt, p.site FROM prompts p {where} "
                 f"ORDER BY p.created_at LIMIT ?", [int(limit)])

"""Conflicting labels: one answer the team called good in one place and worse in another. Trained as they are, the
same answer is both desirable and undesirable (KTO) or both chosen and rejected over the same rival (DPO).

An answer (the same text to the same prompt) gets a signal from each decided task (after majority or an admin's
resolution, labeling.dataset): a *label* (good; bad, also from a pair marked both bad) or a *pair outcome* (better or
worse than its rival). A conflict is
- good in one place and bad in another;
- labeled good but the worse answer of a pair, or labeled bad but the better one;
- two pair tasks over the same two answers decided opposite ways.
Better in one pair and worse in another against *different* rivals is a ranking, not a conflict.
The Train page counts and lists them and leaves their tasks out by default; the Data page resolves them.
"""
from __future__ import annotations

import pandas as pd

COLUMNS = ["prompt", "answer", "conflict", "tasks"]


def signals(maj: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, answer) signal from decided tasks: `maj` is indexed by task id with kind, value, prompt,
    response_a, response_b (labeling.dataset's majority table)."""
    m = maj.reset_index().rename(columns={"index": "task_id"})
    cols = ["task_id", "prompt", "answer", "how", "good", "rival"]
    single = m[(m["kind"] == "single") & m["value"].isin(["good", "bad"])]
    pairs = m[(m["kind"] == "pair") & m["value"].isin(["a", "b"])]
    a_won = pairs["value"] == "a"
    win = pairs["response_a"].where(a_won, pairs["response_b"])
    lose = pairs["response_b"].where(a_won, pairs["response_a"])
    both_bad = m[(m["kind"] == "pair") & (m["value"] == "both_bad")]
    parts = [pd.DataFrame({"task_id": single["task_id"], "prompt": single["prompt"], "answer": single["response_a"],
                           "how": "label", "good": single["value"] == "good", "rival": None}),
             pd.DataFrame({"task_id": pairs["task_id"], "prompt": pairs["prompt"], "answer": win, "how": "pair",
                           "good": True, "rival": lose}),
             pd.DataFrame({"task_id": pairs["task_id"], "prompt": pairs["prompt"], "answer": lose, "how": "pair",
                           "good": False, "rival": win})]
    parts += [pd.DataFrame({"task_id": both_bad["task_id"], "prompt": both_bad["prompt"],
                            "answer": both_bad[f"response_{side}"], "how": "label", "good": False, "rival": None})
              for side in ("a", "b")]
    out = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else None
    return out[cols] if out is not None else pd.DataFrame(columns=cols).astype({"good": bool})


def find(maj: pd.DataFrame) -> pd.DataFrame:
    """The conflicting answers in decided tasks: prompt, answer, the conflict in words, the tasks involved."""
    s = signals(maj)
    # only answers with more than one signal can conflict: group those alone (most answers have one)
    s = s[s.duplicated(["prompt", "answer"], keep=False)]
    out = []
    for (prompt, answer), g in s.groupby(["prompt", "answer"], sort=True):
        labels, pairs = g[g.how == "label"], g[g.how == "pair"]
        found = []
        if labels.good.any() and (~labels.good).any():
            found.append("labeled good and labeled bad")
        if labels.good.any() and (~pairs.good).any():
            found.append("labeled good but the worse answer of a pair")
        if (~labels.good).any() and pairs.good.any():
            found.append("labeled bad but the better answer of a pair")
        flipped = set(pairs[pairs.good].rival) & set(pairs[~pairs.good].rival)
        if flipped:
            found.append("better and worse than the same rival in two pairs")
        if found:
            involved = g if not flipped or len(found) > 1 else pairs[pairs.rival.isin(flipped)]
            out.append({"prompt": prompt, "answer": answer, "conflict": "; ".join(found),
                        "tasks": sorted(set(involved.task_id))})
    return pd.DataFrame(out, columns=COLUMNS)


def conflicting_tasks(maj: pd.DataFrame) -> set[str]:
    """Task ids that a conflicting answer's labels come from: left out of training by default."""
    return {t for ts in find(maj)["tasks"] for t in ts}


def dropped_pairs(maj: pd.DataFrame) -> dict[str, int]:
    """Pair tasks that give DPO no preference: decided tie, both bad, or votes split evenly between two choices."""
    pairs = maj[maj["kind"] == "pair"]
    value = pairs["value"]
    return {"ties": int((value == "tie").sum()), "both_bad": int((value == "both_bad").sum()),
            "split_votes": int(value.isna().sum())}


def report(db, sites=None, annotators=None, since=None, until=None, min_agreement=None,
           with_evaluation: bool = False) -> dict:
    """What the Train page's preview says about a selection's labels: conflicts (table), the tasks they hold, and
    the pair tasks a DPO run drops (ties, both bad, split votes). Evaluation-set prompts are left out, as in
    training (labeling.dataset.training_rows)."""
    from labeling import evalset
    from labeling.dataset import _majority, deciding_labels

    labels = deciding_labels(db, sites, annotators, since, until, with_evaluation)
    labels = labels[~labels["prompt_id"].isin(evalset.prompt_ids(db))]
    tasks = labels.drop_duplicates("task_id").set_index("task_id")[["kind", "prompt", "response_a", "response_b"]]
    maj = _majority(labels[labels.kind != "write"]).set_index("task_id").join(tasks, how="left")
    if min_agreement:
        maj = maj[maj["agreement"] >= min_agreement]
    table = find(maj)
    return {"conflicts": table, "n_answers": len(table), "n_tasks": len({t for ts in table["tasks"] for t in ts}),
            **dropped_pairs(maj)}


def preview_lines(rep: dict, data_kind: str, left_out: bool, shown: int = 10) -> list[str]:
    """The Train page preview's words about a `report`: the conflicts (listed), whether they are left out, and the
    pair tasks DPO drops."""
    from html import escape

    lines = []
    if rep["n_answers"]:
        what = ("left out of this run" if left_out else "**included** as they are: the same answer will be trained "
                "as both desirable and undesirable")
        lines.append(f"⚠️ **{rep['n_answers']} answer(s) have conflicting labels** ({rep['n_tasks']} task(s)), "
                     f"{what}. Resolve them on the Data page (Disputed tasks).")
        for r in rep["conflicts"].head(shown).itertuples(index=False):
            lines.append(f"- “{escape(r.answer[:60])}” to “{escape(r.prompt[:50])}”: {r.conflict}")
        if rep["n_answers"] > shown:
            lines.append(f"- … and {rep['n_answers'] - shown} more")
    if data_kind == "pairs":
        dropped = [f"{rep[k]} {w}" for k, w in (("ties", "tie(s)"), ("both_bad", "both-bad pair(s)"),
                                                  ("split_votes", "pair(s) with votes split evenly")) if rep[k]]
        if dropped:
            lines.append("This algorithm learns from a preferred answer only, so it drops " + ", ".join(dropped) + ".")
    return lines

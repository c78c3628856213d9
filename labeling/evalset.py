"""The evaluation set: the prompts every run is scored on and no run ever trains on, so every figure is comparable.

Made once by default (`current`): a stratified slice of the project's prompts, site by site, about 10% and at
least 20 when that still leaves 80% to train on (a project under 20 prompts gets none until an admin adds some).
Which prompts is decided by a hash of their id, so it does not depend on import order. A version is frozen: an
admin's change (add, remove, import a file) makes the next version, and every snapshot records the version its
rows were selected against (storage/migrations.py m006). Labels on these prompts are evaluation data: training
selections leave them out (labeling.dataset.training_rows), runs are scored on them (`rows`).
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import duckdb
import pandas as pd

from storage.db import Database

MIN_PROMPTS = 20     # a smaller project has no default set: every prompt is needed to train


def default_size(n_prompts: int) -> int:
    """How many prompts the default set holds: about 10%, at least 20 while that leaves 80% for training."""
    if n_prompts < MIN_PROMPTS:
        return 0
    return max(math.ceil(0.1 * n_prompts), min(20, n_prompts // 5))


def _order(prompt_id: str) -> str:
    return hashlib.sha256(f"evalset:{prompt_id}".encode()).hexdigest()


def default_prompt_ids(db: Database) -> list[str]:
    """The default set: each site's share of `default_size`, its prompts taken in a fixed pseudo-random order."""
    prompts = db.df("SELECT DISTINCT id, coalesce(site, '') AS site FROM prompts")
    size = default_size(len(prompts))
    if not size:
        return []
    picked = []
    for _, g in prompts.groupby("site"):
        k = max(1, round(size * len(g) / len(prompts))) if len(g) >= 2 else 0
        picked += sorted(g["id"], key=_order)[:k]
    return sorted(picked)


def _latest(db) -> int | None:
    return db.scalar("SELECT max(version) FROM evalset_versions")


def _ids(db, version: int) -> list[str]:
    return [r[0] for r in db.fetchall("SELECT prompt_id FROM evalset_prompts WHERE version = ? ORDER BY 1", [version])]


def save_version(db: Database, prompt_ids, note: str, created_by: str | None = None) -> int:
    """Freeze this prompt list as the next version; returns its number."""
    with db.transaction():
        version = (_latest(db) or 0) + 1
        db.execute("INSERT INTO evalset_versions (version, note, created_by) VALUES (?, ?, ?)",
                   [version, note, created_by])
        ids = sorted(set(prompt_ids))
        if ids:
            db.con.executemany("INSERT INTO evalset_prompts VALUES (?, ?)", [(version, p) for p in ids])
    return version


def current(db: Database) -> dict:
    """{"version", "prompt_ids"} of the evaluation set in force; the default set is made on first use when the
    project has enough prompts. Version 0 (no prompts) means there is none yet."""
    version = _latest(db)
    if version is None and isinstance(db, Database):    # a page's reader only reads: the app's writer makes it
        try:
            with db.transaction():
                version = _latest(db)
                if version is None:
                    ids = default_prompt_ids(db)
                    version = save_version(db, ids, f"default: {len(ids)} prompts, about 10% of each site") if ids \
                        else None
        except duckdb.Error as e:   # a federated site reads its labels from a read-only file: nothing to hold out
            if "read-only" not in str(e):
                raise
    if version is None:
        return {"version": 0, "prompt_ids": []}
    return {"version": int(version), "prompt_ids": _ids(db, version)}


def prompt_ids(db: Database) -> set[str]:
    return set(current(db)["prompt_ids"])


def add(db: Database, ids, who: str | None = None) -> dict:
    """A new version with these prompts added (ids that are no prompt of the project are refused by name)."""
    ids = [i.strip() for i in ids if i and i.strip()]
    known = {r[0] for r in db.fetchall("SELECT DISTINCT id FROM prompts")}
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise ValueError(f"No prompt has the id {unknown[0]!r}; copy ids from the evaluation set's table or the "
                         f"prompt list.")
    cur = set(current(db)["prompt_ids"])
    new = [i for i in ids if i not in cur]
    if not new:
        return {"version": current(db)["version"], "added": 0}
    return {"version": save_version(db, cur | set(new), f"added {len(new)} prompt(s)", who), "added": len(new)}


def remove(db: Database, ids, who: str | None = None) -> dict:
    """A new version without these prompts."""
    cur = set(current(db)["prompt_ids"])
    gone = cur & {i.strip() for i in ids if i}
    if not gone:
        return {"version": current(db)["version"], "removed": 0}
    return {"version": save_version(db, cur - gone, f"removed {len(gone)} prompt(s)", who), "removed": len(gone)}


def import_prompts(db: Database, path: str | Path, site: str | None = None, who: str | None = None) -> dict:
    """Import a file of prompts (JSONL, CSV or Parquet with a `prompt` column, optional `site`) as project prompts
    and add them all to the evaluation set. A file with a problem changes nothing (the importer's report says where)."""
    from labeling.ids import prompt_id
    from labeling.importer import import_file

    report = import_file(db, path, site=site)
    if not report["ok"]:
        return {**report, "added": 0}
    p = Path(path)
    name = p.name.removesuffix(".gz")
    df = (pd.read_parquet(p) if name.endswith(".parquet") else
          pd.read_csv(p) if name.endswith(".csv") else pd.read_json(p, lines=True))
    sites = df["site"] if "site" in df.columns else pd.Series([None] * len(df))
    ids = [prompt_id(str(t), s if isinstance(s, str) and s else site) for t, s in zip(df["prompt"], sites)]
    return {**report, **add(db, ids, who)}


def table(db) -> pd.DataFrame:
    """The set in force for the Data page: prompt id, site, the prompt's start, and its labels."""
    ids = current(db)["prompt_ids"]
    if not ids:
        return pd.DataFrame(columns=["prompt id", "site", "prompt", "labeled tasks"])
    return db.df(f"""SELECT p.id AS "prompt id", any_value(p.site) AS site, left(any_value(p.text), 90) AS prompt,
                            count(DISTINCT a.task_id) AS "labeled tasks"
                     FROM prompts p LEFT JOIN tasks t ON t.prompt_id = p.id
                     LEFT JOIN annotations a ON a.task_id = t.id AND a.value NOT IN ('skip', 'retracted')
                     WHERE p.id IN ({', '.join('?' * len(ids))}) GROUP BY p.id ORDER BY site, prompt""", ids)


def rows(db: Database, data_kind: str = "pairs") -> pd.DataFrame:
    """The labeled rows of the set's prompts, as training rows of `data_kind` (labeling.dataset): what every run is
    scored on. Conflicting labels stay in: a score must not depend on a training filter."""
    from labeling.dataset import training_rows

    ids = sorted(prompt_ids(db))
    df = training_rows(db, data_kind, exclude_evalset=False, drop_conflicts=False)
    if not ids or df.empty:
        return df.iloc[0:0]
    tasks = {r[0] for r in db.fetchall(f"SELECT id FROM tasks WHERE prompt_id IN ({', '.join('?' * len(ids))})", ids)}
    return df[df["task_id"].isin(tasks)].reset_index(drop=True)

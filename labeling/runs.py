"""What the Runs, Compare and Train pages read about runs, on the connection the page hands over (the Runs and
Compare pages pass their thread's reader, so a refresh never waits for a label being saved)."""
from __future__ import annotations

import json

import pandas as pd

from storage.db import Queries


def run_table(db: Queries) -> pd.DataFrame:
    """Every run, newest first, as the Runs page lists it."""
    return db.df("""SELECT id AS run, name, kind, algorithm, state,
                           step || ' / ' || coalesce(total_steps, 0) AS progress,
                           strftime(created_at, '%Y-%m-%d %H:%M') AS created, coalesce(error, '') AS error
                    FROM runs ORDER BY created_at DESC""")


def run_ids(db: Queries, kind: str | None = None, state: str | None = None) -> list[str]:
    """Ids of the runs of this kind ('train', 'generate') and state ('finished', ...), any when None; newest first."""
    return [r[0] for r in db.fetchall("""SELECT id FROM runs WHERE kind = coalesce(?, kind)
                                         AND state = coalesce(?, state) ORDER BY created_at DESC""", [kind, state])]


def run(db: Queries, run_id: str) -> dict | None:
    """One run's row (state, step, total_steps, error, run_dir, config, snapshot_id, origin, ...), None if absent."""
    rows = db.records("SELECT * FROM runs WHERE id = ?", [run_id])
    return rows[0] if rows else None


def config_diff(db: Queries, run_ids: list[str]) -> pd.DataFrame:
    """The settings (flattened, 'lora.r') whose values differ between these runs: one column per run."""
    cfgs = {}
    for rid in run_ids:
        r = run(db, rid)
        if r:
            cfgs[rid] = _flat(json.loads(r["config"]))
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


def names(db: Queries, run_ids: list[str]) -> dict[str, str]:
    """Run id -> the name people typed (or were given), for pickers, legends and tables; unknown ids stay ids."""
    if not run_ids:
        return {}
    found = dict(db.fetchall(f"SELECT id, name FROM runs WHERE id IN ({', '.join('?' * len(run_ids))})", list(run_ids)))
    return {rid: found.get(rid) or rid for rid in run_ids}


def choices(db: Queries, kind: str | None = None, state: str | None = None) -> list[tuple[str, str]]:
    """(name, id) pairs for a picker: people see names, the page gets ids."""
    ids = run_ids(db, kind, state)
    return [(n, rid) for rid, n in names(db, ids).items()]

"""Snapshots: the exact rows a run trains on, frozen to Parquet under a content hash, so a run is reproducible
and two runs can be compared by their data."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from storage.db import Database


def content_hash(df: pd.DataFrame) -> str:
    rows = df.sort_values("example_id").to_dict("records") if "example_id" in df else df.to_dict("records")
    blob = json.dumps(rows, sort_keys=True, default=str, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def create_snapshot(db: Database, home: str | Path, data_kind: str, df: pd.DataFrame, filters: dict | None = None,
                    evalset_version: int | None = None) -> dict:
    """Freeze `df`; `evalset_version` is the evaluation set its rows were selected against (their prompts left
    out), so a run says which set it can be scored on without leaking."""
    sid = content_hash(df)
    path = Path(home) / "snapshots" / f"{sid}.parquet"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        df.to_parquet(tmp, index=False)
        tmp.replace(path)
    if db.scalar("SELECT count(*) FROM snapshots WHERE id = ?", [sid]) == 0:
        db.execute("INSERT INTO snapshots (id, kind, n_rows, path, filters, evalset_version) VALUES (?, ?, ?, ?, ?, ?)",
                   [sid, data_kind, len(df), str(path), json.dumps(filters or {}, default=str), evalset_version])
    return {"id": sid, "path": str(path), "n_rows": len(df), "evalset_version": evalset_version}


def load_snapshot(db: Database, sid: str) -> pd.DataFrame:
    path = db.scalar("SELECT path FROM snapshots WHERE id = ?", [sid])
    if path is None:
        raise KeyError(f"No snapshot {sid}.")
    return pd.read_parquet(path)


def snapshot_diff(db: Database, id_a: str, id_b: str) -> dict:
    """Labels added, removed and changed between two snapshots, keyed by example id."""
    a, b = load_snapshot(db, id_a), load_snapshot(db, id_b)
    cols = [c for c in ("prompt", "chosen", "rejected", "completion", "label") if c in a.columns and c in b.columns]
    a, b = a.set_index("example_id"), b.set_index("example_id")
    added = sorted(set(b.index) - set(a.index))
    removed = sorted(set(a.index) - set(b.index))
    both = sorted(set(a.index) & set(b.index))
    changed = [k for k in both if any(str(a.at[k, c]) != str(b.at[k, c]) for c in cols)]
    return {"added": added, "removed": removed, "changed": changed,
            "n_a": len(a), "n_b": len(b)}

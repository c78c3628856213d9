"""Export labels for training elsewhere: TRL preference (prompt/chosen/rejected), TRL unpaired
(prompt/completion/label) or SFT (prompt/completion), as JSONL or Parquet. Disagreements are resolved by the
majority rule in labeling/dataset.py."""
from __future__ import annotations

from pathlib import Path

from labeling.dataset import training_rows
from storage.db import Database

KINDS = {"preference": "pairs", "unpaired": "unpaired", "sft": "sft"}


def export(db: Database, kind: str, out_path: str | Path, ties: str = "drop", **filters) -> dict:
    if kind not in KINDS:
        raise ValueError(f"Export kind must be one of {', '.join(KINDS)}, not {kind!r}.")
    out = Path(out_path)
    df = training_rows(db, KINDS[kind], ties=ties, **filters)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if out.suffix == ".parquet":
        df.to_parquet(tmp, index=False)
    elif out.suffix in (".jsonl", ".json"):
        df.to_json(tmp, orient="records", lines=True, force_ascii=False)
    else:
        raise ValueError(f"{out.name}: export to .jsonl or .parquet.")
    tmp.chmod(0o600)           # labels and annotator names: readable by this user only
    tmp.replace(out)
    return {"ok": True, "kind": kind, "file": str(out), "rows": len(df),
            "sites": sorted(s for s in df["site"].dropna().unique())}

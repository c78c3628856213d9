"""Import benchmark: `python -m bench.imports [--rows N]` writes an N-row TRL preference JSONL file
(default 1,000,000), imports it into a fresh on-disk database, imports it again (everything a duplicate), and
imports the HH-RLHF harmless test split (bench/data). Prints one JSON object."""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.hh import HH
from labeling.importer import import_file
from storage.db import open_db


def write_preferences(path: Path, n: int) -> None:
    sites = ("customer-support", "maintenance", "compliance")
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"Question {i}: how should the seal on pump {i % 977} be replaced?",
                                "chosen": f"Isolate pump {i % 977}, drain it, and fit seal kit {i % 31}.",
                                "rejected": f"Just keep running pump {i % 977}.", "site": sites[i % 3]}) + "\n")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args(argv)
    out = {"rows": args.rows}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "prefs.jsonl"
        t0 = time.perf_counter()
        write_preferences(src, args.rows)
        out["file_mb"] = round(src.stat().st_size / 1e6, 1)
        out["write_file_s"] = round(time.perf_counter() - t0, 2)
        db = open_db(tmp / "bench.duckdb")
        t0 = time.perf_counter()
        r = import_file(db, src)
        dt = time.perf_counter() - t0
        out.update(import_s=round(dt, 2), rows_per_s=round(args.rows / dt), new=r["new"], ok=r["ok"])
        t0 = time.perf_counter()
        r2 = import_file(db, src)
        dt2 = time.perf_counter() - t0
        out.update(reimport_s=round(dt2, 2), reimport_rows_per_s=round(args.rows / dt2), reimport_new=r2["new"],
                   reimport_duplicates=r2["duplicates"])
        db.close()
        db = open_db(tmp / "hh.duckdb")
        t0 = time.perf_counter()
        h = import_file(db, HH, skip_bad_rows=True)
        out["hh"] = {"rows": h["rows"], "pairs": h["new"], "bad_rows": h["skipped"],
                     "bad_lines": sorted(p["line"] for p in h["report"]), "seconds": round(time.perf_counter() - t0, 2)}
        db.close()
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()

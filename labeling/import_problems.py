"""Line by line, what is wrong with a file DuckDB refused to read, in a person's words (file line, what), and a copy
without the bad lines for "skip bad rows". Only run when the fast reader fails, so their speed does not matter.
"""
from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

MAX_DEPTH = 100           # JSON nested deeper than this is refused (DuckDB's reader stops at 128)


def scan_jsonl(path: Path, problems, limit: int | None = 50) -> set[int]:
    """Slow, exact pass used only when DuckDB refuses the file: the lines that are not UTF-8 JSON objects (the
    first `limit` reported; all of them returned when limit is None, to skip them)."""
    bad: set[int] = set()
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            if limit is not None and len(bad) >= limit:
                break
            if not raw.strip():
                continue
            why = _bad_line(raw)
            if why:
                bad.add(i)
                if len(bad) <= (limit or 200):
                    problems.add(i, None, why)
    if limit is None and len(bad) > 200:
        problems.add(None, None, f"{len(bad) - 200} more lines that are not JSON objects")
    return bad


def _bad_line(raw: bytes) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not valid UTF-8 (byte {e.start})"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return f"not valid JSON ({e.msg} at column {e.colno})"
    except RecursionError:
        return f"nested too deeply (at most {MAX_DEPTH} levels)"
    if not isinstance(obj, dict):
        return "not a JSON object"
    if _depth(obj) > MAX_DEPTH:
        return f"nested too deeply (at most {MAX_DEPTH} levels)"
    return None


def _depth(obj) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, todo = 0, [(obj, 1)]
    while todo:
        o, d = todo.pop()
        deepest = max(deepest, d)
        if isinstance(o, dict):
            todo.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            todo.extend((v, d + 1) for v in o)
    return deepest


def without_lines(path: Path, bad: set[int], folder: Path) -> Path:
    """A copy of the file with the bad lines blanked (blank lines are skipped, so line numbers stay true)."""
    out = folder / "good-lines.jsonl"
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f, open(out, "wb") as w:
        for i, raw in enumerate(f, 1):
            w.write(b"\n" if i in bad else raw if raw.endswith(b"\n") else raw + b"\n")
    return out


def csv_problem(path: Path) -> str | None:
    """The first line of a CSV whose fields do not match its header, said as a person would."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = csv.reader(f, delimiter="\t" if path.name.lower().endswith(".tsv") else ",", strict=True)
            header = next(rows, None)
            for row in rows:
                if row and len(row) != len(header or []):
                    return (f"line {rows.line_num} has {len(row)} fields but the header has {len(header)} "
                            f"({', '.join(header)[:200]}): a stray comma or quote?")
    except csv.Error as e:
        return f"line {rows.line_num} is not valid CSV ({e}): a quote that is not closed?"
    except UnicodeDecodeError as e:
        return f"not valid UTF-8 (byte {e.start})"
    return None


def csv_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        return next(csv.reader(f, delimiter="\t" if path.name.lower().endswith(".tsv") else ","), [])


def unreadable(fmt: str, e: Exception) -> str:
    """A sentence for a file the reader refused, without the engine's wording or paths."""
    detail = str(e).lower()
    if "out of memory" in detail:
        return ("the file needs more memory to read than an import may use: split it into smaller files, or lower "
                "the longest values")
    if "recursion" in detail or "depth" in detail:
        return f"a record is nested too deeply (at most {MAX_DEPTH} levels)"
    if "utf-8" in detail or "unicode" in detail or isinstance(e, UnicodeDecodeError):
        return "the file is not valid UTF-8 text"
    return {"jsonl": "could not be read as JSON lines (one JSON object per line)",
            "csv": "could not be read as CSV (a header line, then one row per line, fields separated by commas)",
            "parquet": "could not be read as Parquet (damaged, or not a Parquet file)"}[fmt]

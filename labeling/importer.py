"""Import prompts, answers and labels from JSONL, CSV or Parquet.

DuckDB parses the file and does hashing, deduplication and inserts set-wise, so large files import at hundreds of
thousands of rows per second. A file with any bad row imports nothing (unless skip_bad_rows), and the report
names file, line and field for every problem. Recognised shapes (after the optional column mapping):

    prompt                                  prompts only (to generate answers for)
    prompt, response                        one answer to label good/bad          -> 'single' task
    prompt, response_a, response_b         two answers to compare               -> 'pair' task
    prompt, completion                      an ideal answer (SFT)                 -> 'write' task + annotation
    prompt, chosen, rejected                a preference (TRL)                    -> 'pair' task + annotation
    chosen, rejected (no prompt)            HH-style whole dialogues sharing a prefix: the prompt is split off
    prompt, completion, label               an unpaired label (TRL KTO)           -> 'single' task + annotation
    messages                                a conversation; the last assistant turn is the completion (SFT)
Optional columns: site, annotator, id. Labels from a file become annotations with source 'import'.
A file past the size or row limit is refused before it is parsed, and the parse's memory is bounded
(labeling.import_limits); what is wrong with a file the reader refuses is found line by line (labeling.import_problems).
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import uuid
from pathlib import Path

import duckdb
import pandas as pd

from labeling import ids, import_limits
from labeling.import_problems import csv_header, csv_problem, scan_jsonl, unreadable, without_lines
from storage.db import Database, lookup_indexes_dropped

log = logging.getLogger("preflab")
REBUILD_INDEXES_FROM = 50_000   # new items in one import: drop the lookup indexes, build them once after
MAX_CHARS = 100_000         # longer text is refused: it cannot be labeled or trained on sensibly
TEXT_FIELDS = ("prompt", "response", "response_a", "response_b", "completion", "chosen", "rejected")
OPTIONAL = ("site", "annotator", "id")
SHAPES = [  # (shape, required fields), first match wins
    ("preference", ("prompt", "chosen", "rejected")),
    ("implicit_preference", ("chosen", "rejected")),
    ("unpaired", ("prompt", "completion", "label")),
    ("sft", ("prompt", "completion")),
    ("pair", ("prompt", "response_a", "response_b")),
    ("single", ("prompt", "response")),
    ("messages", ("messages",)),
    ("prompts", ("prompt",)),
]
TRUE_LABELS = {"true", "1", "good", "yes", "desirable", "thumbs_up", "up"}
FALSE_LABELS = {"false", "0", "bad", "no", "undesirable", "thumbs_down", "down"}


def parse_mapping(items: list[str] | None) -> dict[str, str]:
    """['prompt=question', ...] -> {'prompt': 'question'}: our field name = the file's column name."""
    out = {}
    for item in items or []:
        ours, sep, theirs = item.partition("=")
        if not sep or not ours.strip() or not theirs.strip():
            raise ValueError(f"Column mapping {item!r} should look like prompt=question.")
        out[ours.strip()] = theirs.strip()
    return out


def split_shared_prefix(chosen: str, rejected: str) -> tuple[str, str, str]:
    """HH-RLHF style: both texts are whole dialogues; the prompt is their shared prefix up to and including the
    last '\\n\\nAssistant:' within it, the rest of each is its response."""
    n = 0
    limit = min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    marker = "\n\nAssistant:"
    cut = chosen.rfind(marker, 0, n)     # the marker must lie wholly inside the shared part
    if cut < 0:
        return "", chosen, rejected
    end = cut + len(marker)
    return chosen[:end], chosen[end:].strip(), rejected[end:].strip()


# -- reading ---------------------------------------------------------------------------------------------------------
class _Problems:
    def __init__(self, file: str):
        self.file, self.items = file, []

    def add(self, line: int | None, field: str | None, message: str) -> None:
        self.items.append({"file": self.file, "line": line, "field": field, "message": message})


def _format(path: Path) -> str:
    name = path.name.lower()
    for ext, fmt in ((".jsonl.gz", "jsonl"), (".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "jsonl"),
                     (".csv", "csv"), (".tsv", "csv"), (".parquet", "parquet")):
        if name.endswith(ext):
            return fmt
    raise ValueError(f"{path.name}: unknown file type; use .jsonl, .csv or .parquet.")


def _read(con: duckdb.DuckDBPyConnection, path: Path, fmt: str) -> None:
    """Load the file into the temp table `raw` (all columns as DuckDB infers them) with its row number."""
    p = str(path).replace("'", "''")
    if fmt == "jsonl":
        src = f"read_json('{p}', format='newline_delimited', records=true, union_by_name=true, maximum_object_size=16777216)"
    elif fmt == "csv":
        src = f"read_csv('{p}', header=true, all_varchar=true, strict_mode=true)"
    else:
        src = f"read_parquet('{p}')"
    con.execute(f"CREATE OR REPLACE TEMP TABLE raw AS SELECT row_number() OVER () AS _row, * FROM {src}")


def _line_numbers(path: Path, fmt: str) -> list[int] | None:
    """Map record number -> file line (JSONL skips blank lines; CSV has a header line)."""
    if fmt == "parquet":
        return None
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    lines = []
    with opener(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            if raw.strip():
                lines.append(i)
    return lines[1:] if fmt == "csv" else lines


# -- the import ------------------------------------------------------------------------------------------------------
def import_file(db: Database, path: str | Path, site: str | None = None, required: int | None = None,
                skip_bad_rows: bool = False, mapping: dict[str, str] | None = None,
                annotator: str | None = None) -> dict:
    path = Path(path)
    problems = _Problems(path.name)
    summary = {"ok": False, "file": str(path), "format": None, "shape": None, "rows": 0, "new": 0,
               "duplicates": 0, "errors": 0, "skipped": 0, "tasks_created": 0, "annotations_created": 0,
               "report": problems.items}
    if not path.exists():
        problems.add(None, None, "file not found")
        summary["errors"] = 1
        return summary
    try:
        fmt = summary["format"] = _format(path)
    except ValueError as e:
        problems.add(None, None, str(e).split(": ", 1)[-1])
        summary["errors"] = 1
        return summary
    try:
        import_limits.check(path, fmt, *import_limits.limits(db))
    except ValueError as e:                 # too big, or not the gzip/Parquet it claims to be: nothing is parsed
        problems.add(None, None, str(e))
        summary["errors"] = 1
        return summary
    # parse and check in a scratch database with bounded memory (it spills to `scratch`); the real one is touched
    # only to insert
    scratch = Path(tempfile.mkdtemp(prefix="preflab-import-"))
    con = duckdb.connect(":memory:", config={"memory_limit": import_limits.SCRATCH_MEMORY, "threads": 2,
                                             "temp_directory": str(scratch)})
    con.execute("SET enable_progress_bar = false")      # the command line prints one line of JSON, nothing else
    try:
        read_path, bad_lines = path, set()
        refused = _reads(con, path, fmt)
        if refused is not None:
            log.info("import of %s: the reader refused it: %s", path.name, _first_line(refused))
            if fmt == "jsonl":
                bad_lines = scan_jsonl(path, problems, limit=None if skip_bad_rows else 50)
            if bad_lines and skip_bad_rows:                  # skip them: read the rest
                read_path = without_lines(path, bad_lines, scratch)
                refused = _reads(con, read_path, fmt)
            elif bad_lines:
                summary["errors"] = len(problems.items)
                return summary
        if refused is not None:
            problems.add(None, None, (fmt == "csv" and csv_problem(path)) or unreadable(fmt, refused))
            summary["errors"] = len(problems.items)
            return summary
        cols = [r[0] for r in con.execute("DESCRIBE raw").fetchall()]
        if fmt == "csv" and cols[1:] != csv_header(path):   # the sniffer guessed around a malformed line
            problems.add(None, None, csv_problem(path) or "the header line could not be read as CSV columns")
            summary["errors"] = 1
            return summary
        rename = _resolve_columns(cols, mapping or {}, problems)
        if rename is None:
            summary["errors"] = len(problems.items)
            return summary
        shape = summary["shape"] = next(s for s, need in SHAPES if all(f in rename for f in need))
        _normalise(con, shape, rename, site, read_path, fmt, problems)
        summary["rows"] = int(con.execute("SELECT count(*) FROM raw").fetchone()[0]) + len(bad_lines)
        bad = int(con.execute("SELECT count(*) FROM norm WHERE _bad").fetchone()[0]) + len(bad_lines)
        summary["errors"] = len(problems.items)
        if bad and not skip_bad_rows:
            return summary
        summary["skipped"] = bad
        counts = _insert(db, con, shape, required, annotator, path, scratch)
        summary.update(counts)
        summary["ok"] = True
        return summary
    finally:
        con.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _reads(con, path: Path, fmt: str) -> Exception | None:
    """Read the file into `raw`; the reader's error when it refuses the file."""
    try:
        _read(con, path, fmt)
    except (duckdb.Error, UnicodeDecodeError) as e:
        return e
    return None


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0][:300]


def _resolve_columns(cols: list[str], mapping: dict[str, str], problems: _Problems) -> dict[str, str] | None:
    """Our field -> the file's column."""
    rename = {}
    for ours, theirs in mapping.items():
        if theirs not in cols:
            problems.add(None, theirs, f"the mapping {ours}={theirs} names a column the file does not have "
                                       f"(columns: {', '.join(c for c in cols if c != '_row')})")
            return None
        rename[ours] = theirs
    for c in cols:
        if c in (*TEXT_FIELDS, "label", "messages", *OPTIONAL) and c not in rename and c not in rename.values():
            rename[c] = c
    if not any(all(f in rename for f in need) for _, need in SHAPES):
        problems.add(None, "prompt", "no prompt column found (columns: "
                     f"{', '.join(c for c in cols if c != '_row')}); map one with --map prompt=COLUMN")
        return None
    return rename


def _normalise(con, shape: str, rename: dict[str, str], site: str | None, path: Path, fmt: str,
               problems: _Problems) -> None:
    """Build temp table `norm` (prompt, a, b, label, site, annotator, ext_id, _row, _bad) and report problems."""
    q = lambda c: '"' + rename[c].replace('"', '""') + '"'  # noqa: E731
    types = {r[0]: r[1] for r in con.execute("DESCRIBE raw").fetchall()}

    def opt(c: str) -> str:
        """An optional column as text; a column mixing numbers and text (typed JSON) without JSON's quotes."""
        if c not in rename:
            return "NULL"
        return f"json_extract_string({q(c)}, '$')" if types[rename[c]] == "JSON" else f"CAST({q(c)} AS VARCHAR)"
    site_sql = f"coalesce({opt('site')}, ?)" if site is not None else opt("site")
    params = [site] if site is not None else []
    fields = (None, None, None)
    if shape in ("implicit_preference", "messages"):
        _normalise_python(con, shape, rename, site, params)
    else:
        fields = {"preference": ("prompt", "chosen", "rejected"), "unpaired": ("prompt", "completion", None),
                  "sft": ("prompt", "completion", None), "pair": ("prompt", "response_a", "response_b"),
                  "single": ("prompt", "response", None), "prompts": ("prompt", None, None)}[shape]
        p, a, b = fields
        label = "NULL"
        if shape == "unpaired":
            # mixed JSON types arrive as JSON text ('"bad"'): strip the quotes before comparing
            lab = f"lower(trim(trim(CAST({q('label')} AS VARCHAR)), '\"'))"
            label = (f"CASE WHEN {lab} IN ({_sql_list(TRUE_LABELS)}) THEN TRUE "
                     f"WHEN {lab} IN ({_sql_list(FALSE_LABELS)}) THEN FALSE END")
        text = lambda c: _text(q(c), types[rename[c]]) if c else "NULL"  # noqa: E731
        con.execute(f"""CREATE OR REPLACE TEMP TABLE norm AS SELECT _row,
            {text(p)} AS prompt, {text(a)} AS a, {text(b)} AS b,
            {label} AS label, {site_sql} AS site, {opt('annotator')} AS annotator, {opt('id')} AS ext_id
            FROM raw""", params)
        con.execute("ALTER TABLE norm ADD COLUMN _bad BOOLEAN DEFAULT FALSE")
        # a value given where text belongs (a number, an object, a list): named with what it was
        for col, ours in ((p, "prompt"), (a, "a"), (b, "b")):
            if col and types[rename[col]] != "VARCHAR":   # a text column holds only text (or nothing)
                _flag(con, problems, "raw JOIN norm USING (_row)", f"raw.{q(col)} IS NOT NULL AND norm.{ours} IS NULL "
                      f"AND {_json_type(q(col), types[rename[col]])} <> 'NULL'", rename[col],
                      "should be text" + (f", found {types[rename[col]].lower()}" if types[rename[col]] not in
                                           ("VARCHAR", "JSON") else ""), path, fmt)
        if shape == "unpaired":
            _flag(con, problems, "norm", "label IS NULL", rename["label"], "should be true/false (or good/bad)", path, fmt)
    names = {"prompt": rename.get("prompt", "prompt")}
    if shape == "implicit_preference":
        names.update(prompt=rename["chosen"], a=rename["chosen"], b=rename["rejected"])
    elif shape == "messages":
        names.update(prompt=rename["messages"], a=rename["messages"])
    else:
        names.update(a=rename.get(fields[1]) if fields[1] else None, b=rename.get(fields[2]) if fields[2] else None)
    for ours in ("prompt", "a", "b"):
        if not names.get(ours):
            continue
        what = "no shared prompt before the last 'Assistant:' turn" if shape == "implicit_preference" and ours == "prompt" \
            else "no final assistant turn" if shape == "messages" else "missing"
        _flag(con, problems, "norm", f"{ours} IS NULL", names[ours], what, path, fmt)
        _flag(con, problems, "norm", f"{ours} IS NOT NULL AND trim({ours}) = ''", names[ours], "empty text", path, fmt)
        _flag(con, problems, "norm", f"length({ours}) > {MAX_CHARS}", names[ours],
              f"longer than {MAX_CHARS:,} characters", path, fmt)


def _flag(con, problems, table: str, cond: str, field: str, msg: str, path: Path, fmt: str) -> None:
    rows = [r[0] for r in con.execute(f"SELECT _row FROM {table} WHERE {cond} ORDER BY _row").fetchall()]
    if rows:
        con.execute(f"UPDATE norm SET _bad = TRUE WHERE _row IN (SELECT _row FROM {table} WHERE {cond})")
        _report_rows(problems, rows, field, msg, path, fmt)


def _report_rows(problems: _Problems, rows: list[int], field: str, msg: str, path: Path, fmt: str) -> None:
    lines = _line_numbers(path, fmt) if rows else None
    for r in rows[:200]:
        line = lines[r - 1] if lines and r - 1 < len(lines) else r
        problems.add(line, field, msg)
    if len(rows) > 200:
        problems.add(None, field, f"{msg}: {len(rows) - 200} more rows")


def _text(col: str, dtype: str) -> str:
    """SQL for a column's value as text, NULL where it is not a string (DuckDB types mixed JSON columns as JSON)."""
    if dtype == "VARCHAR":
        return col
    if dtype == "JSON":
        return f"CASE WHEN json_type({col}) = 'VARCHAR' THEN json_extract_string({col}, '$') END"
    return "CAST(NULL AS VARCHAR)"


def _json_type(col: str, dtype: str) -> str:
    return f"coalesce(json_type(raw.{col}), 'NULL')" if dtype == "JSON" else "'value'"


def _sql_list(values) -> str:
    return ", ".join("'" + v + "'" for v in sorted(values))


def _normalise_python(con, shape: str, rename: dict[str, str], site: str | None, params) -> None:
    """The rarer shapes that need string work DuckDB has no function for (HH prefixes, message lists)."""
    df = con.execute("SELECT * FROM raw").df()
    out = []
    for rec in df.to_dict("records"):
        row = {"_row": rec["_row"], "prompt": None, "a": None, "b": None, "label": None,
               "site": _s(rec.get(rename.get("site"))) or site, "annotator": _s(rec.get(rename.get("annotator"))),
               "ext_id": _s(rec.get(rename.get("id"))), "_bad": False}
        if shape == "implicit_preference":
            c, r = rec.get(rename["chosen"]), rec.get(rename["rejected"])
            if isinstance(c, str) and isinstance(r, str):
                row["prompt"], row["a"], row["b"] = split_shared_prefix(c, r)
        else:
            msgs = rec.get(rename["messages"])
            msgs = list(msgs) if msgs is not None and not isinstance(msgs, str) else None
            if msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "assistant":
                turns = msgs[:-1]
                row["a"] = msgs[-1].get("content")
                if len(turns) == 1:
                    row["prompt"] = turns[0].get("content")
                elif turns:
                    row["prompt"] = "\n\n".join(f"{m.get('role', '').title()}: {m.get('content', '')}" for m in turns)
        out.append(row)
    norm = pd.DataFrame(out, columns=["_row", "prompt", "a", "b", "label", "site", "annotator", "ext_id", "_bad"])
    con.register("norm_df", norm)
    con.execute("CREATE OR REPLACE TEMP TABLE norm AS SELECT * FROM norm_df")
    con.unregister("norm_df")


def _s(v):
    return None if v is None or (isinstance(v, float) and v != v) else str(v)


# -- inserting -------------------------------------------------------------------------------------------------------
TASK_KIND = {"preference": "pair", "implicit_preference": "pair", "pair": "pair", "single": "single",
             "unpaired": "single", "sft": "write", "messages": "write", "prompts": None}


def _insert(db: Database, scratch, shape: str, required: int | None, annotator: str | None, path: Path,
            folder: Path) -> dict:
    """Compute content ids in the scratch database, then move the new rows into the real one in one
    transaction. Ids are hashes, so re-importing the same content finds it already there."""
    kind = TASK_KIND[shape]
    labeled = shape in ("preference", "implicit_preference", "unpaired", "sft", "messages")
    req = required or int(db.get_setting("default_required", "1") or 1)
    import_id = uuid.uuid4().hex[:12]
    who = annotator or "import"
    scratch.execute(f"""CREATE OR REPLACE TEMP TABLE staged AS
        SELECT *, {ids.prompt_id_sql('prompt', 'site')} AS prompt_id FROM norm WHERE NOT _bad""")
    scratch.execute(f"""CREATE OR REPLACE TEMP TABLE staged2 AS SELECT *,
        CASE WHEN a IS NOT NULL THEN {ids.response_id_sql('prompt_id', 'a')} END AS a_id,
        CASE WHEN b IS NOT NULL THEN {ids.response_id_sql('prompt_id', 'b')} END AS b_id FROM staged""")
    task_id_sql = (ids.task_id_sql(f"'{kind}'", "prompt_id", "a_id", "b_id", "CAST(label AS VARCHAR)") if kind
                   else "NULL")
    scratch.execute(f"""CREATE OR REPLACE TEMP TABLE staged3 AS SELECT *, {task_id_sql} AS task_id FROM staged2""")
    key = "task_id" if kind else "prompt_id"
    # duplicates inside the file: keep the first occurrence of each item
    scratch.execute(f"""CREATE OR REPLACE TEMP TABLE items AS
        SELECT * FROM staged3 QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY _row) = 1""")
    n_rows = scratch.execute("SELECT count(*) FROM staged3").fetchall()[0][0]
    # handed over as a Parquet file the real database streams from, not as a table in this process's memory
    items_file = str(folder / "items.parquet").replace("'", "''")
    scratch.execute(f"COPY items TO '{items_file}' (FORMAT parquet)")
    import pyarrow.dataset

    arrow = pyarrow.dataset.dataset(str(folder / "items.parquet"))
    n_items = arrow.count_rows()
    with db.lock:   # nothing else writes between counting what is new and inserting it
        con = db.con
        usual = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
        con.execute(f"SET memory_limit = '{import_limits.INSERT_MEMORY}'")   # a big insert spills, not swells
        try:
            with db.transaction():   # its BEGIN also ends any result an earlier statement left open (register needs that)
                con.register("incoming", arrow)
                before = con.execute(f"SELECT count(*) FROM incoming i WHERE EXISTS (SELECT 1 FROM "
                                     f"{'tasks' if kind else 'prompts'} t WHERE t.id = i.{key})").fetchone()[0]
            with lookup_indexes_dropped(db, n_items - before >= REBUILD_INDEXES_FROM), db.transaction():
                con.execute("""INSERT INTO prompts (id, text, site, source, external_id, import_id)
                    SELECT DISTINCT ON (prompt_id) prompt_id, prompt, site, ?, ext_id, ? FROM incoming i
                    WHERE NOT EXISTS (SELECT 1 FROM prompts p WHERE p.id = i.prompt_id)""", [path.name, import_id])
                for col, id_col in (("a", "a_id"), ("b", "b_id")):
                    con.execute(f"""INSERT INTO responses (id, prompt_id, text, origin, import_id)
                        SELECT DISTINCT ON ({id_col}) {id_col}, prompt_id, {col}, 'import', ? FROM incoming i
                        WHERE {id_col} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM responses r WHERE r.id = i.{id_col})
    """, [import_id])
                tasks = annotations = 0
                if kind:
                    n_done = "1" if labeled else "0"
                    tasks = con.execute(f"""INSERT INTO tasks (id, kind, prompt_id, response_a, response_b, site, required,
                            n_done, batch)
                        SELECT task_id, '{kind}', prompt_id, a_id, b_id, site, {1 if labeled else req}, {n_done}, ?
                        FROM incoming i WHERE NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = i.task_id)""",
                                        [import_id]).fetchone()[0]
                    if labeled:
                        value = {"preference": "'a'", "implicit_preference": "'a'", "sft": "'written'",
                                 "messages": "'written'",
                                 "unpaired": "CASE WHEN label THEN 'good' ELSE 'bad' END"}[shape]
                        text = "a" if shape in ("sft", "messages") else "NULL"
                        annotations = con.execute(f"""INSERT INTO annotations (task_id, annotator, value, text, source, site)
                            SELECT task_id, coalesce(annotator, ?), {value}, {text}, 'import', site FROM incoming i
                            WHERE i.task_id IN (SELECT id FROM tasks WHERE batch = ?)""", [who, import_id]).fetchone()[0]
                new = n_items - before
                con.execute("INSERT INTO imports VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, current_timestamp)",
                            [import_id, str(path), shape, None, n_rows, new, n_rows - new, 0])
        finally:
            con.unregister("incoming")
            con.execute(f"SET memory_limit = '{usual}'")
    return {"new": int(new), "duplicates": int(n_rows - new), "tasks_created": int(tasks or 0),
            "annotations_created": int(annotations or 0), "import_id": import_id}

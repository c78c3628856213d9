"""How big an import may be, checked while the file is streamed and before anything parses it.

A 1.4 MB `.jsonl.gz` can expand to hundreds of megabytes and a 46 KB Parquet file to gigabytes; a parser handed
such a file exhausts memory before any row can be refused. So the bytes (after decompression) and the rows are
counted first, in fixed-size chunks or record batches with their dictionaries kept encoded, and the file is refused
with one sentence as soon as a limit is passed. Both limits are settings (`max_import_mb`, `max_import_rows`);
the parse that follows runs in a scratch DuckDB with a memory limit that spills to disk (`SCRATCH_MEMORY`),
and the insert under a limit of the app's database (`INSERT_MEMORY`): a 1M-row, 320 MB file peaks under 1 GB.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

DEFAULT_MAX_MB = 1024            # text after decompression; the 1M-row import benchmark's file is 150 MB
DEFAULT_MAX_ROWS = 2_000_000
SCRATCH_MEMORY = "256MB"         # the scratch database's limit: beyond it DuckDB spills to a temporary folder
INSERT_MEMORY = "256MB"          # the app's database's limit while it inserts an import (then set back)
CHUNK = 1 << 20


class ImportTooBig(ValueError):
    """The file passes a limit: the sentence says which, and how to raise it."""


def limits(db) -> tuple[int, int]:
    """(max bytes, max rows) from the settings, or the defaults."""
    mb = int(float(db.get_setting("max_import_mb", str(DEFAULT_MAX_MB)) or DEFAULT_MAX_MB))
    rows = int(float(db.get_setting("max_import_rows", str(DEFAULT_MAX_ROWS)) or DEFAULT_MAX_ROWS))
    return mb * 1_000_000, rows


def _too_big(what: str, limit: str, setting: str) -> ImportTooBig:
    return ImportTooBig(f"the file is too big to import: {what} (the limit is {limit}; an admin can raise the "
                        f"setting {setting}, or split the file)")


def check(path: Path, fmt: str, max_bytes: int, max_rows: int) -> None:
    """Raise ImportTooBig as soon as the file's text or rows pass a limit; read at most one chunk at a time."""
    if fmt == "parquet":
        return _check_parquet(path, max_bytes, max_rows)
    size, lines = 0, 0
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            while chunk := f.read(CHUNK):
                size += len(chunk)
                lines += chunk.count(b"\n")
                if size > max_bytes:
                    raise _too_big(f"more than {max_bytes // 1_000_000:,} MB of text"
                                   + (" once decompressed" if opener is gzip.open else ""),
                                   f"{max_bytes // 1_000_000:,} MB", "max_import_mb")
                if lines > max_rows + 1:      # + 1: a CSV's header line
                    raise _too_big(f"more than {max_rows:,} lines", f"{max_rows:,} rows", "max_import_rows")
    except (OSError, EOFError, zlib.error):
        raise ValueError("the file is not valid gzip (damaged or cut short)") from None


def _check_parquet(path: Path, max_bytes: int, max_rows: int) -> None:
    """Rows from the footer; text by record batch, string columns read dictionary-encoded (a repeated long value
    costs its length per row, counted without being materialised)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path)
    except (OSError, pa.ArrowException):
        raise ValueError("the file could not be read as Parquet (damaged, or not a Parquet file)") from None
    if f.metadata.num_rows > max_rows:
        raise _too_big(f"{f.metadata.num_rows:,} rows", f"{max_rows:,} rows", "max_import_rows")
    md = f.metadata        # pages as stored, before decoding: bounds what reading one batch can allocate
    stored = sum(md.row_group(g).column(c).total_uncompressed_size
                 for g in range(md.num_row_groups) for c in range(md.num_columns))
    if stored > max_bytes:
        raise _too_big(f"more than {max_bytes // 1_000_000:,} MB once decompressed", f"{max_bytes // 1_000_000:,} MB",
                       "max_import_mb")
    strings = [field.name for field in f.schema_arrow if pa.types.is_string(field.type)
               or pa.types.is_large_string(field.type) or pa.types.is_binary(field.type)]
    f = pq.ParquetFile(path, read_dictionary=strings)
    size = 0
    try:
        for batch in f.iter_batches(batch_size=256):
            for col in batch.columns:
                if pa.types.is_dictionary(col.type):
                    lengths = pc.binary_length(col.dictionary).fill_null(0)
                    size += pc.sum(pc.take(lengths, col.indices.fill_null(0))).as_py() or 0
                else:
                    size += col.nbytes
            if size > max_bytes:
                raise _too_big(f"more than {max_bytes // 1_000_000:,} MB of values once decoded",
                               f"{max_bytes // 1_000_000:,} MB", "max_import_mb")
    except pa.ArrowException:
        raise ValueError("the file could not be read as Parquet (damaged, or not a Parquet file)") from None

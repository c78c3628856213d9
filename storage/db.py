"""The app process's DuckDB database: one shared connection for writes, a cursor per thread for pages that read.

DuckDB allows a single read-write process per file, so only the app opens it. Gradio runs handlers on worker
threads; every write goes through one connection guarded by a re-entrant lock, so a write is committed (and the
lock released) before the caller reports it saved. Pages that only show things (the Runs page's charts, refreshed
every 2 s while people label) read through `reader()` instead: a cursor of the thread's own on the same database,
which sees committed data and never waits for that lock, so a chart refresh does not hold up a label being saved.
"""
from __future__ import annotations

import contextlib
import re
import threading
from pathlib import Path
from typing import Any, Iterator

import duckdb

from storage.migrations import LOOKUP_INDEXES, MIGRATIONS


class Queries:
    """Statements on `con`, each (with its fetch) while holding `_guard()`: the app's shared connection and its lock,
    or a reader's own cursor and no lock."""
    con: duckdb.DuckDBPyConnection

    def _guard(self):
        return contextlib.nullcontext()

    def execute(self, sql: str, params: Any = None) -> duckdb.DuckDBPyConnection:
        with self._guard():
            return self.con.execute(sql, params) if params is not None else self.con.execute(sql)

    def fetchall(self, sql: str, params: Any = None) -> list[tuple]:
        with self._guard():
            return self.execute(sql, params).fetchall()

    def fetchone(self, sql: str, params: Any = None) -> tuple | None:
        with self._guard():
            return self.execute(sql, params).fetchone()

    def scalar(self, sql: str, params: Any = None) -> Any:
        row = self.fetchone(sql, params)
        return None if row is None else row[0]

    def df(self, sql: str, params: Any = None):
        """Query result as a pandas DataFrame."""
        with self._guard():
            return self.execute(sql, params).df()

    def records(self, sql: str, params: Any = None) -> list[dict]:
        with self._guard():
            cur = self.execute(sql, params)
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, row)) for row in cur.fetchall()]


class Reader(Queries):
    """Read-only queries on one thread's own cursor (see `Database.reader`), holding no lock."""

    def __init__(self, cursor: duckdb.DuckDBPyConnection):
        self.con = cursor


def private(path: str | Path) -> None:
    """Readable by this user only (0600): the labels, names and password hashes, and its write-ahead log."""
    for p in (Path(path), Path(f"{path}.wal")):
        with contextlib.suppress(FileNotFoundError):
            p.chmod(0o600)


class DatabaseInUse(OSError):
    """DuckDB lets one process open a database file; a second app (or a site's client) gets this sentence."""

    def __init__(self, path: str, detail: str):
        pid = re.search(r"PID (\d+)", detail)
        who = f"another process (pid {pid.group(1)})" if pid else "another process"
        super().__init__(f"The database {path} is in use by {who}, probably another Preflab app: stop it, or "
                         "start this one with another PREFLAB_HOME.")


class Database(Queries):
    def __init__(self, path: str | Path, read_only: bool = False):
        self.path = str(path)
        if self.path != ":memory:" and not read_only:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            # read_only: a site's federated client reads its labels while no app holds the file (DuckDB locks)
            self.con = duckdb.connect(self.path, read_only=read_only)
        except duckdb.IOException as e:  # the usual cause: another process holds the file
            raise DatabaseInUse(self.path, str(e)) from None
        self.con.execute("SET enable_progress_bar = false")   # a long statement prints nothing to stdout
        if self.path != ":memory:" and not read_only:
            private(self.path)
        self.lock = threading.RLock()
        self._in_tx = 0
        self._local = threading.local()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._spawn = self.con.cursor()        # never queried: readers' cursors are made from it, under _spawn_lock
        self._spawn_lock = threading.Lock()

    def reader(self) -> Reader:
        """Queries for display that must not wait behind writes or other readers: this thread's own cursor
        (made once per thread), seeing what has been committed."""
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            with self._spawn_lock:             # not self.lock: a reader never waits for a write
                cur = self._local.cursor = self._spawn.cursor()
                self._cursors.append(cur)
        return Reader(cur)

    # -- plain access -------------------------------------------------------------------------------------
    def _guard(self):
        return self.lock

    @contextlib.contextmanager
    def transaction(self) -> Iterator["Database"]:
        """All-or-nothing block; nests (inner blocks join the outer transaction)."""
        with self.lock:
            if self._in_tx:
                self._in_tx += 1
                try:
                    yield self
                finally:
                    self._in_tx -= 1
                return
            self.con.execute("BEGIN TRANSACTION")
            self._in_tx = 1
            try:
                yield self
            except BaseException:
                self._in_tx = 0
                self.con.execute("ROLLBACK")
                raise
            else:
                self._in_tx = 0
                self.con.execute("COMMIT")

    # -- settings -----------------------------------------------------------------------------------------
    def get_setting(self, key: str, default: str | None = None) -> str | None:
        value = self.scalar("SELECT value FROM settings WHERE key = ?", [key])
        return default if value is None else value

    def set_setting(self, key: str, value: str) -> None:
        self.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", [key, value])

    def close(self) -> None:
        with self.lock:
            with self._spawn_lock:
                for cur in [*self._cursors, self._spawn]:
                    cur.close()
                self._cursors.clear()
            self.con.close()


def migrate(db: Database) -> list[str]:
    """Apply pending migrations in order; each one and its record commit together or not at all."""
    db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP)")
    todo, applied = set(pending_migrations(db)), []
    for name, sql in MIGRATIONS:
        if name not in todo:
            continue
        with db.transaction():
            db.execute(sql)
            db.execute("INSERT INTO schema_migrations VALUES (?, current_timestamp)", [name])
        applied.append(name)
    return applied


def pending_migrations(db: Database) -> list[str]:
    """The migrations this database lacks: a file a Preflab opened read-only (a federated site's) may be older
    than the code reading it."""
    if not db.scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_migrations'"):
        return [name for name, _ in MIGRATIONS]
    done = {r[0] for r in db.fetchall("SELECT name FROM schema_migrations")}
    return [name for name, _ in MIGRATIONS if name not in done]


def set_lookup_indexes(db: Database, on: bool) -> None:
    """Build (IF NOT EXISTS) or drop the indexes labeling looks tasks, prompts and answers up by."""
    with db.lock:
        for name, target in LOOKUP_INDEXES.items():
            db.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {target}" if on else f"DROP INDEX IF EXISTS {name}")


@contextlib.contextmanager
def lookup_indexes_dropped(db: Database, drop: bool) -> Iterator[None]:
    """For a big import: without the lookup indexes inside the block, built once over all rows after it (cheaper
    than growing them row by row), also when the block fails. Opening the database builds any a crash left out."""
    if not drop:
        yield
        return
    set_lookup_indexes(db, False)
    try:
        yield
    finally:
        set_lookup_indexes(db, True)


def open_db(path: str | Path) -> Database:
    """Open (creating if needed) and migrate: the only way the app gets a database."""
    db = Database(path)
    migrate(db)
    set_lookup_indexes(db, True)
    return db

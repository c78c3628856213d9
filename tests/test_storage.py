"""The schema and its migrations: a blank database gets every table, re-opening applies nothing twice, and a
failing migration leaves no trace."""
import pytest

from storage import migrations
from storage.db import Database, migrate, open_db

EXPECTED_TABLES = {
    "settings", "annotators", "imports", "prompts", "responses", "tasks", "annotations", "leases",
    "snapshots", "runs", "run_scalars", "run_instances", "schema_migrations",
}


def test_blank_database_gets_schema(db):
    tables = {r[0] for r in db.fetchall("SELECT table_name FROM information_schema.tables")}
    assert EXPECTED_TABLES <= tables
    cols = {r[0] for r in db.fetchall(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'annotations'")}
    # every annotation keeps who, what, the order shown, time spent, when, and what it replaced
    assert {"annotator", "task_id", "value", "shown_order", "time_ms", "created_at", "supersedes", "site"} <= cols
    views = {r[0] for r in db.fetchall("SELECT table_name FROM information_schema.tables WHERE table_type = 'VIEW'")}
    assert views == {"current_annotations"}     # the one rule for a person's current label


def test_reopen_applies_nothing_twice(tmp_path):
    path = tmp_path / "p.duckdb"
    db = open_db(path)
    db.execute("INSERT INTO settings VALUES ('k', 'v')")
    db.close()
    db = Database(path)
    assert migrate(db) == []
    assert db.get_setting("k") == "v"
    db.close()


def test_failed_migration_rolls_back(tmp_path, monkeypatch):
    db = open_db(tmp_path / "p.duckdb")
    bad = ("m999_bad", "CREATE TABLE half_done (x INTEGER); SELECT * FROM no_such_table;")
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS + [bad])
    monkeypatch.setattr("storage.db.MIGRATIONS", migrations.MIGRATIONS + [bad])
    with pytest.raises(Exception):
        migrate(db)
    tables = {r[0] for r in db.fetchall("SELECT table_name FROM information_schema.tables")}
    assert "half_done" not in tables
    assert db.scalar("SELECT count(*) FROM schema_migrations WHERE name = 'm999_bad'") == 0


def test_transaction_is_all_or_nothing(db):
    with pytest.raises(RuntimeError):
        with db.transaction():
            db.execute("INSERT INTO settings VALUES ('a', '1')")
            raise RuntimeError("boom")
    assert db.get_setting("a") is None


def test_a_page_reading_never_waits_for_a_write_in_progress(db):
    """The Runs page's refresh reads on its thread's own cursor: while another thread holds the connection in the
    middle of a transaction, the read answers at once, with what was committed before it."""
    import threading

    db.set_setting("labels", "1")
    in_tx, release, seen = threading.Event(), threading.Event(), {}

    def writer():
        with db.transaction():
            db.set_setting("labels", "2")
            in_tx.set()
            release.wait(10)

    def page():
        seen["value"] = db.reader().scalar("SELECT value FROM settings WHERE key = 'labels'")

    w = threading.Thread(target=writer)
    w.start()
    assert in_tx.wait(10)
    r = threading.Thread(target=page)
    r.start()
    r.join(5)
    answered_during_the_write = not r.is_alive()
    release.set()
    w.join(10)
    r.join(10)
    assert answered_during_the_write and seen["value"] == "1"      # not held up, and no uncommitted data
    assert db.reader().scalar("SELECT value FROM settings WHERE key = 'labels'") == "2"   # committed: seen


def test_an_older_database_opened_read_only_says_it_needs_upgrading(tmp_path, monkeypatch):
    """A federated site reads its labels read-only, without migrating: it can tell when its file is older."""
    from storage.db import pending_migrations

    path = tmp_path / "old.duckdb"
    monkeypatch.setattr("storage.db.MIGRATIONS", migrations.MIGRATIONS[:3])
    open_db(path).close()
    monkeypatch.undo()
    db = Database(path, read_only=True)
    assert pending_migrations(db) == [name for name, _ in migrations.MIGRATIONS[3:]]
    assert "m004_current_annotations" in pending_migrations(db)
    db.close()
    db = open_db(path)
    assert pending_migrations(db) == []
    assert db.scalar("SELECT count(*) FROM current_annotations") == 0
    db.close()

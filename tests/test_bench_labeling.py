"""The labeling benchmark (`python -m bench.labeling`) at 1/50 scale: the synthetic database has the promised
shape and every step is timed."""
import pytest

from bench import labeling as B
from storage.db import open_db

pytestmark = pytest.mark.bench


def test_benchmark_builds_its_database_and_times_every_operation(tmp_path):
    db = open_db(tmp_path / "b.duckdb")
    B.build(db, 2_000, 20_000)
    assert db.scalar("SELECT count(*) FROM tasks") == 2_000
    assert db.scalar("SELECT count(*) FROM annotations") == 20_000
    assert db.scalar("SELECT count(*) FROM tasks WHERE n_done = required - 1") == 2_000
    assert db.scalar("""SELECT count(*) FROM (SELECT task_id, annotator FROM annotations GROUP BY ALL
                        HAVING count(*) > 1)""") == 0
    times = B.measure(db, 40, page=True)
    assert len(times) == 40 and all(t > 0 for t in times)
    assert db.scalar("SELECT count(*) FROM annotations") == 20_040
    db.close()

"""Fuzzed broken files: whatever bytes arrive, import never crashes, either imports or explains with a report
naming file and problem, and a refused file leaves the database exactly as it was."""
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labeling.importer import import_file
from storage.db import open_db

TABLES = ("prompts", "responses", "tasks", "annotations")
GOOD = [{"prompt": "Q", "chosen": "A", "rejected": "B"}]

values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20),
                   st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
records = st.dictionaries(st.sampled_from(["prompt", "chosen", "rejected", "completion", "label", "response",
                                            "site", "x"]), values, max_size=5)
garbage = st.binary(max_size=60)


def snapshot(db):
    return {t: db.scalar(f"SELECT count(*) FROM {t}") for t in TABLES}


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(rows=st.lists(records, min_size=1, max_size=6), junk=st.lists(garbage, max_size=2),
       suffix=st.sampled_from([".jsonl", ".csv"]))
def test_broken_files_never_crash_and_never_half_import(tmp_path_factory, rows, junk, suffix):
    tmp = tmp_path_factory.mktemp("fuzz")
    db = open_db(":memory:")
    from labeling.importer import import_file as imp

    seed = tmp / "seed.jsonl"
    seed.write_text(json.dumps(GOOD[0]) + "\n")
    assert imp(db, seed)["ok"]
    before = snapshot(db)
    path = tmp / f"f{suffix}"
    with open(path, "wb") as f:
        for r in rows:
            f.write(json.dumps(r).encode() + b"\n" if suffix == ".jsonl" else
                    (",".join(str(v) for v in r.values()) + "\n").encode())
        for j in junk:
            f.write(j + b"\n")
    r = import_file(db, path)
    assert isinstance(r, dict) and "ok" in r
    if not r["ok"]:
        assert r["report"], "a refused file must say why"
        assert all(p["file"] == path.name and p["message"] for p in r["report"])
        assert snapshot(db) == before
    else:
        after = snapshot(db)
        assert all(after[t] >= before[t] for t in TABLES)
    db.close()

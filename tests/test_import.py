"""Import: every recognised shape, the error report (file, line, field), atomicity, and dedup by content."""
import gzip
import json

import pandas as pd
import pytest

from bench.hh import HH
from labeling.importer import import_file, parse_mapping, split_shared_prefix


def write_jsonl(path, rows, raw_lines=()):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        for line in raw_lines:
            f.write(line + "\n")
    return path


def counts(db):
    return {t: db.scalar(f"SELECT count(*) FROM {t}") for t in ("prompts", "responses", "tasks", "annotations")}


def test_preference_rows_become_pair_tasks_with_labels(db, tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Q1", "chosen": "good", "rejected": "bad", "site": "plant-a"},
                                           {"prompt": "Q2", "chosen": "yes", "rejected": "no", "annotator": "ann"}])
    r = import_file(db, f)
    assert r["ok"] and r["shape"] == "preference" and r["new"] == 2
    assert counts(db) == {"prompts": 2, "responses": 4, "tasks": 2, "annotations": 2}
    rows = db.records("SELECT a.annotator, a.value, a.source, t.site, t.n_done FROM annotations a "
                      "JOIN tasks t ON t.id = a.task_id ORDER BY a.annotator")
    assert rows[0]["annotator"] == "ann" and rows[1]["annotator"] == "import"
    assert all(r["value"] == "a" and r["source"] == "import" and r["n_done"] == 1 for r in rows)
    assert {r["site"] for r in rows} == {"plant-a", None}


@pytest.mark.parametrize("rows,shape,kind,labels", [
    ([{"prompt": "Q"}], "prompts", None, 0),
    ([{"prompt": "Q", "response": "A"}], "single", "single", 0),
    ([{"prompt": "Q", "response_a": "A", "response_b": "B"}], "pair", "pair", 0),
    ([{"prompt": "Q", "completion": "A"}], "sft", "write", 1),
    ([{"prompt": "Q", "completion": "A", "label": True}, {"prompt": "Q", "completion": "B", "label": "bad"}],
     "unpaired", "single", 2),
    ([{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}], "messages", "write", 1),
])
def test_each_shape(db, tmp_path, rows, shape, kind, labels):
    r = import_file(db, write_jsonl(tmp_path / "x.jsonl", rows))
    assert r["ok"], r["report"]
    assert r["shape"] == shape
    assert db.scalar("SELECT count(*) FROM annotations") == labels
    if kind:
        assert db.scalar("SELECT count(DISTINCT kind) FROM tasks") == 1 and db.scalar("SELECT kind FROM tasks") == kind


def test_unpaired_labels_are_mapped(db, tmp_path):
    rows = [{"prompt": "Q", "completion": "A", "label": True}, {"prompt": "Q", "completion": "B", "label": "bad"}]
    import_file(db, write_jsonl(tmp_path / "u.jsonl", rows))
    assert sorted(r[0] for r in db.fetchall("SELECT value FROM annotations")) == ["bad", "good"]


def test_csv_and_parquet_and_mapping(db, tmp_path):
    pd.DataFrame({"question": ["Q1", "Q2"], "best": ["A", "B"], "worst": ["C", "D"]}).to_csv(tmp_path / "x.csv", index=False)
    r = import_file(db, tmp_path / "x.csv", mapping=parse_mapping(["prompt=question", "chosen=best", "rejected=worst"]))
    assert r["ok"] and r["new"] == 2
    pd.DataFrame({"prompt": ["Q3"], "completion": ["E"]}).to_parquet(tmp_path / "y.parquet")
    assert import_file(db, tmp_path / "y.parquet", site="plant-b")["ok"]
    assert db.scalar("SELECT site FROM tasks WHERE kind = 'write'") == "plant-b"


def test_bad_rows_are_reported_by_line_and_field_and_nothing_is_imported(db, tmp_path):
    f = write_jsonl(tmp_path / "bad.jsonl", [
        {"prompt": "Q1", "chosen": "A", "rejected": "B"},
        {"prompt": "", "chosen": "A", "rejected": "B"},           # line 2: empty prompt
        {"prompt": "Q3", "chosen": "A"},                           # line 3: missing rejected
        {"prompt": "Q4", "chosen": {"x": 1}, "rejected": "B"},   # line 4: wrong type
    ])
    r = import_file(db, f)
    assert not r["ok"]
    found = {(p["line"], p["field"]) for p in r["report"]}
    assert {(2, "prompt"), (3, "rejected"), (4, "chosen")} <= found
    assert all(p["file"] == "bad.jsonl" for p in r["report"])
    assert counts(db) == {"prompts": 0, "responses": 0, "tasks": 0, "annotations": 0}
    # asked to, the good rows import and the bad ones are counted
    r = import_file(db, f, skip_bad_rows=True)
    assert r["ok"] and r["new"] == 1 and r["skipped"] == 3


def test_broken_json_and_non_utf8_name_the_line(db, tmp_path):
    f = tmp_path / "broken.jsonl"
    f.write_bytes(b'{"prompt": "ok"}\n{"prompt": "half\n\xff\xfe{"prompt": "x"}\n')
    r = import_file(db, f)
    assert not r["ok"]
    lines = {p["line"]: p["message"] for p in r["report"]}
    assert 2 in lines and "JSON" in lines[2]
    assert 3 in lines and "UTF-8" in lines[3]
    assert counts(db)["prompts"] == 0


def test_over_long_text_is_refused(db, tmp_path):
    r = import_file(db, write_jsonl(tmp_path / "l.jsonl", [{"prompt": "x" * 100_001, "response": "a"}]))
    assert not r["ok"] and "longer than" in r["report"][0]["message"]


def test_no_prompt_column_says_how_to_map(db, tmp_path):
    r = import_file(db, write_jsonl(tmp_path / "n.jsonl", [{"question": "Q"}]))
    assert not r["ok"] and "--map prompt=COLUMN" in r["report"][0]["message"]


def test_duplicates_are_counted_not_duplicated(db, tmp_path):
    rows = [{"prompt": "Q", "chosen": "A", "rejected": "B"}] * 3
    r = import_file(db, write_jsonl(tmp_path / "d.jsonl", rows))
    assert r["new"] == 1 and r["duplicates"] == 2
    r = import_file(db, write_jsonl(tmp_path / "d2.jsonl", rows[:1]))
    assert r["new"] == 0 and r["duplicates"] == 1
    assert counts(db)["tasks"] == 1 and counts(db)["annotations"] == 1


def test_split_shared_prefix():
    p, c, r = split_shared_prefix("\n\nHuman: hi\n\nAssistant: hello there", "\n\nHuman: hi\n\nAssistant: go away")
    assert p == "\n\nHuman: hi\n\nAssistant:" and c == "hello there" and r == "go away"


def test_hh_file_imports_as_pairs_with_prompt_split(db):
    r = import_file(db, HH, skip_bad_rows=True)
    assert r["ok"] and r["rows"] == 2312
    # 4 rows have an empty chosen answer once the shared prompt is split off; they are reported by line
    assert sorted(p["line"] for p in r["report"]) == [87, 517, 926, 1104]
    assert r["new"] == 2308
    with gzip.open(HH, "rt") as f:
        first = json.loads(f.readline())
    prompt, chosen, _ = split_shared_prefix(first["chosen"], first["rejected"])
    row = db.fetchone("""SELECT p.text, ra.text FROM tasks t JOIN prompts p ON p.id = t.prompt_id
                         JOIN responses ra ON ra.id = t.response_a WHERE p.text = ?""", [prompt])
    assert row[0].endswith("\n\nAssistant:") and row[1] == chosen


def test_a_big_import_leaves_the_lookup_indexes_in_place_even_when_it_fails(db, tmp_path, monkeypatch):
    """A big import drops the indexes labeling looks tasks up by and builds them once at the end; afterwards (and
    after a rolled-back import) they are all there again."""
    from labeling import importer
    from storage.migrations import LOOKUP_INDEXES

    def indexes():
        return {r[0] for r in db.fetchall("SELECT index_name FROM duckdb_indexes()")}

    monkeypatch.setattr(importer, "REBUILD_INDEXES_FROM", 2)        # "big" = 2 new items here
    rows = [{"prompt": f"Q{i}", "chosen": "A", "rejected": "B"} for i in range(5)]
    assert import_file(db, write_jsonl(tmp_path / "big.jsonl", rows))["new"] == 5
    assert set(LOOKUP_INDEXES) <= indexes()
    db.execute("DROP TABLE imports")                                  # the import's last insert will fail
    more = [{"prompt": f"R{i}", "chosen": "A", "rejected": "B"} for i in range(5)]
    with pytest.raises(Exception):
        import_file(db, write_jsonl(tmp_path / "more.jsonl", more))
    assert counts(db)["tasks"] == 5                                    # rolled back as a whole
    assert set(LOOKUP_INDEXES) <= indexes()

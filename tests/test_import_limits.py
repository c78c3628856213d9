"""Bounded imports and honest import reports: a file past the size or row limit (counted while decompressing) is
refused with a sentence before it is parsed; 'skip bad rows' skips every kind of bad row; reports name the line
and never show the engine's wording or a temporary path."""
import gzip
import json
import os
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from labeling.importer import import_file
from tests.conftest import ROOT


def gzip_bomb(path, rows, row=None):
    row = row or json.dumps({"prompt": "What is the capital of France? " + "x" * 250, "response": "Paris."}) + "\n"
    with gzip.open(path, "wb", compresslevel=9) as f:
        for _ in range(rows // 1000):
            f.write(row.encode() * 1000)
    return path


def nothing_imported(db):
    return db.scalar("SELECT count(*) FROM prompts") == 0 and db.scalar("SELECT count(*) FROM imports") == 0


def test_a_gzip_that_expands_past_the_size_limit_is_refused_with_a_sentence(db, tmp_path):
    db.set_setting("max_import_mb", "20")
    bomb = gzip_bomb(tmp_path / "bomb.jsonl.gz", 100_000)           # 66 KB that expands to 32 MB
    assert bomb.stat().st_size < 200_000
    r = import_file(db, bomb)
    assert not r["ok"] and nothing_imported(db)
    message = r["report"][0]["message"]
    assert "too big" in message and "20 MB" in message and "once decompressed" in message and "max_import_mb" in message


def test_a_file_past_the_row_limit_is_refused(db, tmp_path):
    db.set_setting("max_import_rows", "1000")
    f = tmp_path / "many.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"Q{i}", "response": "A"}) + "\n" for i in range(1500)))
    r = import_file(db, f)
    assert not r["ok"] and nothing_imported(db)
    assert "more than 1,000 lines" in r["report"][0]["message"] and "max_import_rows" in r["report"][0]["message"]
    db.set_setting("max_import_rows", "2000")
    assert import_file(db, f)["new"] == 1500


def test_a_parquet_file_that_decodes_to_gigabytes_is_refused_without_decoding_it(db, tmp_path):
    big = "x" * 1_000_000
    prompts = pa.DictionaryArray.from_arrays(pa.array([0] * 2000, pa.int32()), pa.array([big]))
    table = pa.table({"prompt": prompts, "response": ["A"] * 2000})
    path = tmp_path / "bomb.parquet"
    pq.write_table(table, path, compression="zstd", use_dictionary=True)
    assert path.stat().st_size < 100_000                            # 2 GB of text once decoded
    r = import_file(db, path)
    assert not r["ok"] and nothing_imported(db)
    assert "too big" in r["report"][0]["message"] and "MB" in r["report"][0]["message"]


def test_a_damaged_gzip_gets_a_sentence(db, tmp_path):
    f = tmp_path / "cut.jsonl.gz"
    data = "".join(json.dumps({"prompt": f"Question {i}", "response": f"Answer {i * 7919}"}) + "\n"
                   for i in range(2000))
    f.write_bytes(gzip.compress(data.encode())[:2000])
    r = import_file(db, f)
    assert not r["ok"] and "not valid gzip" in r["report"][0]["message"]


def test_skip_bad_rows_skips_bad_json_and_bad_utf8_lines(db, tmp_path):
    f = tmp_path / "mixed.jsonl"
    f.write_bytes(b'{"prompt": "Q1", "response": "A1"}\n{bad json\n\xff\xfe{"prompt": "x"}\n[1, 2]\n'
                  b'{"prompt": "Q2", "response": "A2"}\n')
    strict = import_file(db, f)
    assert not strict["ok"] and [p["line"] for p in strict["report"]] == [2, 3, 4]
    r = import_file(db, f, skip_bad_rows=True)
    assert r["ok"] and r["new"] == 2 and r["skipped"] == 3
    assert [p["line"] for p in r["report"]] == [2, 3, 4]
    assert sorted(x[0] for x in db.fetchall("SELECT text FROM prompts")) == ["Q1", "Q2"]


def test_a_site_column_mixing_numbers_and_text_stores_plain_text(db, tmp_path):
    f = tmp_path / "sites.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [{"prompt": "Q1", "response": "A", "site": 7},
                                                    {"prompt": "Q2", "response": "A", "site": "sec-xss"}]))
    assert import_file(db, f)["ok"]
    assert sorted(r[0] for r in db.fetchall("SELECT DISTINCT site FROM tasks")) == ["7", "sec-xss"]


def test_a_malformed_csv_names_the_line_instead_of_a_missing_column(db, tmp_path):
    f = tmp_path / "bad.csv"
    f.write_text('prompt,response,site\n"Q1",A1,s\n"Q2,"A2",s,extra\nQ3,A3\n')
    r = import_file(db, f)
    message = r["report"][0]["message"]
    assert not r["ok"] and "line 3" in message and "no prompt column" not in message
    f2 = tmp_path / "ragged.csv"
    f2.write_text("prompt,response\nQ1,A1\nQ2,A2,extra,fields\n")
    message = import_file(db, f2)["report"][0]["message"]
    assert "line 3 has 4 fields but the header has 2" in message


def test_deeply_nested_json_is_reported_not_crashed_on(db, tmp_path):
    f = tmp_path / "deep.jsonl"
    f.write_text(json.dumps({"prompt": "Q", "response": "A"}) + "\n"
                 + '{"prompt": ' + "[" * 5000 + "]" * 5000 + ', "response": "r"}\n'
                 + '{"prompt": ' + "[" * 150 + "]" * 150 + ', "response": "r"}\n')
    r = import_file(db, f)
    assert not r["ok"] and [(p["line"], p["message"]) for p in r["report"]] == \
        [(2, "nested too deeply (at most 100 levels)"), (3, "nested too deeply (at most 100 levels)")]
    assert import_file(db, f, skip_bad_rows=True)["new"] == 1


def test_reports_carry_no_engine_wording_or_temporary_paths(db, tmp_path):
    cases = {"a.parquet": b"PAR1 not really parquet", "b.csv": b"prompt,response\n\xff\xfe,bad\n",
             "c.jsonl": b'{"prompt": "Q", "response": "A"}\n{"prompt": "Q", "response": "A"'}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        r = import_file(db, tmp_path / name)
        text = json.dumps(r["report"])
        assert not r["ok"] and r["report"], name
        for word in ("Error:", "Exception", "duckdb", "read_json", "read_csv", "LINE 1", str(tmp_path), "/tmp/"):
            assert word not in text, (name, word, text)


@pytest.mark.slow
def test_a_million_row_gzip_bomb_imports_within_1_gb(tmp_path):
    """The review's file: 1.4 MB of .jsonl.gz expanding to 318 MB, 1,000,000 identical rows (peak was 2.0 GB)."""
    bomb = gzip_bomb(tmp_path / "bomb.jsonl.gz", 1_000_000)
    script = textwrap.dedent(f"""
        from app.__main__ import main
        code = main(["import", {str(bomb)!r}])
        # VmHWM: this process's own peak (getrusage would count the forking parent's size)
        print("PEAK", next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")))
    """)
    env = {**os.environ, "PREFLAB_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    summary = json.loads(out.stdout.splitlines()[0])
    peak_mb = int(out.stdout.split("PEAK")[1]) / 1024
    assert summary["ok"] and summary["rows"] == 1_000_000 and summary["new"] == 1, out.stdout + out.stderr
    assert peak_mb < 1024, f"peak {peak_mb:.0f} MB"


def test_the_data_page_does_not_ask_to_tick_a_ticked_box(ctx, tmp_path):
    from app.context import LOCAL_ADMIN
    from app.pages.data import do_import

    f = tmp_path / "bad.csv"
    f.write_text("prompt,response\nQ1,A1\nQ2,A2,extra,fields\n")
    head, _ = do_import(ctx, LOCAL_ADMIN, str(f), "", None, False, "")
    assert head.endswith("or tick 'skip bad rows'.")
    head, report = do_import(ctx, LOCAL_ADMIN, str(f), "", None, True, "")
    assert "Nothing was imported" in head and "tick" not in head and "line 3" in report["message"][0]

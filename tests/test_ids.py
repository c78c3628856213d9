"""Content ids: the Python functions (tasks made in the app) and the SQL the importer runs give the same id for the
same content, also on awkward text, and an imported task is the task the app would make."""
import json

import duckdb
import pytest

from labeling import ids
from labeling import queue as Q
from labeling.importer import import_file

AWKWARD = ["plain", "", "héllo wörld ✓ 日本語 🙂", "line one\nline two\r\n", "tab\there", "quote ' and \"",
           "unit\x1fseparator", "  padded  ", "\u200bzero width", "NULL"]
SITES = [None, "", "site-a", "Zürich ✓"]


def sql_ids(prompt, site, a, b, kind, label):
    con = duckdb.connect()
    try:
        return con.execute(f"""
            WITH x AS (SELECT ?::VARCHAR AS prompt, ?::VARCHAR AS site, ?::VARCHAR AS a, ?::VARCHAR AS b,
                              ?::VARCHAR AS kind, ?::BOOLEAN AS label),
            p AS (SELECT *, {ids.prompt_id_sql('prompt', 'site')} AS pid FROM x),
            r AS (SELECT *, CASE WHEN a IS NOT NULL THEN {ids.response_id_sql('pid', 'a')} END AS a_id,
                            CASE WHEN b IS NOT NULL THEN {ids.response_id_sql('pid', 'b')} END AS b_id FROM p)
            SELECT pid, a_id, b_id, {ids.task_id_sql('kind', 'pid', 'a_id', 'b_id', 'CAST(label AS VARCHAR)')}
            FROM r""",
                           [prompt, site, a, b, kind, label]).fetchone()
    finally:
        con.close()


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("text", AWKWARD)
def test_python_and_sql_ids_agree(text, site):
    for a, b, label in ((text, text + "!", None), (text, None, True), (None, None, False)):
        pid = ids.prompt_id(text, site)
        a_id = ids.response_id(pid, a) if a is not None else None
        b_id = ids.response_id(pid, b) if b is not None else None
        label_text = "" if label is None else str(label).lower()
        expected = (pid, a_id, b_id, ids.task_id("pair", pid, a_id, b_id, label_text))
        got = sql_ids(text, site, a, b, "pair", label)
        assert got == expected


def test_none_and_empty_site_are_the_same_prompt():
    assert ids.prompt_id("p", None) == ids.prompt_id("p", "")
    assert ids.prompt_id("p", "s") != ids.prompt_id("p", None)


def test_an_imported_pair_is_the_task_the_app_makes(db, tmp_path):
    prompt, a, b = "Zürich?\nline two 🙂", "Ja ✓", "Nein\t!"
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": prompt, "response_a": a, "response_b": b, "site": "s1"}) + "\n",
                 encoding="utf-8")
    report = import_file(db, f)
    assert report["ok"] and report["tasks_created"] == 1
    made = Q.create_task(db, "pair", prompt, [a, b], site="s1")
    assert db.scalar("SELECT count(*) FROM tasks") == 1
    assert db.scalar("SELECT id FROM tasks") == made

"""The import benchmark (`python -m bench.imports`) on a small file: a first import adds every row, a second finds
them all duplicates, and the HH test split imports with its known bad rows reported by line."""
import json

import pytest

from bench import imports

pytestmark = pytest.mark.bench


def test_import_benchmark_reports_first_import_reimport_and_hh(capsys):
    out = imports.main(["--rows", "300"])
    assert out == json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["ok"] and out["new"] == 300 and out["rows_per_s"] > 0
    assert out["reimport_new"] == 0 and out["reimport_duplicates"] == 300
    assert out["hh"]["rows"] == 2312 and out["hh"]["bad_rows"] == len(out["hh"]["bad_lines"]) > 0

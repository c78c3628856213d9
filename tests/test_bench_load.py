"""The load benchmark (`python -m bench.load`) at tiny scale: a few annotators label through the real server over
HTTP, every decision is timed, and every acknowledged label is found in the database afterwards."""
import pytest

from bench import load

pytestmark = pytest.mark.bench


def test_annotators_label_over_http_and_no_acknowledged_label_is_lost():
    out = load.run(annotators=4, seconds=6, pace=(0.2, 0.4), tasks=200)
    assert out["errors"] == 0, out["first_errors"]
    assert out["decisions"] >= 8 and out["p95_ms"] is not None and out["p95_ms"] >= out["p50_ms"] > 0
    assert out["acknowledged"] == out["decisions"] and out["stored"] >= out["acknowledged"] and out["lost"] == 0

"""The live benchmark (`python -m bench.live`) end to end on a tiny model and a small labeling database:
every trainer step reaches the Runs page's loss chart, and labeling is measured before, during and after."""
import json

import pytest

from bench import live as bench_live

pytestmark = pytest.mark.bench


def test_every_step_reaches_the_chart_and_labeling_is_measured_during_training(tiny_model_dir, capsys, monkeypatch):
    monkeypatch.setenv("PREFLAB_LABELING_FIRST", "1")
    rc = bench_live.main(["--model", str(tiny_model_dir), "--tasks", "2000", "--annotations", "20000", "--ops", "40",
                          "--steps", "100", "--precision", "fp32"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["job"]["state"] == "finished" and report["job"]["steps"] == 100
    lat = report["chart_latency_s"]
    assert lat["steps"] == 100 and lat["never_shown"] == []
    assert 0 < lat["p50"] <= lat["max"]          # a step shows after it is written, never before
    lab = report["labeling"]
    assert lab["during"]["ops"] >= 40 and lab["before"]["ops"] == lab["after"]["ops"] == 40
    assert lab["paused"]["ops"] >= 50 and lab["during_over_paused_p50"] > 0   # the paired baseline was taken
    # served as the Label page serves it (the job paused per decision), and without that in the same run
    assert report["job"]["labeling_first"] and report["job"]["paused_for_labeling_share"] > 0
    assert lab["without_labeling_first"]["ops"] >= 50 and lab["without_over_paused_p95"] > 0
    assert rc == (0 if report["pass"] else 1)     # the exit code tells whether the targets were met

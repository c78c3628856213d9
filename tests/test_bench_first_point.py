"""The first-chart-point benchmark (`python -m bench.first_point`) end to end on a tiny model: the demo labeled,
Train pressed in the browser with the page's defaults, the Runs page's first point timed, the job stopped."""
import json

import pytest

from bench import first_point
from tests.browser import need_chromium

pytestmark = [pytest.mark.bench, pytest.mark.browser]


def test_first_point_is_timed_from_the_click(tiny_model_dir, capsys):
    need_chromium()
    rc = first_point.main(["--model", str(tiny_model_dir), "--timeout", "180"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["labeled_pairs"] == 153 and out["algorithm"] == "dpo"      # the demo, with the page's default
    assert out["first_point_s"] is not None, out                        # a point was drawn within the timeout
    first_line = min(out.get("first_eval_line_s", 1e9), out.get("first_train_line_s", 1e9))
    assert 0 < first_line <= out["first_point_s"]      # the page draws a point after the job writes it
    assert out["job_state"] in ("stopped", "finished")
    assert rc == (0 if out["pass"] else 1) and out["pass"] == (out["first_point_s"] <= out["target_s"])

"""The active-learning benchmark runs end to end on a tiny model through the product's queue, score jobs and iterate
button: both orders label the same number of tasks with the HH truth, every point is judged on the whole evaluation
set, the unsure order serves the tasks its scores were least sure about, and later rounds continue from the last
adapter."""
import json
import math
from pathlib import Path

import pytest

from bench import active as bench
from bench.hh import hh_pairs
from storage.db import open_db

pytestmark = pytest.mark.bench


def test_active_bench_labels_through_the_queue_for_both_orders(tiny_model_dir, tmp_path, capsys):
    rc = bench.main(["--model", str(tiny_model_dir), "--pool", "24", "--eval", "12", "--round", "6", "--rounds", "2",
                     "--max-length", "64", "--max-prompt-length", "48", "--home", str(tmp_path)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    hh = {(p.prompt, p.chosen, p.rejected) for p in hh_pairs().itertuples()}
    for order in bench.ORDERS:
        rounds = out[order]
        assert [(p["served"], p["labels"]) for p in rounds] == [(6, 6), (6, 12)]
        for p in rounds:
            lo, hi = p["interval"]
            assert p["n"] == 12 and lo <= p["accuracy"] <= hi
        first, second = rounds
        assert first["adapter_init"] is None
        assert second["adapter_init"] == str(Path(tmp_path, order, "runs", first["run_id"], "adapter"))
        db = open_db(tmp_path / order / "preflab.duckdb")
        try:   # every simulated label prefers the answer HH preferred
            labels = db.fetchall("""SELECT p.text, ra.text, rb.text, a.value FROM annotations a
                                    JOIN tasks t ON t.id = a.task_id JOIN prompts p ON p.id = t.prompt_id
                                    JOIN responses ra ON ra.id = t.response_a JOIN responses rb ON rb.id = t.response_b
                                    WHERE a.annotator = 'sim'""")
        finally:
            db.close()
        assert len(labels) == 12
        assert all(((p, a, b) if v == "a" else (p, b, a)) in hh for p, a, b, v in labels)
    # served: the least sure of the tasks open before the round, scored by the base, then by the last run
    assert [p["margin"]["scored_by"] for p in out["unsure"]] == [None, out["unsure"][0]["run_id"]]
    for p in out["unsure"]:
        m = p["margin"]
        assert m["served_max"] <= m["unserved_min"] and m["served_mean"] <= m["open_mean"]
    assert len(out["labels_saved"]) == 2 and out["summary"]
    for point, saved in zip(out["unsure"], out["labels_saved"]):
        paired = saved["paired_vs_random"]           # unsure minus random on the same 12 evaluation pairs
        lo, hi = paired["interval"]
        assert -1 <= lo <= paired["difference"] <= hi <= 1
        assert paired["direction"] == ("better" if lo > 0 else "worse" if hi < 0 else "no measurable change")
    for order in bench.ORDERS:                       # the score job's outcomes agree with the run's own evaluation
        for point in out[order]:
            assert point["accuracy_from_scores"] == pytest.approx(point["accuracy"], abs=1e-6)
    assert out["settings"]["max_steps_per_round"] == math.ceil(6 / 4)

"""The verdict benchmark runs end to end on a tiny model: both algorithms train, each is judged against the base on
the same held-out pairs with Wilson intervals, and the direction agrees with the interval."""
import json

import pytest

from bench import verdict as bench
from bench.hh import HH

pytestmark = pytest.mark.bench


def test_verdict_bench_judges_both_runs_on_the_same_pairs(tiny_model_dir, capsys):
    rc = bench.main(["--model", str(tiny_model_dir), "--data", str(HH), "--train", "16", "--eval-pairs", "24",
                     "--min-eval", "24", "--max-steps", "2", "--max-length", "96", "--max-prompt-length", "64",
                     "--precision", "fp32"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["evaluation_pairs"] == 24 and out["base"]["reward_accuracy"] == 0.5
    for kind in ("dpo", "kto"):
        r = out[kind]
        assert r["steps"] == 2 and r["examples_seen"] == 8
        lo, hi = r["reward_interval"]
        assert lo <= r["reward_accuracy"] <= hi
        expected = "better" if lo > 0.5 else "worse" if hi < 0.5 else "no measurable change"
        assert r["direction"] == expected and r["verdict"].startswith("Prefers the answers your team preferred on")
        assert "of 24 held-out pairs" in r["verdict"]


def test_too_few_held_out_pairs_is_refused(tiny_model_dir):
    with pytest.raises(SystemExit, match="the benchmark needs at least 300"):
        bench.main(["--model", str(tiny_model_dir), "--data", str(HH), "--eval-pairs", "10"])

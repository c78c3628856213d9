"""`python -m bench.federated` (the paper's comparison) end to end on a tiny model: the same rounds for each
setting, held-out accuracy for each and for the base, and KTO-R's sites really hold permuted rows."""
import json

import pytest

from bench import federated as fed_bench

pytestmark = pytest.mark.bench


def test_reproduction_benchmark_reports_dpo_kto_o_and_kto_r_against_the_base(tiny_model_dir, tmp_path, capsys):
    rc = fed_bench.main(["--model", str(tiny_model_dir), "--train", "32", "--held-out", "12", "--sites", "4",
                         "--rounds", "2", "--local-steps", "1", "--max-length", "96", "--max-prompt-length", "64",
                         "--work", str(tmp_path)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["held_out_pairs"] == 12 and out["base"]["reward_accuracy"] == 0.5
    for setting in ("dpo", "kto-o", "kto-r"):
        assert out[setting]["site_steps"] == 4 * 2 * 1 and 0.0 <= out[setting]["reward_accuracy"] <= 1.0
    assert [s["pairs"] for s in out["dpo"]["sites_data"]] == [8, 8, 8, 8]
    assert all(s["good"] == s["bad"] == 8 for s in out["kto-o"]["sites_data"])     # each site keeps its own pairs
    kto_r = out["kto-r"]["sites_data"]
    assert [s["rows"] for s in kto_r] == [16] * 4 and any(s["good"] != 8 for s in kto_r)   # sizes kept, rows moved

"""The fidelity benchmark runs end to end on a tiny model: both comparisons report, m_theta is read off at
matched NLL levels, and eps-DPO's beta is reported."""
import json

import pytest

from bench import fidelity
from bench.hh import HH

pytestmark = pytest.mark.bench


def test_matched_levels_interpolate_each_curve():
    rows = fidelity.matched({"a": [(3.0, 0.0), (2.0, 0.2), (1.0, 0.4)], "b": [(3.0, 0.0), (1.5, 0.1)]}, levels=3)
    assert [r["nll"] for r in rows] == [2.5, 2.0, 1.5]
    assert [r["m_theta_a"] for r in rows] == [0.1, 0.2, 0.3]
    assert [r["m_theta_b"] for r in rows] == pytest.approx([1 / 30, 2 / 30, 0.1], abs=1e-5)
    assert fidelity.matched({"a": [(3.0, 0.0)], "b": [(3.0, 0.0)]}) == []


def test_fidelity_reports_both_comparisons_on_a_tiny_model(tiny_model_dir, capsys):
    rc = fidelity.main(["--model", str(tiny_model_dir), "--data", str(HH), "--pairs", "8", "--held-out", "4",
                        "--probe", "4", "--steps", "4", "--probe-every", "2", "--max-length", "96",
                        "--max-prompt-length", "64", "--learning-rate", "1e-2", "--epsilon", "0.2"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    sft = out["sft_vs_minor_sft"]
    assert sft["held_out_answers"] == 4 and sft["train_answers"] == 8    # deviation read on answers never trained on
    for kind in ("sft", "minor_sft"):
        probe = sft[kind]["probe"]
        assert len(probe) == 3 and probe[0]["m_theta"] == 0.0 and probe[-1]["nll"] < probe[0]["nll"]
    assert sft["at_matched_nll"] and all("m_theta_sft" in r and "m_theta_minor_sft" in r for r in sft["at_matched_nll"])
    dpo = out["dpo_vs_eps_dpo"]
    assert dpo["held_out_pairs"] == 4 and dpo["eps_dpo"]["final_beta"] > 0
    assert 0 <= dpo["dpo"]["held_out"]["reward_accuracy"] <= 1

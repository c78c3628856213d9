"""The training benchmark runs end to end on a tiny model, and on its identical workload our DPO and KTO give TRL's
losses step after step (same token ids, same LoRA start, same batches): the speed figures compare like with like."""
import json

import pytest

from bench import training as bench
from bench.hh import HH

pytestmark = pytest.mark.bench


def test_vs_trl_same_tokens_and_losses(tiny_model_dir, capsys):
    rc = bench.main(["--model", str(tiny_model_dir), "--data", str(HH), "--vs-trl", "--steps", "3",
                     "--pairs", "12", "--max-length", "96", "--max-prompt-length", "64", "--learning-rate", "1e-2"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["vs_trl"]
    assert out["workload"]["pairs"] == 12
    for targets in ("all-linear", "attention"):      # the job's default LoRA targets, and attention only
        for kind in ("dpo", "kto"):
            r = out[targets][kind]
            assert r["same_token_ids"], kind
            assert r["step1_loss_equal"], (kind, r["loss_ours"], r["loss_trl"])
            assert r["max_loss_difference"] < 1e-3, (kind, r["loss_ours"], r["loss_trl"])
            assert len(set(r["loss_ours"])) > 1          # the steps trained (losses moved), not a constant
            for who in ("ours", "trl"):                  # each a whole process: its parts add up to less
                t = r[who]
                assert t["steps"] == 3 and t["steps_per_s"] > 0
                assert 0 < t["import_s"] + t["load_s"] + t["loop_s"] <= t["whole_s"]
                assert t["import_s"] < t["first_point_s"] < t["whole_s"]
            assert r["step_rate_ratio"] > 0 and r["whole_process_ratio"] > 0
            # lazily, one reference pass per micro-batch (and KTO's mismatched pairs): 3 steps, all new batches
            assert r["ours"]["reference_forwards"] == 3 * (2 if kind == "kto" else 1)


def test_missing_model_is_a_sentence(tmp_path, capsys):
    assert bench.main(["--model", str(tmp_path / "none")]) == 2
    assert "No model at" in json.loads(capsys.readouterr().out)["error"]


def test_quality_and_memory_report_on_a_tiny_model(tiny_model_dir, tmp_path, capsys):
    rc = bench.main(["--model", str(tiny_model_dir), "--data", str(HH), "--quality", "--memory",
                     "--quality-train", "16", "--quality-steps", "3", "--quality-held-out", "40", "--max-length", "96", "--max-prompt-length",
                     "64", "--work", str(tmp_path)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    q = out["quality"]
    assert q["train_pairs"] == 16 and q["held_out_pairs"] == 40
    assert q["base"]["reward_accuracy"] == 0.5        # the untrained policy is its own reference: all ties
    for kind in ("dpo", "kto"):
        assert q[kind]["steps"] == 3 and 0.0 <= q[kind]["reward_accuracy"] <= 1.0
    mem = out["memory"]
    assert mem["dpo"]["sequences"] == 2 * mem["sft"]["sequences"] and mem["dpo_over_sft_peak"] > 0


def test_profile_splits_a_kto_step_into_its_phases(tiny_model_dir, capsys):
    rc = bench.main(["--model", str(tiny_model_dir), "--data", str(HH), "--profile", "--algorithms", "kto",
                     "--steps", "2", "--pairs", "12", "--max-length", "96", "--max-prompt-length", "64"])
    assert rc == 0
    p = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["profile"]["kto"]
    shares = p["phases_share"]
    assert sum(shares.values()) == pytest.approx(1.0, abs=0.01) and all(v >= 0 for v in shares.values())
    assert shares["references (no grad)"] > 0 and shares["KL pairs, policy (no grad)"] > 0   # new batches: both ran
    assert 0 < sum(p["top_ops_share"].values()) <= 1.0

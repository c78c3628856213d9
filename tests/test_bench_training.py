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
    for kind in ("dpo", "kto"):
        r = out[kind]
        assert r["same_token_ids"], kind
        assert r["step1_loss_equal"], (kind, r["loss_ours"], r["loss_trl"])
        assert r["max_loss_difference"] < 1e-3, (kind, r["loss_ours"], r["loss_trl"])
        assert len(set(r["loss_ours"])) > 1          # the steps trained (losses moved), not a constant
        assert r["ours_steps_per_s"] > 0 and r["trl_steps_per_s"] > 0 and r["speedup"] > 0


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

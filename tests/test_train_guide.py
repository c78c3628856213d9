"""The Train page's plan in words: steps and passes as the trainer counts them, the measured speed, the estimate
and the "which algorithm fits" line."""
import math

from app import train_guide as G


def test_steps_and_passes_follow_the_trainer():
    assert G.plan(15, "pairs", 4, max_steps=30) == (30, 7.5)            # 4 batches a pass: 30 steps = 7.5 passes
    assert G.plan(16, "pairs", 4, epochs=2) == (8, 2.0)
    assert G.plan(16, "pairs", 2, grad_accum=2, epochs=1, processes=2) == (2, 1.0)
    steps, passes = G.plan(9, "unpaired", 4, epochs=1)                   # a KTO batch of one is dropped: 2 batches
    assert (steps, passes) == (2, 1.0)
    assert G.plan(0, "pairs", 4) == (0, 0.0)


def test_more_than_three_passes_are_warned_in_words():
    assert G.passes_warning(3.0, 12, 16) is None
    warning = G.passes_warning(7.5, 30, 15)
    assert "same 15 examples about 8 times (30 steps)" in warning and "label more" in warning


def test_step_time_is_the_median_gap_between_logged_steps_without_the_first():
    lines = [{"step": 1, "time": 100.0, "split": "train"}, {"step": 0, "time": 50.0, "split": "eval"},
             {"step": 2, "time": 102.0, "split": "train"}, {"step": 3, "time": 104.0, "split": "train"},
             {"step": 5, "time": 112.0, "split": "train"}, {"step": 5, "time": 140.0, "split": "eval"}]
    assert G.step_seconds(lines) == 2.0                                   # gaps 2, 2, 4 (per step)
    assert G.step_seconds(lines[:3]) is None                              # one gap is no measurement


def test_speed_prefers_the_same_algorithm_and_scales_another():
    past = [{"name": "kto run", "model": "m", "algorithm": "kto", "batch_size": 2, "grad_accum": 1, "step_s": 3.0},
            {"name": "old dpo", "model": "m", "algorithm": "dpo", "batch_size": 4, "grad_accum": 2, "step_s": 8.0},
            {"name": "other", "model": "n", "algorithm": "dpo", "batch_size": 1, "grad_accum": 1, "step_s": 1.0}]
    assert G.measured_speed(past, "m", "dpo") == (1.0, "old dpo")
    per_example, source = G.measured_speed(past, "m", "sft")              # only other algorithms: scaled by work
    assert source == "kto run" and math.isclose(per_example, 1.5 / 1.5)
    assert G.measured_speed(past, "x", "dpo") is None


def test_first_guess_and_duration_words():
    step_s = G.first_guess_step_s(100_000_000, 200, 4, "dpo", "cpu")      # 6*1e8*200*4*2 / 2e11
    assert math.isclose(step_s, 4.8)
    assert [G.duration(s) for s in (2, 42, 170, 3600, 4800)] == ["5 s", "40 s", "3 min", "1 h", "1 h 20 min"]
    assert "Time: about **3 min** for 20 steps (a first guess" in G.estimate_line(20, 9.0, None)


def test_the_hint_names_the_algorithm_the_labels_fit():
    assert G.algorithm_hint(30, 10, 5, 0).startswith("Your labels: 30 decided pairs, 10 good answers, 5 bad answers.")
    assert "**DPO** fits pairs" in G.algorithm_hint(30, 10, 5, 0) and "0 " not in G.algorithm_hint(15, 0, 0, 0)
    assert "**KTO** fits good/bad" in G.algorithm_hint(3, 20, 10, 0)
    assert "**SFT**" in G.algorithm_hint(0, 4, 0, 6)
    assert "5 bad answers only" in G.algorithm_hint(0, 0, 5, 0)
    assert G.algorithm_hint(0, 0, 0, 0).startswith("No labels yet")

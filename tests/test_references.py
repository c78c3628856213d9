"""Reference log-probs computed when first needed: the first step starts without a reference pass over the whole
run, the numbers equal those of the up-front pass, a resume computes none that exist, and the first evaluation
says how far its reference pass is."""
import re

import pytest
import torch

from tests.jobdata import make_run
from training.config import JobConfig
from training.trainer import Trainer


def trainer(run) -> Trainer:
    return Trainer(JobConfig.load(run / "config.json"), run).prepare()


@pytest.mark.parametrize("algorithm", ["dpo", "kto"])
def test_lazy_references_equal_the_up_front_ones(tmp_path, tiny_model_dir, algorithm):
    lazy = trainer(make_run(tmp_path / "lazy", tiny_model_dir, algorithm, eval_rows=True, max_steps=6))
    assert lazy.ref_forwards == 0 and not lazy.ref_cache        # nothing computed before the first step
    assert lazy.train() == "finished"
    up_front = trainer(make_run(tmp_path / "up", tiny_model_dir, algorithm, eval_rows=True, max_steps=6))
    up_front.cache_references()
    assert set(lazy.ref_cache) == set(up_front.ref_cache)
    assert any(k.startswith("eval:") for k in lazy.ref_cache)
    if algorithm == "kto":
        assert any("|kl|" in k for k in lazy.ref_cache)
    for key, value in up_front.ref_cache.items():
        assert torch.equal(lazy.ref_cache[key], value), key


def test_resume_does_not_recompute_existing_references(tmp_path, tiny_model_dir):
    # 8 pairs in batches of 2: 4 micro-batches an epoch; steps 5 and 6 meet the same answers again
    full = trainer(make_run(tmp_path / "full", tiny_model_dir, "dpo", max_steps=6))
    assert full.train() == "finished"
    assert full.ref_forwards == 4           # each answer's reference once, later epochs reuse it
    part = make_run(tmp_path / "part", tiny_model_dir, "dpo", max_steps=6)
    first = trainer(part)
    for _ in range(3):
        first.train_step()
    first.save_checkpoint()                 # what a stop does
    assert first.ref_forwards == 3
    resumed = trainer(part)
    assert len(resumed.ref_cache) == 3 * 2 * 2 and resumed.ref_forwards == 0
    assert resumed.train() == "finished"
    assert resumed.ref_forwards == 1        # only step 4's micro-batch was new
    for key, value in full.ref_cache.items():
        assert torch.equal(resumed.ref_cache[key], value), key


def test_first_evaluation_reports_its_reference_progress(tmp_path, tiny_model_dir):
    tr = trainer(make_run(tmp_path / "r", tiny_model_dir, "dpo", eval_rows=True, max_steps=1))
    phases = []
    tr._status = lambda **fields: phases.append(fields["phase"]) if "phase" in fields else None
    tr.evaluate()
    assert phases[0] == "reference log-probs: 0 of 8 answers"            # 4 eval pairs: 8 answers
    assert all(re.fullmatch(r"reference log-probs: [1-7] of 8 answers, about \d+ s left", p) for p in phases[1:-1])
    assert phases[-1] is None                  # then the phase from before (none here) is back
    phases.clear()
    tr.evaluate()                              # the second evaluation reuses them
    assert phases == []


def test_the_first_step_does_not_wait_for_the_starting_evaluation(tmp_path, tiny_model_dir):
    # A new adapter leaves the policy equal to the reference: the step-0 held-out numbers come from the reference
    # pass of the first evaluation, after the first training step, and equal an evaluation run before any step.
    from storage import rundir

    before = trainer(make_run(tmp_path / "before", tiny_model_dir, "dpo", eval_rows=True, max_steps=3))
    expected = before.evaluate()
    run = make_run(tmp_path / "run", tiny_model_dir, "dpo", eval_rows=True, max_steps=3)
    assert trainer(run).train() == "finished"
    lines, _ = rundir.read_metrics(run)
    assert lines[0]["split"] == "train" and lines[0]["step"] == 1      # the first chart point is a training step
    start = [m for m in lines if m["split"] == "eval" and m["step"] == 0]
    assert len(start) == 1
    for name, value in expected.items():
        assert start[0][name] == pytest.approx(value, abs=1e-6), name
    assert start[0]["eval/m_theta"] == 0.0

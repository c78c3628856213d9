"""The trainer as a user meets it: every algorithm trains and leaves what the app reads; a resumed run
reproduces the uninterrupted one; failures end as a sentence, not a trace."""
import json
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest
import torch

from storage import rundir
from tests.jobdata import make_run, wait_until_training
from training.__main__ import run_job
from training.config import JobConfig
from training.trainer import Trainer


def metrics(run_dir, split="train"):
    return [r for r in rundir.read_metrics(run_dir)[0] if r.get("split") == split]


@pytest.mark.parametrize("algorithm", ["sft", "minor_sft", "dpo", "minor_dpo", "eps_dpo", "kto"])
def test_every_algorithm_trains_and_writes_the_run_dir(tmp_path, tiny_model_dir, algorithm):
    run = make_run(tmp_path / algorithm, tiny_model_dir, algorithm, eval_rows=algorithm in ("dpo", "eps_dpo"))
    assert run_job(run) == 0
    status = rundir.read_status(run)
    assert status["state"] == "finished" and status["step"] == 4
    lines = metrics(run)
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    assert all("loss" in r and "m_theta" in r for r in lines)
    inst = pd.concat(pd.read_parquet(f) for f in rundir.instance_files(run))
    assert set(inst["step"]) == {1, 2, 3, 4}
    # at step 1 the policy is the reference: m_theta is zero for every instance
    assert inst[inst.step == 1]["m_theta"].abs().max() < 1e-5
    # the per-instance values are consistent with their definition
    row = inst.iloc[-1]
    assert row["m_theta"] == pytest.approx((row["policy_logp"] - row["ref_logp"]) / row["n_tokens"], abs=1e-6)
    assert set(inst["task_id"]) <= {f"task{i}" for i in range(8)}
    assert (run / "adapter" / "adapter_config.json").exists()
    if algorithm == "eps_dpo":
        betas = [r["kl/beta"] for r in lines]
        assert betas[0] == pytest.approx(0.1) and all("kl/p_epsilon_steps" in r for r in lines)
    if algorithm == "minor_sft":
        assert all(0 < r["minor/coef"] <= 2 for r in lines)
    if algorithm == "kto":
        assert all("kl" in r for r in lines)
        assert set(inst["side"]) == {"desirable", "undesirable"}


def test_mrpo_uses_an_earlier_run_as_reference(tmp_path, tiny_model_dir):
    first = make_run(tmp_path / "dpo", tiny_model_dir, "dpo")
    assert run_job(first) == 0
    run = make_run(tmp_path / "mrpo", tiny_model_dir, "mrpo", references=[str(first / "adapter")])
    assert run_job(run) == 0
    lines = metrics(run)
    assert all(abs(r["mrpo/weight_0"] + r["mrpo/weight_1"] - 1) < 1e-4 for r in lines)
    # m_theta is against the base, as for every algorithm: 0 at step 1, before any update; the deviation from the
    # virtual reference (which differs from the base) is logged under its own name
    assert abs(lines[0]["m_theta"]) < 1e-5 and abs(lines[0]["m_theta_vref"]) > 1e-4
    inst = pd.read_parquet(rundir.instance_files(run)[0])
    assert inst[inst.step == 1]["m_theta"].abs().max() < 1e-5


def test_training_changes_the_adapter_and_improves_dpo_margin(tmp_path, tiny_model_dir):
    run = make_run(tmp_path / "r", tiny_model_dir, "dpo", max_steps=12, learning_rate=5e-3)
    cfg = JobConfig.load(run / "config.json")
    tr = Trainer(cfg, run).prepare()
    before = {k: v.clone() for k, v in tr.model.named_parameters() if v.requires_grad}
    assert tr.train() == "finished"
    after = dict(tr.model.named_parameters())
    assert all(not torch.equal(before[k], after[k]) for k in before if "lora_B" in k)
    lines = metrics(run)
    assert lines[-1]["rewards/margins"] > 0


@pytest.mark.parametrize("lora", [True, False])
def test_gradient_checkpointing_recomputes_and_keeps_the_losses(tmp_path, tiny_model_dir, lora):
    losses, recomputed = {}, []
    for on in (False, True):
        run = make_run(tmp_path / f"gc-{on}", tiny_model_dir, "dpo", max_steps=2, gradient_checkpointing=on,
                       **({} if lora else {"lora": None}))
        tr = Trainer(JobConfig.load(run / "config.json"), run).prepare()
        layers = [m for m in tr.model.modules() if getattr(m, "gradient_checkpointing", False) is True]
        assert bool(layers) == on
        assert not any(isinstance(m, torch.nn.Dropout) and m.training for m in tr.model.modules())
        for m in layers:   # count the checkpointed forwards
            m._gradient_checkpointing_func = (lambda f: lambda *a, **k: recomputed.append(1) or f(*a, **k))(
                m._gradient_checkpointing_func)
        losses[on] = [tr.train_step()[0]["loss"] for _ in range(2)]
    assert recomputed
    assert losses[True] == pytest.approx(losses[False], abs=1e-6)


def test_resume_reproduces_the_uninterrupted_losses(tmp_path, tiny_model_dir):
    full = make_run(tmp_path / "full", tiny_model_dir, "dpo", max_steps=6)
    assert run_job(full) == 0
    part = make_run(tmp_path / "part", tiny_model_dir, "dpo", max_steps=6)
    tr = Trainer(JobConfig.load(part / "config.json"), part).prepare()
    for _ in range(3):
        tr.train_step()
    tr.save_checkpoint()                  # what SIGTERM does, then the process ends
    del tr
    assert run_job(part) == 0             # a new process picks up the checkpoint
    a = {r["step"]: r["loss"] for r in metrics(full)}
    b = {r["step"]: r["loss"] for r in metrics(part)}
    assert sorted(b) == [4, 5, 6]
    for s in (4, 5, 6):
        assert b[s] == pytest.approx(a[s], abs=1e-6)


@pytest.mark.slow
def test_sigterm_stops_with_a_checkpoint_and_resumes(tmp_path, tiny_model_dir):
    run = make_run(tmp_path / "r", tiny_model_dir, "dpo", max_steps=400)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-m", "training", str(run)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_training(run)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    st = rundir.read_status(run)
    stopped_at = st["step"]
    assert st["state"] == "stopped" and stopped_at < 400
    assert list((run / "checkpoints").glob("step-*"))
    assert run_job(run) == 0
    assert rundir.read_status(run)["state"] == "finished"
    steps = [r["step"] for r in metrics(run)]
    assert steps == list(range(1, 401))   # no step lost or repeated


def test_bad_config_fails_with_a_sentence(tmp_path, tiny_model_dir):
    run = make_run(tmp_path / "r", tiny_model_dir, "dpo")
    cfg = json.loads((run / "config.json").read_text())
    cfg["beta"] = -1
    (run / "config.json").write_text(json.dumps(cfg))
    assert run_job(run) == 1
    st = rundir.read_status(run)
    assert st["state"] == "failed" and "beta must be positive" in st["error"]


def test_wrong_data_for_the_algorithm_is_named(tmp_path, tiny_model_dir):
    run = make_run(tmp_path / "r", tiny_model_dir, "dpo")
    pd.DataFrame({"prompt": ["a"], "completion": ["b"]}).to_parquet(run / "data" / "train.parquet")
    assert run_job(run) == 1
    assert "lacks column(s) chosen, rejected" in rundir.read_status(run)["error"]


def test_kto_with_one_class_is_refused(tmp_path, tiny_model_dir):
    run = make_run(tmp_path / "r", tiny_model_dir, "kto")
    df = pd.read_parquet(run / "data" / "train.parquet")
    df[df.label].to_parquet(run / "data" / "train.parquet")
    assert run_job(run) == 1
    assert "only good ones" in rundir.read_status(run)["error"]


def test_nan_loss_fails_with_advice(tmp_path, tiny_model_dir, monkeypatch):
    from training import objectives

    real = objectives.OBJECTIVES["dpo"]

    def nan_fn(cfg, inp):
        res = real(cfg, inp)
        res.loss = res.loss * float("nan")
        return res

    monkeypatch.setitem(objectives.OBJECTIVES, "dpo", nan_fn)
    run = make_run(tmp_path / "r", tiny_model_dir, "dpo")
    assert run_job(run) == 1
    err = rundir.read_status(run)["error"]
    assert "nan" in err.lower() and "learning rate" in err


def test_generate_job_writes_answers(tmp_path, tiny_model_dir):
    run = tmp_path / "gen"
    (run / "data").mkdir(parents=True)
    pd.DataFrame({"prompt": ["Check the pump", "Refund timing?"], "prompt_id": ["p1", "p2"],
                  "site": ["a", "b"]}).to_parquet(run / "data" / "train.parquet")
    JobConfig(kind="generate", model=str(tiny_model_dir), num_samples=2, max_new_tokens=8).save(run / "config.json")
    assert run_job(run) == 0
    gen = pd.read_parquet(run / "generations.parquet")
    assert len(gen) == 4 and set(gen["prompt_id"]) == {"p1", "p2"}


def test_evaluate_job_reports_accuracy(tmp_path, tiny_model_dir):
    run = make_run(tmp_path / "r", tiny_model_dir, "dpo")
    assert run_job(run) == 0
    ev = tmp_path / "ev"
    (ev / "data").mkdir(parents=True)
    (run / "data" / "train.parquet").rename(ev / "data" / "eval.parquet")
    JobConfig(kind="evaluate", algorithm="dpo", model=str(tiny_model_dir), adapter_init=str(run / "adapter"),
              max_new_tokens=8, batch_size=2).save(ev / "config.json")
    assert run_job(ev) == 0
    report = json.loads((ev / "eval.json").read_text())
    assert 0 <= report["eval/accuracy"] <= 1 and len(report["generations"]) > 0

"""The score job behind the labeling queue's "model unsure first" order: one score per open task, checked against
log-probs computed here independently (unpacked, one sequence per row)."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch

from storage import rundir
from tests.jobdata import BAD, GOOD, PROMPTS
from training.__main__ import run_job
from training.config import JobConfig

MAX_LENGTH, MAX_PROMPT = 64, 32


def tasks() -> pd.DataFrame:
    """Three pairs, the same pairs with a and b swapped, and three single answers."""
    rows = [("p%d" % i, "pair", PROMPTS[i], GOOD[i], BAD[i]) for i in range(3)]
    rows += [("swap%d" % i, "pair", PROMPTS[i], BAD[i], GOOD[i]) for i in range(3)]
    rows += [("s%d" % i, "single", PROMPTS[i + 3], (GOOD if i % 2 else BAD)[i + 3], None) for i in range(3)]
    return pd.DataFrame(rows, columns=["task_id", "kind", "prompt", "response_a", "response_b"])


def score_run(run_dir: Path, model_dir: Path, data: pd.DataFrame, **overrides) -> Path:
    (run_dir / "data").mkdir(parents=True, exist_ok=True)
    data.to_parquet(run_dir / rundir.TRAIN_DATA)
    settings = dict(kind="score", model=str(model_dir), batch_size=3, max_length=MAX_LENGTH,
                    max_prompt_length=MAX_PROMPT)
    settings.update(overrides)
    JobConfig(**settings).save(run_dir / rundir.CONFIG)
    return run_dir


def logps(model, tok, prompt: str, response: str) -> tuple[float, int]:
    """Summed response log-prob and response length, one unpacked sequence, as training tokenizes it."""
    from training.data import collate, encode_prompt, encode_response, fit
    from training.modeling import response_logps

    p, r = fit(encode_prompt(tok, prompt), encode_response(tok, response), MAX_LENGTH, MAX_PROMPT)
    with torch.no_grad():
        out = response_logps(model, *collate([(p, r)], tok.pad_token_id))
    return float(out.logps[0]), int(out.n_tokens[0])


def test_base_model_scores_pairs_and_singles_by_per_token_likelihood(tmp_path, tiny_model_dir):
    from training.modeling import load_model, load_tokenizer

    data = tasks()
    run_dir = score_run(tmp_path / "run", tiny_model_dir, data)
    assert run_job(run_dir) == 0
    status = rundir.read_status(run_dir)
    assert status["state"] == "finished" and status["step"] == status["total"] == len(data)
    out = pd.read_parquet(run_dir / rundir.SCORES).set_index("task_id")
    assert sorted(out.index) == sorted(data["task_id"]) and (out["unsure"] >= 0).all()
    assert set(out["method"]) == {"likelihood"}

    model, tok = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    for i in range(3):
        (la, na), (lb, nb) = logps(model, tok, PROMPTS[i], GOOD[i]), logps(model, tok, PROMPTS[i], BAD[i])
        assert out.loc[f"p{i}", "score"] == pytest.approx(la / na - lb / nb, abs=1e-4)
        assert out.loc[f"swap{i}", "score"] == pytest.approx(-out.loc[f"p{i}", "score"], abs=1e-4)
        assert out.loc[f"p{i}", "unsure"] == pytest.approx(abs(out.loc[f"p{i}", "score"]))
    singles = out.loc[["s0", "s1", "s2"]]
    ly, ny = logps(model, tok, PROMPTS[3], BAD[3])
    assert singles.loc["s0", "score"] == pytest.approx(ly / ny, abs=1e-4)
    median = singles["score"].median()
    assert singles["unsure"].tolist() == pytest.approx((singles["score"] - median).abs().tolist())
    assert singles["unsure"].min() == 0   # the median single sits on the boundary


def test_trained_adapter_scores_by_implicit_reward(tmp_path, tiny_model_dir):
    from peft import PeftModel

    from training.config import LoraConfig
    from training.modeling import add_lora, load_model, load_tokenizer

    torch.manual_seed(0)
    trained = add_lora(load_model(tiny_model_dir), LoraConfig())
    with torch.no_grad():   # a fresh adapter is the identity (lora_B = 0): move it as training would
        for name, p in trained.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    trained.save_pretrained(tmp_path / "adapter")

    beta = 0.5
    run_dir = score_run(tmp_path / "run", tiny_model_dir, tasks(), adapter_init=str(tmp_path / "adapter"), beta=beta)
    assert run_job(run_dir) == 0
    out = pd.read_parquet(run_dir / rundir.SCORES).set_index("task_id")
    assert set(out["method"]) == {"implicit reward"} and (out["unsure"] >= 0).all()

    tok = load_tokenizer(tiny_model_dir)
    model = PeftModel.from_pretrained(load_model(tiny_model_dir), str(tmp_path / "adapter")).eval()

    def reward(prompt: str, response: str) -> float:
        pol = logps(model, tok, prompt, response)[0]
        with model.disable_adapter():
            ref = logps(model, tok, prompt, response)[0]
        return beta * (pol - ref)

    expected = reward(PROMPTS[0], GOOD[0]) - reward(PROMPTS[0], BAD[0])
    assert abs(expected) > 1e-3   # the adapter changes the answer: the test could tell it from the base
    assert out.loc["p0", "score"] == pytest.approx(expected, abs=1e-4)
    assert out.loc["p0", "unsure"] == pytest.approx(abs(expected), abs=1e-4)
    single = reward(PROMPTS[4], GOOD[4])
    assert out.loc["s1", "score"] == pytest.approx(single, abs=1e-4)
    assert out.loc["s1", "unsure"] == pytest.approx(abs(single), abs=1e-4)


def test_tasks_without_task_id_fail_with_a_sentence_naming_the_column(tmp_path, tiny_model_dir):
    run_dir = score_run(tmp_path / "run", tiny_model_dir, tasks().drop(columns="task_id"))
    assert run_job(run_dir) == 1
    status = rundir.read_status(run_dir)
    assert status["state"] == "failed" and "task_id" in status["error"] and "Traceback" not in status["error"]
    assert not (run_dir / rundir.SCORES).exists()


def test_stop_ends_the_job_as_stopped_without_scores(tmp_path, tiny_model_dir, monkeypatch):
    """The app's Stop is a SIGTERM; here it arrives while the first batch is being scored."""
    import training.score

    real = training.score.packed_logps

    def first_batch_then_stop(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(training.score, "packed_logps", first_batch_then_stop)
    before = signal.getsignal(signal.SIGTERM)
    run_dir = score_run(tmp_path / "run", tiny_model_dir, tasks(), batch_size=1)
    assert run_job(run_dir) == 0
    status = rundir.read_status(run_dir)
    assert status["state"] == "stopped" and status["step"] < len(tasks())
    assert not (run_dir / rundir.SCORES).exists()
    assert signal.getsignal(signal.SIGTERM) == before   # the test process gets its own handler back


def test_a_later_job_reuses_the_reference_log_probs_of_an_earlier_one(tmp_path, tiny_model_dir, monkeypatch):
    """The base job's log-probs are the reference's: given back to a job with an adapter they replace its second
    forward per answer and give the same scores; wrong ones would change them (so they are really used)."""
    import training.score
    from training.config import LoraConfig
    from training.modeling import add_lora, load_model

    base_dir = score_run(tmp_path / "base", tiny_model_dir, tasks())
    assert run_job(base_dir) == 0
    base = pd.read_parquet(base_dir / rundir.SCORES)
    assert base["ref_logp_a"].notna().all() and base["ref_logp_b"].notna().sum() == 6   # singles have no b

    torch.manual_seed(1)
    trained = add_lora(load_model(tiny_model_dir), LoraConfig())
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    trained.save_pretrained(tmp_path / "adapter")
    adapter = dict(adapter_init=str(tmp_path / "adapter"), beta=0.5)
    forwards = []
    real = training.score.packed_logps
    monkeypatch.setattr(training.score, "packed_logps", lambda *a, **k: (forwards.append(1), real(*a, **k))[1])
    fresh_dir = score_run(tmp_path / "fresh", tiny_model_dir, tasks(), **adapter)
    assert run_job(fresh_dir) == 0
    fresh = pd.read_parquet(fresh_dir / rundir.SCORES).set_index("task_id")
    fresh_forwards, forwards[:] = len(forwards), []

    known = tasks().merge(base[["task_id", "ref_logp_a", "ref_logp_b"]], on="task_id")
    reused_dir = score_run(tmp_path / "reused", tiny_model_dir, known, **adapter)
    assert run_job(reused_dir) == 0
    reused = pd.read_parquet(reused_dir / rundir.SCORES).set_index("task_id")
    assert reused["score"].tolist() == pytest.approx(fresh.loc[reused.index, "score"].tolist(), abs=1e-4)
    assert len(forwards) * 2 == fresh_forwards                  # the policy's forwards only

    known["ref_logp_a"] -= 1.0                                  # a wrong reference moves every score
    wrong_dir = score_run(tmp_path / "wrong", tiny_model_dir, known, **adapter)
    assert run_job(wrong_dir) == 0
    wrong = pd.read_parquet(wrong_dir / rundir.SCORES).set_index("task_id")
    assert wrong.loc["p0", "score"] == pytest.approx(fresh.loc["p0", "score"] + 0.5, abs=1e-4)

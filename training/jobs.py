"""The non-training job kinds: generate (answers to label) and evaluate (held-out metrics + sample answers)."""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from storage import rundir
from training.config import JobConfig
from training.data import DataError


def _load_policy(cfg: JobConfig):
    import torch

    from training.modeling import load_model, load_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = load_tokenizer(cfg.model)
    model = load_model(cfg.model, device=device)
    if cfg.adapter_init:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(cfg.adapter_init)).eval()
    return model, tok


def run_generate(cfg: JobConfig, run_dir: Path) -> str:
    """Sample cfg.num_samples answers for each prompt of data/train.parquet into generations.parquet."""
    from training.generate import generate

    path = run_dir / rundir.TRAIN_DATA
    if not path.exists():
        raise DataError(f"No prompts to answer: {path} does not exist.")
    df = pd.read_parquet(path)
    if "prompt" not in df.columns or df.empty:
        raise DataError("The prompts file needs a non-empty 'prompt' column.")
    model, tok = _load_policy(cfg)
    rows, prompts = [], df["prompt"].astype(str).tolist()
    rundir.write_status(run_dir, state="running", step=0, total=len(prompts), phase="generating")
    t0, chunk = time.time(), 8
    for s in range(0, len(prompts), chunk):
        answers = generate(model, tok, prompts[s:s + chunk], cfg.num_samples, cfg.temperature, cfg.top_p,
                           cfg.max_new_tokens, batch_size=chunk, seed=cfg.seed + s)
        for i, samples in enumerate(answers):
            src = df.iloc[s + i]
            for k, text in enumerate(samples):
                rows.append({"prompt_id": src.get("prompt_id"), "prompt": prompts[s + i], "site": src.get("site"),
                             "sample": k, "response": text})
        done = min(s + chunk, len(prompts))
        rundir.write_status(run_dir, step=done, eta_s=round((time.time() - t0) / done * (len(prompts) - done), 1))
    tmp = run_dir / f".{rundir.GENERATIONS}.tmp"
    pd.DataFrame(rows).to_parquet(tmp)
    tmp.rename(run_dir / rundir.GENERATIONS)
    rundir.write_status(run_dir, state="finished", phase="finished")
    return "finished"


def run_evaluate(cfg: JobConfig, run_dir: Path) -> str:
    """Held-out preference accuracy by implicit reward, mean m_theta, and a few generations -> eval.json."""
    from training.generate import generate
    from training.trainer import Trainer

    eval_path = run_dir / rundir.EVAL_DATA
    if not eval_path.exists():
        raise DataError(f"Nothing to evaluate: {eval_path} does not exist.")
    if not (run_dir / rundir.TRAIN_DATA).exists():   # the trainer's loader wants a train split; reuse eval
        (run_dir / rundir.DATA).mkdir(exist_ok=True)
        (run_dir / rundir.TRAIN_DATA).write_bytes(eval_path.read_bytes())
    cfg.max_steps = 1
    trainer = Trainer(cfg, run_dir).prepare()
    report = trainer.evaluate()
    prompts = trainer.eval_rows["prompt"].astype(str).drop_duplicates().head(8).tolist()
    answers = generate(trainer.model, trainer.tokenizer, prompts, 1, 0.0, 1.0, cfg.max_new_tokens)
    report["generations"] = [{"prompt": p, "response": a[0]} for p, a in zip(prompts, answers)]
    report["n_eval"] = len(trainer.eval_examples)
    rundir.write_json_atomic(run_dir / rundir.EVAL_REPORT, report)
    rundir.write_status(run_dir, state="finished", phase="finished")
    return "finished"

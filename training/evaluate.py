"""The evaluate job (`kind: evaluate`): held-out preference accuracy by implicit reward, mean m_theta and a few
greedy answers of a trained run, into eval.json."""
from __future__ import annotations

from pathlib import Path

from storage import rundir
from training.config import JobConfig
from training.data import DataError
from training.generate import generate
from training.trainer import Trainer


def run_evaluate(cfg: JobConfig, run_dir: Path) -> str:
    """Held-out preference accuracy by implicit reward, mean m_theta, and a few generations -> eval.json."""
    eval_path = run_dir / rundir.EVAL_DATA
    if not eval_path.exists():
        raise DataError(f"Nothing to evaluate: {eval_path} does not exist.")
    if not (run_dir / rundir.TRAIN_DATA).exists():   # the trainer's loader wants a train split; reuse eval
        (run_dir / rundir.DATA).mkdir(exist_ok=True)
        (run_dir / rundir.TRAIN_DATA).write_bytes(eval_path.read_bytes())
    cfg.max_steps = 1
    trainer = Trainer(cfg, run_dir).prepare()
    report = trainer.evaluate()
    prompts = sorted(set(trainer.eval_rows["prompt"].astype(str)))[:8]   # the same prompts as every run's answers
    answers = generate(trainer.model, trainer.tokenizer, prompts, 1, 0.0, 1.0, cfg.max_new_tokens)
    report["generations"] = [{"prompt": p, "response": a[0]} for p, a in zip(prompts, answers)]
    report["n_eval"] = len(trainer.eval_examples)
    rundir.write_json_atomic(run_dir / rundir.EVAL_REPORT, report)
    rundir.write_status(run_dir, state="finished", phase="finished")
    return "finished"

"""Small labeled datasets and run directories for trainer tests."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from training.config import JobConfig

PROMPTS = ["Check the pump on line three", "How do I reset my password?", "A solvent spilled in bay 2",
           "When will my refund arrive?", "The belt on conveyor 4 is worn", "What did the audit find?",
           "Bearing housing is hot", "Customer wants to cancel"]
GOOD = ["Stop the pump, then torque the housing bolts.", "Use the account page and follow the link.",
        "Report it to the safety officer within one hour.", "Within five business days.",
        "Replace the belt and log the part number.", "Two missing signatures on the batch record.",
        "Shut it down and check the lubrication.", "Offer the retention discount, then cancel if asked."]
BAD = ["No.", "Call us maybe later", "Ignore it", "Never", "Keep running it", "Nothing", "It is fine", "Cancel"]


def pairs(n: int = 8) -> pd.DataFrame:
    k = [i % len(PROMPTS) for i in range(n)]
    return pd.DataFrame({"prompt": [PROMPTS[i] for i in k], "chosen": [GOOD[i] for i in k],
                         "rejected": [BAD[i] for i in k], "example_id": [f"ex{i}" for i in range(n)],
                         "task_id": [f"task{i}" for i in range(n)],
                         "site": ["plant-a" if i % 2 else "plant-b" for i in range(n)]})


def data_for(algorithm: str, n: int = 8) -> pd.DataFrame:
    df = pairs(n)
    if algorithm in ("sft", "minor_sft"):
        return df.rename(columns={"chosen": "completion"}).drop(columns="rejected")
    if algorithm == "kto":
        good = df.rename(columns={"chosen": "completion"}).drop(columns="rejected").assign(label=True)
        bad = df.rename(columns={"rejected": "completion"}).drop(columns="chosen").assign(label=False)
        bad["example_id"] = bad["example_id"] + "b"
        return pd.concat([good, bad], ignore_index=True)
    return df


def make_run(run_dir: Path, model_dir: Path, algorithm: str = "dpo", eval_rows: bool = False, **overrides) -> Path:
    run_dir = Path(run_dir)
    (run_dir / "data").mkdir(parents=True, exist_ok=True)
    data_for(algorithm).to_parquet(run_dir / "data" / "train.parquet")
    if eval_rows:
        data_for(algorithm, 4).to_parquet(run_dir / "data" / "eval.parquet")
    settings = dict(algorithm=algorithm, model=str(model_dir), batch_size=2, max_steps=4, learning_rate=1e-3,
                    checkpoint_every=0, max_length=64, max_prompt_length=32)
    settings.update(overrides)
    JobConfig(**settings).save(run_dir / "config.json")
    return run_dir


def wait_until_training(run_dir: Path, step: int = 2, timeout_s: float = 120) -> None:
    """Until status.json says the job is running at `step` or later."""
    import time

    from storage import rundir

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        st = rundir.read_status(run_dir) or {}
        if st.get("step", 0) >= step and st.get("state") == "running":
            return
        time.sleep(0.2)
    raise AssertionError(f"The job did not reach step {step} within {timeout_s} s: {rundir.read_status(run_dir)}")

"""Regenerate app/demo/demo.jsonl: two candidate answers per demo prompt from the default model, produced by the
project's own generate job (`python -m training RUN_DIR` with kind=generate). Run once; the result is committed.

    python -m app.demo.make_demo [MODEL_DIR]
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pandas as pd

from app.demo.prompts import all_prompts
from training.__main__ import run_job
from training.config import JobConfig

OUT = Path(__file__).with_name("demo.jsonl")


def main(model_dir: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        (run / "data").mkdir()
        rows = [{"prompt": p, "site": s, "prompt_id": str(i)} for i, (s, p) in enumerate(all_prompts())]
        pd.DataFrame(rows).to_parquet(run / "data" / "train.parquet")
        JobConfig(kind="generate", model=model_dir, num_samples=2, temperature=0.8, top_p=0.95,
                  max_new_tokens=120, seed=7).save(run / "config.json")
        if run_job(run) != 0:
            raise SystemExit(json.loads((run / "status.json").read_text()).get("error"))
        gen = pd.read_parquet(run / "generations.parquet")
    with open(OUT, "w", encoding="utf-8") as f:
        for (pid, prompt, site), g in gen.groupby(["prompt_id", "prompt", "site"], sort=False):
            answers = g.sort_values("sample")["response"].tolist()
            f.write(json.dumps({"prompt": prompt, "response_a": answers[0], "response_b": answers[1], "site": site},
                               ensure_ascii=False) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data/models/smollm2-135m-instruct")

"""Sampling answers from a model, for the queues people label, evaluation and the demo data; and the generate job
(`kind: generate`), which answers a run's prompts into generations.parquet."""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import torch

from storage import rundir
from training.config import JobConfig
from training.data import DataError, encode_prompt


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], num_samples: int = 1, temperature: float = 0.8, top_p: float = 0.95,
             max_new_tokens: int = 128, batch_size: int = 8, seed: int = 0) -> list[list[str]]:
    """`num_samples` answers per prompt (chat template applied when the tokenizer has one). Greedy when
    temperature is 0. Prompts are left-padded in batches; results come back in prompt order."""
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    out: list[list[str]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        T = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), T), pad, dtype=torch.long)
        attn = torch.zeros((len(idx), T), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, T - len(encoded[i]):] = torch.tensor(encoded[i])
            attn[r, T - len(encoded[i]):] = 1
        kwargs = dict(do_sample=temperature > 0, max_new_tokens=max_new_tokens, pad_token_id=pad,
                      num_return_sequences=num_samples, eos_token_id=tokenizer.eos_token_id)
        if temperature > 0:
            kwargs.update(temperature=temperature, top_p=top_p)
        gen = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), **kwargs)
        texts = tokenizer.batch_decode(gen[:, T:], skip_special_tokens=True)
        for r, i in enumerate(idx):
            out[i] = [t.strip() for t in texts[r * num_samples:(r + 1) * num_samples]]
    model.train(was_training)
    return out


def _load_policy(cfg: JobConfig):
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

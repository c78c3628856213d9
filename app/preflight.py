"""Pre-flight check: what is wrong with the data or settings, in plain words, before any compute is spent.
Returns problems (block the run) and warnings (the user may go ahead)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd

from training import algorithms
from training.config import ConfigError, JobConfig


def check(cfg: JobConfig, data: pd.DataFrame, home: Path, tokenizer=None) -> dict:
    problems, warnings, facts = [], [], {}
    try:
        cfg.validate()
    except ConfigError as e:
        problems.append(str(e))
    algo = algorithms.ALGORITHMS.get(cfg.algorithm)   # an unknown name is already a problem from validate()
    kind = algo.data_kind if algo else None
    facts["rows"] = len(data)
    if data.empty and algo:
        problems.append(f"{algo.title} trains on {algo.needs}, and the selection has none.")
    if not Path(cfg.model).joinpath("config.json").exists():
        problems.append(f"No model at {cfg.model}: give a folder that holds a Hugging Face model (config.json).")
    if kind == "unpaired" and not data.empty and "label" in data:
        n_good, n_bad = int(data["label"].sum()), int((~data["label"].astype(bool)).sum())
        facts.update(good=n_good, bad=n_bad)
        problem = algorithms.kto_classes_problem(n_good, n_bad)
        if problem:
            problems.append(problem)
        else:
            from training.losses import kto_desirable_weight

            facts["suggested_desirable_weight"] = kto_desirable_weight(n_good, n_bad, cfg.undesirable_weight)
    if not data.empty and len(data) < cfg.batch_size:
        warnings.append(f"Only {len(data)} example(s), fewer than one batch of {cfg.batch_size}.")
    text_cols = [c for c in ("prompt", "chosen", "rejected", "completion") if c in data]
    if not data.empty:
        dup = int(data.duplicated(subset=text_cols).sum())
        if dup:
            warnings.append(f"{dup} example(s) are exact duplicates of another; they will count twice.")
    if tokenizer is not None and not data.empty:
        sample = data.head(2000)
        p_len = sample["prompt"].map(lambda t: len(tokenizer(str(t))["input_ids"]))
        resp_cols = [c for c in ("chosen", "rejected", "completion") if c in sample]
        r_len = sample[resp_cols].apply(lambda col: col.map(lambda t: len(tokenizer(str(t))["input_ids"]))).max(axis=1)
        long_p = int((p_len > cfg.max_prompt_length).sum())
        long_all = int((p_len.clip(upper=cfg.max_prompt_length) + r_len + 1 > cfg.max_length).sum())
        if long_p:
            warnings.append(f"{long_p} prompt(s) are longer than {cfg.max_prompt_length} tokens; their beginning "
                            "will be cut off.")
        if long_all:
            warnings.append(f"{long_all} answer(s) do not fit in {cfg.max_length} tokens with their prompt; their end "
                            "will be cut off.")
        facts["longest_tokens"] = int((p_len + r_len).max())
    mem = estimate_memory_gb(cfg)
    facts["memory_estimate_gb"] = round(mem, 1)
    avail = available_memory_gb()
    if avail is not None and mem > avail:
        problems.append(f"This run needs about {mem:.1f} GB of memory and the device has {avail:.1f} GB free: lower "
                        "batch_size or max_length, or use LoRA.")
    free = shutil.disk_usage(home if Path(home).exists() else "/").free / 1e9
    facts["free_disk_gb"] = round(free, 1)
    if free < 2:
        problems.append(f"Only {free:.1f} GB of disk is free under {home}; a run needs about 2 GB for checkpoints.")
    return {"ok": not problems, "problems": problems, "warnings": warnings, "facts": facts}


def estimate_memory_gb(cfg: JobConfig) -> float:
    """Rough peak: weights (fp32) + optimizer state for what trains + activations for one micro-batch."""
    params = _param_count(cfg.model)
    weights = params * 4
    trainable = params * (0.01 if cfg.lora else 1.0)
    optimizer = trainable * 4 * 3            # grads + Adam's two moments
    algo = algorithms.ALGORITHMS.get(cfg.algorithm)
    seqs = cfg.batch_size * (2 if algo and algo.data_kind == "pairs" else 1)
    hidden, layers = _shape(cfg.model)
    activations = seqs * cfg.max_length * hidden * layers * 4 * 20
    extra = weights if cfg.lora is None and algo and algo.needs_ref_logits else 0   # frozen reference copy
    return (weights + optimizer + activations + extra) / 1e9


def _config(model: str) -> dict:
    import json

    try:
        return json.loads((Path(model) / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def _shape(model: str) -> tuple[int, int]:
    c = _config(model)
    return int(c.get("hidden_size", 768)), int(c.get("num_hidden_layers", 12))


def _param_count(model: str) -> float:
    c = _config(model)
    h, n, v = c.get("hidden_size", 768), c.get("num_hidden_layers", 12), c.get("vocab_size", 50000)
    inter = c.get("intermediate_size", 4 * h)
    return v * h + n * (4 * h * h + 3 * h * inter)


def available_memory_gb() -> float | None:
    try:
        import torch

        if torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info()
            return free / 1e9
    except Exception:  # noqa: BLE001
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1e9
    except (ValueError, OSError):
        return None

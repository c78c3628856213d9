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
    plan = None
    if not Path(cfg.model).joinpath("config.json").exists():
        problems.append(f"No model at {cfg.model}: give a folder that holds a Hugging Face model (config.json).")
    else:
        plan = _plan(cfg, problems)
    if plan is not None:
        facts.update(architecture=plan.architecture, parameters=plan.params, trainable_parameters=plan.trainable,
                     lora_modules=plan.lora_modules)
        if cfg.pack_prompts and plan.packing_problem:
            warnings.append(plan.packing_problem)
    if cfg.quantization != "none":
        from training.modeling import quantization_problem

        problem = quantization_problem(cfg.quantization)
        if problem:
            problems.append(problem)
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
    if plan is not None:
        mem = estimate_memory_gb(cfg, plan)
        facts["memory_estimate_gb"] = round(mem, 1)
        avail = available_memory_gb()
        if avail is not None and mem > avail:
            problems.append(f"This run needs about {mem:.1f} GB of memory and the device has {avail:.1f} GB free: "
                            "lower batch_size or max_length, turn on gradient_checkpointing, or use LoRA (on a GPU, "
                            "4-bit quantization too).")
    free = shutil.disk_usage(home if Path(home).exists() else "/").free / 1e9
    facts["free_disk_gb"] = round(free, 1)
    if free < 2:
        problems.append(f"Only {free:.1f} GB of disk is free under {home}; a run needs about 2 GB for checkpoints.")
    return {"ok": not problems, "problems": problems, "warnings": warnings, "facts": facts}


def _plan(cfg: JobConfig, problems: list[str]):
    """The model as the job will build it (training/modeling.py plan_model), or None with the reason in problems."""
    from training.modeling import plan_model

    try:
        return plan_model(cfg.model, cfg.lora)
    except ConfigError as e:
        problems.append(str(e))
    except Exception as e:  # noqa: BLE001 - whatever transformers says about a config it cannot build
        problems.append(f"Transformers cannot build a language model from {cfg.model}/config.json ({e}).")
    return None


# Activation bytes kept for the backward per token, layer and hidden unit: Korthikanti et al. (2022) count 34 in
# 16-bit; doubled for fp32 and rounded up for gated MLPs. With gradient checkpointing only the layer's fp32 input.
ACTIVATION_BYTES = 80
CHECKPOINT_BYTES = 4


def estimate_memory_gb(cfg: JobConfig, plan) -> float:
    """Peak memory of a training job in GB (1e9 bytes), from the model's plan (P parameters, Q of them in linear
    layers, T trainable, hidden size h, L layers):

        weights      4 P                     fp32, as the job loads them
                     0.5 Q + 2 (P - Q)       quantization 4bit: linear layers in NF4, the rest bf16
        adapter      4 T                     LoRA's own fp32 weights (a full fine-tune's are the weights above)
        optimizer    12 T                    fp32 gradients and AdamW's two moments
        reference    4 P                     full fine-tuning of an algorithm needing reference logits each step
                                             (eps-DPO): a frozen copy; otherwise references are cached up front
        activations  N L h 80                N = batch_size x max_length tokens, x2 for pairs (no packing saving)
                     N h (4 L + 80)          with gradient checkpointing: each layer's input, plus one layer's
                                             activations while it is recomputed

    An upper bound for bf16 autocast, which keeps some activations in 16 bits. The LM head's logits are not kept
    (training/modeling.py computes them in chunks), except eps-DPO's, which are not counted."""
    P, Q, T, h, L = plan.params, plan.linear_params, plan.trainable, plan.hidden, plan.layers
    weights = 0.5 * Q + 2 * (P - Q) if cfg.quantization == "4bit" else 4 * P
    adapter = 4 * T if cfg.lora is not None else 0
    algo = algorithms.ALGORITHMS.get(cfg.algorithm)
    reference = 4 * P if cfg.lora is None and algo and algo.needs_ref_logits else 0
    tokens = cfg.batch_size * cfg.max_length * (2 if algo and algo.data_kind == "pairs" else 1)
    if cfg.gradient_checkpointing:
        activations = tokens * h * (CHECKPOINT_BYTES * L + ACTIVATION_BYTES)
    else:
        activations = tokens * h * L * ACTIVATION_BYTES
    return (weights + adapter + 12 * T + reference + activations) / 1e9


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

"""The score job (`kind: score`): how sure a model is about each open labeling task, into scores.parquet.

It feeds the labeling queue's "model unsure first" order: the tasks nearest the model's decision boundary are served
first, so each label goes where the model is most in doubt. The scores only order the queue; annotators never see
them (a number next to the answers would anchor the judgement the label is meant to capture).

With a trained run's LoRA adapter the decision is the implicit reward beta * (log pi_theta(y|x) - log pi_ref(y|x)),
pi_ref being the same network with the adapter off: a pair scores reward(a) - reward(b), a single answer its reward
(boundary 0, as the evaluation's accuracy for single answers). The base model has no implicit reward (pi_theta =
pi_ref), so it scores by its own per-token likelihood, as the evaluation's likelihood accuracy does; a single answer's
boundary is then the median of the job's single scores. Responses are tokenized and truncated as in training.

The reference's summed log-probs of each answer go out with the scores (ref_logp_a, ref_logp_b; the base job's
own log-probs are the reference's), and come back in as optional input columns of the same names: the app passes
a later job of the same base and lengths what an earlier one computed, so re-scoring after each run costs one
forward per answer instead of two.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from storage import rundir
from training.config import JobConfig
from training.data import DataError, collate, encode_prompt, encode_response, fit, read_parquet
from training.modeling import (load_model, load_tokenizer, packed_logps, packing_problem, reference_mode,
                               response_logps)
from training.runtime import JobError, Status, heartbeat, seed_everything

COLUMNS = ("task_id", "kind", "prompt", "response_a", "response_b")
REFERENCE = ("ref_logp_a", "ref_logp_b")      # optional in, always out: the reference's summed log-probs
TASK_KINDS = ("pair", "single")
STATUS_EVERY_S = 1.0


@dataclass
class Task:
    task_id: str
    prompt: list[int]
    responses: list[list[int]]       # [a] for a single answer, [a, b] for a pair
    ref: list[float | None]          # the reference's summed log-prob of each response, when known

    @property
    def length(self) -> int:
        return len(self.prompt) + sum(len(r) for r in self.responses)


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip())


def load_tasks(path: Path) -> pd.DataFrame:
    """The tasks to score, checked: DataError with one sentence when the file cannot be scored."""
    df = read_parquet(path, "No tasks to score")
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path.name} lacks column(s) {', '.join(missing)}; scoring needs {', '.join(COLUMNS)}.")
    if df.empty:
        raise DataError(f"{path.name} has no tasks to score.")
    rows = df.to_dict("records")
    for i, r in enumerate(rows):
        need = ["task_id", "prompt", "response_a"] + (["response_b"] if r["kind"] == "pair" else [])
        if r["kind"] not in TASK_KINDS:
            raise DataError(f"{path.name}: row {i} has kind {r['kind']!r}; a task is a 'pair' or a 'single'.")
        empty = [c for c in need if _missing(r[c])]
        if empty:
            raise DataError(f"{path.name}: row {i} ({r['kind']}) has an empty {empty[0]!r}.")
    return df


def tokenize_tasks(df: pd.DataFrame, tokenizer, max_length: int, max_prompt_length: int) -> list[Task]:
    cache: dict[str, list[int]] = {}
    tasks = []
    for r in df.to_dict("records"):
        prompt = str(r["prompt"])
        p = cache.get(prompt)
        if p is None:
            p = cache.setdefault(prompt, encode_prompt(tokenizer, prompt))
        texts = [r["response_a"]] + ([r["response_b"]] if r["kind"] == "pair" else [])
        fitted = [fit(p, encode_response(tokenizer, str(t)), max_length, max_prompt_length) for t in texts]
        known = [r.get(c) for c in REFERENCE[:len(texts)]]
        tasks.append(Task(str(r["task_id"]), fitted[0][0], [resp for _, resp in fitted],
                          [None if _missing(v) else float(v) for v in known]))
    return tasks


def batches(tasks: list[Task], batch_size: int) -> list[list[int]]:
    """Task indices, shortest first, grouped so a batch holds at most batch_size sequences (at least one task)."""
    out, batch, n_seq = [], [], 0
    for i in sorted(range(len(tasks)), key=lambda i: tasks[i].length):
        k = len(tasks[i].responses)
        if batch and n_seq + k > batch_size:
            out.append(batch)
            batch, n_seq = [], 0
        batch.append(i)
        n_seq += k
    return out + ([batch] if batch else [])


class _StopOnSigterm:
    """The app's Stop (SIGTERM) sets a flag the loop checks between batches; the previous handler comes back after."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_term)
        return self

    def _on_term(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _load(cfg: JobConfig, device: torch.device):
    if cfg.adapter_init and not (Path(cfg.adapter_init) / "adapter_config.json").exists():
        raise JobError(f"No LoRA adapter at {cfg.adapter_init}: the scoring run has no adapter/ folder.")
    try:
        tok = load_tokenizer(cfg.model)
        model = load_model(cfg.model, device=device, quantization=cfg.quantization)
    except (OSError, FileNotFoundError, ValueError) as e:
        raise JobError(f"Could not load the model from {cfg.model}: {e}") from None
    if cfg.adapter_init:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(cfg.adapter_init)).eval()
    return model, tok


def run_score(cfg: JobConfig, run_dir: Path) -> str:
    """Score every task of data/train.parquet into scores.parquet (see the module docstring for the numbers)."""
    run_dir = Path(run_dir)
    df = load_tasks(run_dir / rundir.TRAIN_DATA)
    seed_everything(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    model, tok = _load(cfg, device)
    implicit = bool(cfg.adapter_init)
    pack = packing_problem(model) is None
    tasks = tokenize_tasks(df, tok, cfg.max_length, cfg.max_prompt_length)
    n = len(tasks)

    def logps(parts) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed response log-probs and response lengths, prompts shared where the architecture allows."""
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            if pack:
                out = packed_logps(model, parts, tok.pad_token_id, device=device)
            else:
                ids, attn, resp = (t.to(device) for t in collate(parts, tok.pad_token_id))
                out = response_logps(model, ids, attn, resp)
        return out.logps.float().cpu(), out.n_tokens.cpu().clamp(min=1)

    status = Status(run_dir)
    status(state="running", step=0, total=n, phase=f"scoring: 0 of {n} tasks")
    stop_beat = heartbeat(status)
    score = [0.0] * n
    done, t0, last = 0, time.time(), 0.0
    try:
        with _StopOnSigterm() as stop, torch.no_grad():
            for batch in batches(tasks, cfg.batch_size):
                if stop.requested:
                    status(state="stopped", step=done, phase=f"stopped after {done} of {n} tasks")
                    return "stopped"
                parts = [(tasks[i].prompt, r) for i in batch for r in tasks[i].responses]
                pol, nt = logps(parts)
                known = [v for i in batch for v in tasks[i].ref]
                if not implicit:
                    ref, value = pol, pol / nt         # the base is the reference; per-token log-likelihood
                elif all(v is not None for v in known):
                    ref = torch.tensor(known, dtype=pol.dtype)
                else:
                    with reference_mode(model):
                        ref, _ = logps(parts)
                if implicit:
                    value = cfg.beta * (pol - ref)     # implicit reward per response
                s = 0
                for i in batch:
                    k = len(tasks[i].responses)
                    score[i] = float(value[s] - value[s + 1]) if k == 2 else float(value[s])
                    tasks[i].ref = [float(v) for v in ref[s:s + k]]
                    s += k
                done += len(batch)
                if time.time() - last >= STATUS_EVERY_S or done == n:
                    last = time.time()
                    eta = (last - t0) / done * (n - done)
                    status(step=done, eta_s=round(eta, 1), phase=f"scoring: {done} of {n} tasks")
        _write_scores(run_dir, df, tasks, score, implicit)
        status(state="finished", step=n, eta_s=0, phase="finished")
        return "finished"
    finally:
        stop_beat()


def _write_scores(run_dir: Path, df: pd.DataFrame, tasks: list[Task], score: list[float], implicit: bool) -> None:
    """unsure = distance from the decision boundary: 0 for pairs and for implicit rewards, the median of the single
    answers' per-token likelihoods for the base model (whose likelihoods have no natural zero)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = np.asarray(score, dtype=np.float64)
    single = (df["kind"] == "single").to_numpy()
    boundary = np.zeros_like(values)
    if not implicit and single.any():
        boundary[single] = np.median(values[single])
    table = pa.table({"task_id": pa.array([t.task_id for t in tasks], type=pa.string()),
                      "score": pa.array(values, type=pa.float64()),
                      "unsure": pa.array(np.abs(values - boundary), type=pa.float64()),
                      "method": pa.array(["implicit reward" if implicit else "likelihood"] * len(tasks),
                                         type=pa.string()),
                      **{c: pa.array([t.ref[j] if j < len(t.ref) else None for t in tasks], type=pa.float64())
                         for j, c in enumerate(REFERENCE)}})
    tmp = run_dir / f".{rundir.SCORES}.{os.getpid()}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, run_dir / rundir.SCORES)

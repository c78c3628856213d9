"""Training data: read the frozen snapshot, check it, tokenize it, and cut it into deterministic batches.

A response is tokenized on its own and appended to the chat-templated prompt, followed by the EOS token (which
counts as a response token). Prompts are truncated from the left (keep the question's end, nearest the answer),
responses from the right. Padding is on the right, so padding never changes a sequence's log-probs: reference
log-probs cached from one batching are exact for any other.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from training.algorithms import DATA_COLUMNS


class DataError(ValueError):
    """A problem with the training data, phrased for a person."""


def read_parquet(path: Path, absent: str) -> pd.DataFrame:
    """A job's Parquet input, or a DataError sentence (`absent` begins it when the file is not there)."""
    if not path.exists():
        raise DataError(f"{absent}: {path} does not exist.")
    try:
        return pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same sentence
        raise DataError(f"{path.name} is not a readable Parquet file ({e}).") from None


def load_rows(path: str | Path, data_kind: str) -> pd.DataFrame:
    """Read a run's Parquet data and check it has what `data_kind` needs. KTO accepts pairs too: each pair
    becomes a desirable and an undesirable row (as TRL does)."""
    path = Path(path)
    df = read_parquet(path, "No training data")
    if data_kind == "unpaired" and "label" not in df.columns and {"chosen", "rejected"} <= set(df.columns):
        df = pairs_to_unpaired(df)
    need = DATA_COLUMNS[data_kind]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise DataError(f"{path.name} lacks column(s) {', '.join(missing)}; this algorithm needs {', '.join(need)}.")
    if len(df) == 0:
        raise DataError(f"{path.name} has no rows.")
    for c in need:
        if c == "label":
            continue
        bad = df[c].isna() | (df[c].astype(str).str.strip() == "")
        if bad.any():
            raise DataError(f"{path.name}: {int(bad.sum())} row(s) have an empty {c!r} (first at row {int(bad.idxmax())}).")
    if "example_id" not in df.columns:
        df = df.assign(example_id=[str(i) for i in range(len(df))])
    for c in ("task_id", "site"):
        if c not in df.columns:
            df = df.assign(**{c: None})
    df["example_id"] = df["example_id"].astype(str)
    if data_kind == "unpaired":
        df["label"] = df["label"].astype(bool)
    return df.reset_index(drop=True)


def pairs_to_unpaired(df: pd.DataFrame) -> pd.DataFrame:
    base = {c: df[c] for c in df.columns if c not in ("chosen", "rejected")}
    ids = df["example_id"].astype(str) if "example_id" in df.columns else pd.Series(map(str, range(len(df))))
    good = pd.DataFrame({**base, "completion": df["chosen"], "label": True, "example_id": ids + ":chosen"})
    bad = pd.DataFrame({**base, "completion": df["rejected"], "label": False, "example_id": ids + ":rejected"})
    return pd.concat([good, bad], ignore_index=True)


# -- tokenization ---------------------------------------------------------------------------------------------------
def encode_prompt(tokenizer, prompt: str) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def encode_response(tokenizer, response: str) -> list[int]:
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    return list(ids) + [tokenizer.eos_token_id]


def fit(prompt: list[int], response: list[int], max_length: int, max_prompt_length: int) -> tuple[list[int], list[int]]:
    prompt = prompt[-max_prompt_length:]
    return prompt, response[: max(1, max_length - len(prompt))]


@dataclass
class Example:
    """One training example, tokenized. `responses` holds 1 (sft/unpaired) or 2 (chosen, rejected) sequences."""
    index: int
    example_id: str
    task_id: str | None
    site: str | None
    prompt: list[int]
    responses: list[list[int]]
    label: bool | None = None          # unpaired: desirable?

    @property
    def length(self) -> int:
        return len(self.prompt) + max(len(r) for r in self.responses)


def tokenize(df: pd.DataFrame, tokenizer, data_kind: str, max_length: int, max_prompt_length: int) -> list[Example]:
    cols = {"sft": ["completion"], "unpaired": ["completion"], "pairs": ["chosen", "rejected"]}[data_kind]
    out = []
    cache: dict[str, list[int]] = {}
    for i, row in enumerate(df.itertuples(index=False)):
        row = row._asdict()
        p = cache.get(row["prompt"])
        if p is None:
            p = cache.setdefault(row["prompt"], encode_prompt(tokenizer, str(row["prompt"])))
        responses = []
        for c in cols:
            pp, r = fit(p, encode_response(tokenizer, str(row[c])), max_length, max_prompt_length)
            responses.append(r)
        out.append(Example(i, str(row.get("example_id", i)), _opt(row.get("task_id")), _opt(row.get("site")), pp,
                           responses, bool(row["label"]) if data_kind == "unpaired" else None))
    return out


def _opt(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


# -- batching -------------------------------------------------------------------------------------------------------
def epoch_batches(n: int, lengths: list[int], batch_size: int, seed: int, epoch: int,
                  group_by_length: bool = True) -> list[list[int]]:
    """Deterministic batches for one epoch: shuffle with (seed, epoch), then within windows of 50 batches sort by
    length so a batch's sequences pad little, and shuffle the batch order again."""
    rng = random.Random(seed * 1000003 + epoch)
    order = list(range(n))
    rng.shuffle(order)
    if group_by_length:
        window = batch_size * 50
        order = [i for s in range(0, n, window) for i in sorted(order[s:s + window], key=lambda j: lengths[j])]
    batches = [order[s:s + batch_size] for s in range(0, n, batch_size)]
    rng.shuffle(batches)
    return batches


@dataclass
class Batch:
    """Sequences ready for one forward. Sequence s is prompt + response; `owner[s]` is its example index in the
    batch and `side[s]` its role (chosen, rejected, desirable, undesirable, sft, kl)."""
    input_ids: torch.Tensor            # [S, T] right-padded
    attention_mask: torch.Tensor       # [S, T]
    response_mask: torch.Tensor        # [S, T]: 1 where input_ids[t] is a response token (predicted from t-1)
    examples: list[Example]
    side: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)   # cache key per sequence: example_id + side
    parts: list[tuple[list[int], list[int]]] = field(default_factory=list)  # (prompt ids, response ids) per sequence

    @property
    def n_tokens(self) -> torch.Tensor:
        return self.response_mask.sum(-1)


def collate(seqs: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    T = max(len(p) + len(r) for p, r in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), T), dtype=torch.long)
    resp = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, (p, r) in enumerate(seqs):
        n = len(p) + len(r)
        ids[i, :n] = torch.tensor(p + r)
        attn[i, :n] = 1
        resp[i, len(p):n] = 1
    return ids, attn, resp


def make_batch(examples: list[Example], data_kind: str, pad_id: int, with_kl: bool = False) -> Batch:
    """pairs: all chosen then all rejected (one forward); unpaired: the examples, sides by label; sft: the
    examples. with_kl (KTO) gives instead the mismatched pairs prompt_i + completion_{i+1}."""
    seqs, side, keys = [], [], []
    if with_kl:
        n = len(examples)
        for i, ex in enumerate(examples):
            other = examples[(i + 1) % n]
            seqs.append((ex.prompt, other.responses[0]))
            side.append("kl")
            keys.append(f"{ex.example_id}|kl|{other.example_id}")
    elif data_kind == "pairs":
        for j, name in ((0, "chosen"), (1, "rejected")):
            for ex in examples:
                seqs.append((ex.prompt, ex.responses[j]))
                side.append(name)
                keys.append(f"{ex.example_id}|{name}")
    else:
        for ex in examples:
            seqs.append((ex.prompt, ex.responses[0]))
            s = "sft" if data_kind == "sft" else ("desirable" if ex.label else "undesirable")
            side.append(s)
            keys.append(f"{ex.example_id}|{s}")
    ids, attn, resp = collate(seqs, pad_id)
    return Batch(ids, attn, resp, examples, side, keys, seqs)

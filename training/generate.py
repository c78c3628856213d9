"""Sampling answers from a model, for labeling queues, evaluation and the demo data."""
from __future__ import annotations

import torch

from training.data import encode_prompt


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

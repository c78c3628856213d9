"""Model loading, LoRA, references, and response-only log-probs.

`response_logps` runs the transformer body once over all sequences, then applies the LM head and log-softmax only
at positions that predict a response token: the vocabulary projection is the largest matrix in a small model, and
prompts are usually longer than answers, so this saves time and a [tokens x vocab] float32 buffer per sequence.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def check_model_dir(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_dir() or not (p / "config.json").exists():
        raise FileNotFoundError(f"No model at {p}: expected a Hugging Face model folder with config.json.")
    return p


def load_model(path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device | None = None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(check_model_dir(path)), dtype=dtype or torch.float32)
    if device is not None:
        model.to(device)
    model.eval()  # LOSSES.md: dropout off in policy and reference alike
    return model


def add_lora(model, lora_cfg, adapter_init: str | Path | None = None):
    """Wrap with a trainable LoRA adapter named 'default' (fresh, or continued from an earlier run's adapter)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter_init:
        model = PeftModel.from_pretrained(model, str(adapter_init), is_trainable=True)
    else:
        cfg = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                         target_modules=list(lora_cfg.target_modules), task_type="CAUSAL_LM")
        model = get_peft_model(model, cfg)
    model.eval()
    return model


def is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


@contextlib.contextmanager
def reference_mode(model):
    """The base reference: the same network with the LoRA adapter switched off, no grad."""
    with torch.no_grad():
        if is_peft(model):
            with model.disable_adapter():
                yield model
        else:
            yield model


def _body_and_head(model):
    base = model.get_base_model() if is_peft(model) else model
    body = getattr(base, "model", None) or base.get_decoder()
    return body, base.get_output_embeddings()


@dataclass
class LogpOutput:
    logps: torch.Tensor            # [S] summed response log-probs (float32)
    n_tokens: torch.Tensor         # [S]
    token_logps: torch.Tensor      # [N] per response token, flat in (sequence, position) order
    seq_index: torch.Tensor        # [N] which sequence each flat token belongs to
    logits: torch.Tensor | None    # [N, V] response-position logits, if asked (eps-DPO)
    labels: torch.Tensor           # [N] target token ids


def response_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
                   keep_logits: bool = False) -> LogpOutput:
    """Summed log pi(response | prompt) per sequence, computing the LM head only where a response token is
    predicted (position t predicts token t+1)."""
    body, head = _body_and_head(model)
    hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state   # [S, T, H]
    target = response_mask[:, 1:].bool()                                                  # [S, T-1]
    seq_index, pos = target.nonzero(as_tuple=True)
    h = hidden[:, :-1][seq_index, pos]                                                    # [N, H]
    logits = head(h).float()
    labels = input_ids[:, 1:][seq_index, pos]
    token_logps = torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    S = input_ids.shape[0]
    logps = torch.zeros(S, dtype=token_logps.dtype, device=token_logps.device).index_add(0, seq_index, token_logps)
    n_tokens = target.sum(-1)
    return LogpOutput(logps, n_tokens, token_logps, seq_index, logits if keep_logits else None, labels)


def padded_response_logits(out: LogpOutput, rows: slice | torch.Tensor, S: int):
    """[B, R, V] logits, [B, R] labels and [B, R] mask for sequences `rows`, from the flat response positions."""
    counts = torch.bincount(out.seq_index, minlength=S)
    R = int(counts.max()) if counts.numel() else 1
    V = out.logits.shape[-1]
    starts = torch.cumsum(counts, 0) - counts
    col = torch.arange(out.seq_index.numel(), device=out.seq_index.device) - starts[out.seq_index]
    logits = torch.zeros(S, R, V, dtype=out.logits.dtype, device=out.logits.device)
    labels = torch.zeros(S, R, dtype=torch.long, device=out.labels.device)
    mask = torch.zeros(S, R, device=out.logits.device)
    logits[out.seq_index, col] = out.logits
    labels[out.seq_index, col] = out.labels
    mask[out.seq_index, col] = 1
    return logits[rows], labels[rows], mask[rows]


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.named_parameters() if v.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)

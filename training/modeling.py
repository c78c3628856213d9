"""Model loading, LoRA, references, and response-only log-probs.

`response_logps` runs the transformer body once over all sequences, then applies the LM head and log-softmax only
at positions that predict a response token: the vocabulary projection is the largest matrix in a small model, and
prompts are usually longer than answers, so this saves time and a [tokens x vocab] float32 buffer per sequence.

`packed_logps` gives the same numbers with each distinct prompt computed once: the responses that share a prompt
(a DPO pair's chosen and rejected, several KTO answers to one question) follow it in one row, each attending to the
prompt and to itself only, with the positions it would have on its own. A pair then costs prompt + chosen +
rejected tokens instead of twice the prompt, in the forward, the backward and the activations kept between them.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from training.config import ConfigError

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


def load_model(path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device | None = None,
               quantization: str = "none"):
    """The model in `dtype` (fp32 by default), or with `quantization: 4bit` its linear layers in 4-bit NF4 through
    bitsandbytes (QLoRA: bf16 for the rest, placed on `device` while loading, CUDA only)."""
    from transformers import AutoModelForCausalLM

    path = str(check_model_dir(path))
    if quantization == "4bit":
        problem = quantization_problem(quantization)
        if problem:
            raise ConfigError(problem)
        from transformers import BitsAndBytesConfig

        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, quantization_config=bnb,
                                                     device_map={"": torch.device(device or "cuda")})
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
        if device is not None:
            model.to(device)
    model.eval()  # docs/losses.md: dropout off in policy and reference alike
    return model


def quantization_problem(quantization: str) -> str | None:
    """Why `quantization` cannot run on this machine, as a sentence, or None."""
    import importlib.util

    if quantization == "none":
        return None
    if not torch.cuda.is_available():
        return ("4-bit quantization (QLoRA) needs an NVIDIA GPU with CUDA, and this machine has none: set "
                "quantization to none.")
    if importlib.util.find_spec("bitsandbytes") is None:
        return ("4-bit quantization (QLoRA) needs the bitsandbytes package: pip install bitsandbytes, or set "
                "quantization to none.")
    return None


def add_lora(model, lora_cfg, adapter_init: str | Path | None = None):
    """Wrap with a trainable LoRA adapter named 'default' (fresh, or continued from an earlier run's adapter).
    A target list that names no module of this model is a ConfigError listing the model's linear layers."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from peft.utils.error import NoMatchingPeftModuleError

    if adapter_init:
        model = PeftModel.from_pretrained(model, str(adapter_init), is_trainable=True)
    else:
        targets = lora_cfg.target_modules
        cfg = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                         target_modules=targets if isinstance(targets, str) else list(targets), task_type="CAUSAL_LM")
        try:
            model = get_peft_model(model, cfg)
        except NoMatchingPeftModuleError:
            named = targets if isinstance(targets, str) else ", ".join(targets)
            raise ConfigError(f"None of the LoRA target modules ({named}) is in this "
                              f"{type(model).__name__}; its linear layers are {', '.join(linear_layer_names(model))}. "
                              "Leave target_modules unset to train all of them.") from None
    model.eval()
    return model


def linear_layers(model) -> dict[str, torch.nn.Module]:
    """The model's linear layers but its output head, by name: what PEFT's 'all-linear' targets and what 4-bit
    quantization stores in 4 bits (GPT-2's are transformers' Conv1D)."""
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings()
    return {name: m for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not head}


def linear_layer_names(model) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name in linear_layers(model)})


@dataclass
class ModelPlan:
    """What pre-flight can say about a model without loading its weights."""
    architecture: str
    params: int                     # all parameters
    linear_params: int              # in the linear layers 4-bit quantization stores at half a byte each
    trainable: int                  # what the optimizer updates: the LoRA adapter, or everything
    lora_modules: list[str]         # short names LoRA wraps (empty for full fine-tuning)
    hidden: int
    layers: int
    packing_problem: str | None     # why prompts cannot be packed in this architecture, or None


def plan_model(path: str | Path, lora_cfg=None) -> ModelPlan:
    """Build the model from its config.json on the meta device (no weights read, no memory used), add the LoRA
    adapter the job would add, and count. Raises ConfigError when the LoRA targets match nothing."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(check_model_dir(path)))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    text = config.get_text_config()
    plan = ModelPlan(type(model).__name__, params=sum(p.numel() for p in model.parameters()),
                     linear_params=sum(m.weight.numel() for m in linear_layers(model).values()),
                     trainable=0, lora_modules=[], hidden=text.hidden_size, layers=text.num_hidden_layers,
                     packing_problem=packing_problem(model))
    if lora_cfg is None:
        plan.trainable = plan.params
    else:
        model = add_lora(model, lora_cfg)
        plan.lora_modules = sorted({n.rsplit(".", 1)[-1] for n in model.peft_config["default"].target_modules})
        plan.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return plan


def packing_problem(model) -> str | None:
    """Why shared-prompt packing cannot run on this model, or None. Packing places each response after its prompt
    with explicit position ids and a 4D mask; a model that takes no position ids (ALiBi: BLOOM, MPT) cannot."""
    import inspect

    body, _ = _body_and_head(model)
    if "position_ids" in inspect.signature(body.forward).parameters:
        return None
    return (f"{type(body).__name__} takes no position ids, so prompts are not packed: each sequence is padded on "
            "its own (the same results, more compute).")


def enable_gradient_checkpointing(model) -> None:
    """Recompute each decoder layer's activations in the backward instead of keeping them: less memory, about a
    third more compute. Non-reentrant checkpointing, and inputs that require grad so a LoRA model (frozen
    embeddings) still gets gradients. Transformers checkpoints a layer only in training mode, and the model stays in
    eval mode (dropout off, docs/losses.md), so the checkpointed layers alone are flagged as training: their
    dropout and attention submodules stay in eval mode."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if is_peft(model):
        model.enable_input_require_grads()
    for m in model.modules():
        if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing:
            m.training = True


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


class _HeadLogps(torch.autograd.Function):
    """log_softmax(h W^T)[label] per row, keeping only h and the log-normaliser for backward: the [N, vocab]
    logits are recomputed there in chunks instead of being held (two float32 copies, ~400 KB per response token
    for a 49k vocabulary) from the forward to the backward."""
    CHUNK = 512

    @staticmethod
    def forward(ctx, h, weight, labels, compute_dtype):
        out, lse = [], []
        for s in range(0, h.shape[0], _HeadLogps.CHUNK):
            logits = (h[s:s + _HeadLogps.CHUNK].to(compute_dtype) @ weight.to(compute_dtype).t()).float()
            z = torch.logsumexp(logits, -1)
            out.append(logits.gather(-1, labels[s:s + _HeadLogps.CHUNK, None])[:, 0] - z)
            lse.append(z)
        ctx.compute_dtype = compute_dtype
        ctx.save_for_backward(h, weight, labels, torch.cat(lse))
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad):
        h, weight, labels, lse = ctx.saved_tensors
        cd = ctx.compute_dtype
        w = weight.to(cd)
        gh = torch.zeros_like(h) if ctx.needs_input_grad[0] else None
        gw = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        for s in range(0, h.shape[0], _HeadLogps.CHUNK):
            hs, g = h[s:s + _HeadLogps.CHUNK].to(cd), grad[s:s + _HeadLogps.CHUNK].float()
            p = torch.exp((hs @ w.t()).float() - lse[s:s + _HeadLogps.CHUNK, None])
            d = (-p * g[:, None]).scatter_add_(-1, labels[s:s + _HeadLogps.CHUNK, None], g[:, None])   # dlogp/dlogits
            if gh is not None:
                gh[s:s + _HeadLogps.CHUNK] = (d.to(cd) @ w).to(h.dtype)
            if gw is not None:
                gw += (d.to(cd).t() @ hs).float()
        return gh, (gw.to(weight.dtype) if gw is not None else None), None, None


def head_logps(head, h: torch.Tensor, labels: torch.Tensor, keep_logits: bool = False):
    """(per-token log-probs [N], logits [N, V] or None). The memory-lean path for a plain bias-free linear head;
    the logits themselves only when asked (eps-DPO) or when the head is something else (e.g. LoRA on it)."""
    if not keep_logits and type(head) is torch.nn.Linear and head.bias is None:
        dev = h.device.type
        cd = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype
        return _HeadLogps.apply(h, head.weight, labels, cd), None
    logits = head(h).float()
    return torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1), logits


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
    labels = input_ids[:, 1:][seq_index, pos]
    token_logps, logits = head_logps(head, h, labels, keep_logits)
    S = input_ids.shape[0]
    logps = torch.zeros(S, dtype=token_logps.dtype, device=token_logps.device).index_add(0, seq_index, token_logps)
    n_tokens = target.sum(-1)
    return LogpOutput(logps, n_tokens, token_logps, seq_index, logits, labels)


def packed_logps(model, parts: list[tuple[list[int], list[int]]], pad_id: int, keep_logits: bool = False,
                 device: torch.device | str | None = None) -> LogpOutput:
    """`response_logps` for sequences given as (prompt ids, response ids), sharing each distinct prompt.

    Row layout: P R_1 R_2 ...; token t of R_j sits at position |P| + t and sees P and R_j[:t+1]. The first token of
    every R_j is predicted from the prompt's last position. Outputs are in the input order, as if unpacked."""
    body, head = _body_and_head(model)
    device = device or next(model.parameters()).device
    groups: dict[tuple, list[int]] = {}
    for s, (p, _) in enumerate(parts):
        groups.setdefault(tuple(p), []).append(s)
    rows = []            # (token ids, position ids, segment ids)
    where = {}           # sequence -> (row, start of its response in the row)
    for r, (prompt, members) in enumerate(groups.items()):
        ids, pos, seg = list(prompt), list(range(len(prompt))), [0] * len(prompt)
        for j, s in enumerate(members, start=1):
            resp = parts[s][1]
            where[s] = (r, len(ids))
            ids += resp
            pos += range(len(prompt), len(prompt) + len(resp))
            seg += [j] * len(resp)
        rows.append((ids, pos, seg))
    T = max(len(ids) for ids, _, _ in rows)

    def padded(field: int, fill: int) -> torch.Tensor:
        return torch.tensor([row[field] + [fill] * (T - len(row[field])) for row in rows], device=device)

    input_ids, position_ids, segment = padded(0, pad_id), padded(1, 0), padded(2, -1)
    q, k = segment[:, :, None], segment[:, None, :]
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    allowed = causal & (k != -1) & (q != -1) & ((k == 0) | (k == q))
    allowed |= torch.eye(T, dtype=torch.bool, device=device)   # padding attends to itself: no empty softmax rows
    mask = allowed[:, None]
    if getattr(model.config, "_attn_implementation", "sdpa") not in ("sdpa", "flash_attention_2"):
        mask = torch.zeros(mask.shape, device=device).masked_fill(~mask, torch.finfo(torch.float32).min)
    # Which position predicts which token, in (sequence, position) order.
    row_i, pred_i, target, seq_index = [], [], [], []
    for s, (p, resp) in enumerate(parts):
        r, start = where[s]
        for t in range(len(resp)):
            before = (len(p) - 1) if t == 0 else start + t - 1
            if before < 0:
                continue     # no prompt: the first token has nothing to be predicted from (as unpacked)
            row_i.append(r), pred_i.append(before), target.append(resp[t]), seq_index.append(s)
    hidden = body(input_ids=input_ids, attention_mask=mask, position_ids=position_ids).last_hidden_state
    seq_index = torch.tensor(seq_index, dtype=torch.long, device=device)
    labels = torch.tensor(target, dtype=torch.long, device=device)
    h = hidden[torch.tensor(row_i, device=device), torch.tensor(pred_i, device=device)]
    token_logps, logits = head_logps(head, h, labels, keep_logits)
    S = len(parts)
    logps = torch.zeros(S, dtype=token_logps.dtype, device=device).index_add(0, seq_index, token_logps)
    n_tokens = torch.bincount(seq_index, minlength=S)
    return LogpOutput(logps, n_tokens, token_logps, seq_index, logits, labels)


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

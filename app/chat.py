"""Talking to a model on the Try page: which models there are, keeping them loaded, and sampling an answer token
by token with each token's probability, so the page can stream the text and shade it by confidence.

One base model is loaded once and every run's LoRA adapter is attached to it by name; a step runs under that
base's lock with the right adapter switched on (or all off for the base), so two answers from two runs can be
generated interleaved, side by side, without a second copy of the weights. The sampling loop is our own (a few
lines over the KV cache) because the page needs the model's raw probability of each sampled token and a stream.
"""
from __future__ import annotations

import html
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from storage import rundir

BASE = "base"


@dataclass(frozen=True)
class ModelSpec:
    """What to talk to: a base model folder, optionally with a run's adapter on top."""
    key: str                       # 'base' or the run id
    label: str                     # what the dropdown shows
    base_path: str
    adapter_path: str | None = None
    run_id: str | None = None


def model_choices(ctx) -> list[ModelSpec]:
    """The base model (if it has been set up) and every finished training run that left a model behind."""
    import json

    specs = []
    base = Path(ctx.default_model())
    if (base / "config.json").exists():
        specs.append(ModelSpec(BASE, f"Base model ({base.name})", str(base)))
    for run_id, name, run_dir, config in ctx.db.fetchall(
            "SELECT id, name, run_dir, config FROM runs WHERE kind = 'train' AND state = 'finished' "
            "ORDER BY created_at DESC"):
        d = Path(run_dir or "")
        cfg = json.loads(config or "{}")
        label = f"Run {name or run_id}" if (name or "").startswith(run_id) else f"Run {name or ''} ({run_id})"
        if (d / rundir.ADAPTER / "adapter_config.json").exists() and cfg.get("model"):
            specs.append(ModelSpec(run_id, label, cfg["model"], str(d / rundir.ADAPTER), run_id))
        elif (d / rundir.MODEL / "config.json").exists():
            specs.append(ModelSpec(run_id, label, str(d / rundir.MODEL), None, run_id))
    return specs


@dataclass
class Loaded:
    model: object
    tokenizer: object
    lock: threading.Lock = field(default_factory=threading.Lock)
    adapters: set = field(default_factory=set)


class ModelCache:
    """Loaded base models (least recently used dropped beyond `max_bases`), each with its adapters by run id."""

    def __init__(self, max_bases: int = 2):
        self.max_bases = max_bases
        self._bases: OrderedDict[str, Loaded] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, spec: ModelSpec) -> Loaded:
        from training.modeling import load_model, load_tokenizer

        with self._lock:
            entry = self._bases.get(spec.base_path)
            if entry is None:
                entry = Loaded(load_model(spec.base_path), load_tokenizer(spec.base_path))
                self._bases[spec.base_path] = entry
                while len(self._bases) > self.max_bases:
                    self._bases.popitem(last=False)
            self._bases.move_to_end(spec.base_path)
        if spec.adapter_path and spec.key not in entry.adapters:
            from peft import PeftModel

            with entry.lock:
                if spec.key not in entry.adapters:
                    if entry.adapters:
                        entry.model.load_adapter(spec.adapter_path, adapter_name=spec.key)
                    else:
                        entry.model = PeftModel.from_pretrained(entry.model, spec.adapter_path, adapter_name=spec.key)
                    entry.model.eval()
                    entry.adapters.add(spec.key)
        return entry


def _forward(entry: Loaded, adapter: str | None, **inputs):
    """One forward pass with exactly this adapter active (None: the base, all adapters off)."""
    import contextlib

    import torch

    with entry.lock, torch.no_grad():
        m = entry.model
        off = contextlib.nullcontext()
        if entry.adapters:
            if adapter is None:
                off = m.disable_adapter()
            else:
                m.set_adapter(adapter)
        with off:
            return m(**inputs, use_cache=True)


@dataclass
class Answer:
    text: str = ""
    pieces: list = field(default_factory=list)   # (text piece, probability) per generated token
    ids: list = field(default_factory=list)      # generated token ids (without the stop token)
    done: bool = False
    cut: bool = False                            # stopped by the token limit, not by the model

    @property
    def mean_logp(self) -> float | None:
        """Mean log-probability per token under the model (its own confidence); None before any token."""
        if not self.pieces:
            return None
        return sum(math.log(max(p, 1e-12)) for _, p in self.pieces) / len(self.pieces)


def stream_answer(entry: Loaded, adapter: str | None, prompt: str, temperature: float = 0.7, top_p: float = 0.95,
                  max_new_tokens: int = 128, seed: int | None = None) -> Iterator[Answer]:
    """Sample an answer to `prompt` (chat template applied), yielding the growing Answer after every token.
    Temperature 0 is greedy. Probabilities are the model's own (temperature 1, before top-p)."""
    import torch

    from training.data import encode_prompt

    tok = entry.tokenizer
    ids = torch.tensor([encode_prompt(tok, prompt)])
    gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    stop = {tok.eos_token_id}
    cfg_eos = getattr(getattr(entry.model, "generation_config", None), "eos_token_id", None)
    stop |= set(cfg_eos if isinstance(cfg_eos, (list, tuple)) else [cfg_eos])
    stop.discard(None)
    answer, past, inputs = Answer(), None, ids
    for _ in range(int(max_new_tokens)):
        out = _forward(entry, adapter, input_ids=inputs, past_key_values=past)
        past = out.past_key_values
        logits = out.logits[0, -1].float()
        logprobs = torch.log_softmax(logits, -1)
        nxt = int(_sample(logits, temperature, top_p, gen))
        if nxt in stop:
            break
        answer.ids.append(nxt)
        text = tok.decode(answer.ids, skip_special_tokens=True)
        answer.pieces.append((text[len(answer.text):], float(logprobs[nxt].exp())))
        answer.text = text
        inputs = torch.tensor([[nxt]])
        yield answer
    else:
        answer.cut = True
    answer.done = True
    yield answer


def _sample(logits, temperature: float, top_p: float, gen):
    import torch

    if temperature <= 0:
        return logits.argmax()
    probs = torch.softmax(logits / temperature, -1)
    if 0 < top_p < 1:   # nucleus: keep the smallest set of tokens whose probability reaches top_p
        sorted_p, idx = probs.sort(descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p
        sorted_p[drop] = 0
        probs = torch.zeros_like(probs).scatter(0, idx, sorted_p)
    return torch.multinomial(probs / probs.sum(), 1, generator=gen)[0]


def shaded_html(answer: Answer) -> str:
    """The answer with each token's background redder the less likely the model found it; every piece of text
    is HTML-escaped (a model can write '<script>' too)."""
    spans = []
    for piece, p in answer.pieces:
        alpha = round(0.55 * (1 - p), 2)
        spans.append(f"<span title='p = {p:.2f}' style='background: rgba(239, 68, 68, {alpha})'>"
                     f"{html.escape(piece)}</span>")
    cursor = "" if answer.done else "<span style='opacity:.5'>▍</span>"
    return (f"<div class='preflab-answer' style='white-space: pre-wrap; line-height: 1.6; min-height: 2em'>"
            f"{''.join(spans)}{cursor}</div>")


def answer_html(answer: Answer, shade: bool = False) -> str:
    """An answer as the Try page shows it: while it is written, or with `shade`, each word shaded by the model's
    confidence; once finished, rendered as markdown like the Label page (bold, lists, code), safely."""
    if shade or not answer.done:
        return shaded_html(answer)
    from labeling.render import markdown_html

    return f"<div class='preflab-answer'>{markdown_html(answer.text)}</div>"


def confidence_note(answer: Answer, threshold: float) -> str:
    m = answer.mean_logp
    if m is None:
        return ""
    if m < threshold:
        return (f"⚠️ **Low confidence**: mean log-probability {m:.2f} per token is below {threshold:.2f}. "
                "Check this answer carefully.")
    cut = "; cut at the token limit" if answer.cut else ""
    return f"Confidence: mean log-probability {m:.2f} per token ({len(answer.pieces)} tokens{cut})."

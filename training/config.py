"""JobConfig: the one typed description of a job, written by the app as config.json and read by the job.

Defaults follow docs/losses.md; what each algorithm is and its own checks live in training/algorithms.py.
Validation raises ConfigError with a sentence naming the field, so the app's pre-flight check and the job's own
start-up report the same plain words. No torch import here: the app builds and validates configs without
loading the ML stack.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training import algorithms

KINDS = ("train", "generate", "evaluate", "score")
LOSS_TYPES = ("sigmoid", "ipo", "hinge")
AGGREGATORS = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedavgm")
SERVER_OPTIMIZERS = ("fedadam", "fedyogi", "fedadagrad", "fedavgm")   # a server-side step on the averaged delta


class ConfigError(ValueError):
    """A config problem, phrased for the person who set it."""


@dataclass
class LoraConfig:
    r: int = 8                       # rank of the low-rank update
    alpha: int = 16                  # scaling: the update is multiplied by alpha / r
    dropout: float = 0.0             # docs/losses.md: dropout off, so the reference and policy agree at step 0
    target_modules: list[str] | str = "all-linear"   # short module names, or every linear layer but the head


@dataclass
class FederatedConfig:
    rounds: int = 5                  # communication rounds
    clients_per_round: int = 0       # sites sampled per round; 0 = all sites
    local_steps: int = 5             # optimizer steps each site runs per round
    aggregator: str = "fedavg"       # fedavg | fedprox | fedadam | fedyogi | fedadagrad | fedavgm
    mu: float = 0.01                 # FedProx proximal weight
    server_lr: float = 1e-3          # FedAdam / FedYogi / FedAdagrad server learning rate (the authors' code)
    server_beta1: float = 0.9
    server_beta2: float = 0.99
    server_tau: float = 1e-3         # adaptivity; v starts at tau^2 (Reddi et al. 2021)
    server_momentum: float = 0.9     # FedAvgM momentum
    momentum_lr: float = 1.0         # FedAvgM server learning rate (Flower's default)
    fresh_local_optimizer: bool = True   # each round a site starts a new AdamW and schedule (the authors' code)
    balance_kto_per_site: bool = False   # KTO: lambda_D = n_U / n_D of each site's own data instead of the user's
    setting: str = "kto-o"           # kto-o: labels stay at their site; kto-r: unpaired rows permuted across sites
    site_column: str = "site"

    @property
    def proximal_mu(self) -> float:
        """FedProx's mu; the other aggregators add no proximal term to a site's loss."""
        return self.mu if self.aggregator == "fedprox" else 0.0


@dataclass
class JobConfig:
    # -- what to run
    kind: str = "train"              # train | generate | evaluate | score (the labeling queue's model-unsure order)
    algorithm: str = "dpo"           # training/algorithms.py: sft | minor_sft | dpo | minor_dpo | eps_dpo | mrpo | kto
    model: str = ""                  # local Hugging Face model directory (the base, reference 0)
    adapter_init: str | None = None  # start from this adapter (new run from an earlier one; evaluate/generate a run)
    references: list[str] = field(default_factory=list)  # MRPO: extra reference adapters or model dirs
    lora: LoraConfig | None = field(default_factory=LoraConfig)  # None = full fine-tuning
    federated: FederatedConfig | None = None

    # -- objective (defaults from docs/losses.md)
    beta: float = 0.1                # KL strength (DPO, eps-DPO, MRPO, KTO); MinorSFT suggests 0.01-0.1
    loss_type: str = "sigmoid"       # DPO variant: sigmoid | ipo | hinge
    label_smoothing: float = 0.0     # cDPO epsilon (sigmoid only)
    epsilon: float = 0.01            # eps-DPO step size for beta
    eta: float = 0.1                 # MRPO CTRO clip; negative = fixed |eta|
    mrpo_weights: list[float] | None = None  # MRPO fixed weights (primary first); None = adaptive (ARWC)
    desirable_weight: float = 1.0    # KTO lambda_D
    undesirable_weight: float = 1.0  # KTO lambda_U
    sft_reduction: str = "seq_mean"  # SFT, MinorSFT: seq_mean (the MinorSFT paper's comparison) | token_mean

    # -- optimisation
    learning_rate: float = 5e-5
    lr_scheduler: str = "linear"     # linear | cosine | constant
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0       # clip gradients at this norm, 0 = off
    batch_size: int = 4              # examples per micro-batch (a pair counts once)
    grad_accum: int = 1              # micro-batches per optimizer step
    max_steps: int = 0               # optimizer steps; 0 = run `epochs` epochs
    epochs: float = 1.0
    max_length: int = 512            # prompt + response tokens
    max_prompt_length: int = 256     # prompts are truncated from the left to this
    seed: int = 42
    gpus: int = 1                    # GPUs per job; more than 1 = data-parallel processes through torchrun
    precision: str = "auto"          # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    pack_prompts: bool = True        # compute a prompt shared by several responses (a pair) once per forward
    gradient_checkpointing: bool = False   # recompute activations in the backward: less memory, more compute
    quantization: str = "none"       # none | 4bit: the frozen base in 4-bit NF4 (QLoRA; CUDA and bitsandbytes)

    # -- observation
    log_every: int = 1               # write a metrics line every N optimizer steps
    instances_every: int = 1         # write per-instance values every N optimizer steps
    checkpoint_every: int = 50       # resumable checkpoint every N optimizer steps (and on SIGTERM)
    eval_every: int = 10             # evaluate on data/eval.parquet every N steps (and at the end); 0 = only at the end

    # -- generate / evaluate
    num_samples: int = 2             # responses per prompt
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 128

    @property
    def data_kind(self) -> str:
        return algorithms.get(self.algorithm).data_kind

    # -- (de)serialisation --------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "JobConfig":
        if not isinstance(d, dict):
            raise ConfigError("The config must be a JSON object.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known - {"version"})
        if unknown:
            raise ConfigError(f"Unknown config field(s): {', '.join(unknown)}.")
        d = dict(d)
        d.pop("version", None)
        if d.get("lora") is not None:
            d["lora"] = _sub(LoraConfig, d["lora"], "lora")
        if d.get("federated") is not None:
            d["federated"] = _sub(FederatedConfig, d["federated"], "federated")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> "JobConfig":
        try:
            d = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"No config file at {path}.") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON (line {e.lineno}: {e.msg}).") from None
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["version"] = 1
        return d

    def save(self, path: str | Path) -> None:
        from storage.rundir import write_json_atomic

        write_json_atomic(path, self.to_dict())

    # -- checks -------------------------------------------------------------------------------------------
    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        need(self.kind in KINDS, f"kind must be one of {', '.join(KINDS)}, not {self.kind!r}.")
        need(self.algorithm in algorithms.ALGORITHMS,
             f"algorithm must be one of {', '.join(algorithms.NAMES)}, not {self.algorithm!r}.")
        need(bool(self.model), "model is empty: give a local model directory.")
        need(self.loss_type in LOSS_TYPES, f"loss_type must be one of {', '.join(LOSS_TYPES)}, not {self.loss_type!r}.")
        need(self.beta > 0, f"beta must be positive (got {self.beta}).")
        need(0 <= self.label_smoothing < 0.5, f"label_smoothing must be in [0, 0.5) (got {self.label_smoothing}).")
        need(not (self.label_smoothing and self.loss_type != "sigmoid"),
             "label_smoothing (cDPO) only applies to loss_type sigmoid.")
        need(0 <= self.epsilon < 1, f"epsilon must be in [0, 1) (got {self.epsilon}).")
        need(self.desirable_weight > 0 and self.undesirable_weight > 0, "KTO weights must be positive.")
        need(self.sft_reduction in ("token_mean", "seq_mean"), "sft_reduction must be token_mean or seq_mean.")
        need(self.learning_rate > 0, f"learning_rate must be positive (got {self.learning_rate}).")
        need(self.lr_scheduler in ("linear", "cosine", "constant"), "lr_scheduler must be linear, cosine or constant.")
        need(self.batch_size >= 1, "batch_size must be at least 1.")
        need(self.grad_accum >= 1, "grad_accum must be at least 1.")
        need(self.max_steps >= 0 and self.epochs > 0, "max_steps must be >= 0 and epochs > 0.")
        need(self.max_length >= 8, "max_length must be at least 8 tokens.")
        need(0 < self.max_prompt_length < self.max_length,
             f"max_prompt_length ({self.max_prompt_length}) must be below max_length ({self.max_length}).")
        need(self.precision in ("auto", "fp32", "bf16"), "precision must be auto, fp32 or bf16.")
        need(self.gpus >= 1, f"gpus must be at least 1 (got {self.gpus}).")
        need(self.gpus == 1 or (self.kind == "train" and self.federated is None),
             "Only a training run (not generation, evaluation, scoring or a federated run) can use several GPUs; "
             "set gpus to 1.")
        need(self.num_samples >= 1 and self.max_new_tokens >= 1, "num_samples and max_new_tokens must be >= 1.")
        need(0 < self.top_p <= 1 and self.temperature >= 0, "top_p must be in (0, 1] and temperature >= 0.")
        problems = algorithms.get(self.algorithm).problems(self)
        need(not problems, problems[0] if problems else "")
        if self.lora is not None:
            need(self.lora.r >= 1 and self.lora.alpha > 0, "LoRA r and alpha must be positive.")
            t = self.lora.target_modules
            need(t == "all-linear" or (isinstance(t, list) and bool(t)),
                 'LoRA target_modules must be "all-linear" or a non-empty list of module names.')
        need(self.quantization in ("none", "4bit"), "quantization must be none or 4bit.")
        need(not (self.quantization == "4bit" and self.lora is None),
             "4-bit quantization trains a LoRA adapter on a frozen base (QLoRA): turn LoRA on, or set quantization "
             "to none.")
        if self.federated is not None:
            f = self.federated
            need(self.lora is not None, "Federated training exchanges LoRA weights only: turn LoRA on.")
            need(f.aggregator in AGGREGATORS, f"aggregator must be one of {', '.join(AGGREGATORS)}.")
            need(f.rounds >= 1 and f.local_steps >= 1, "rounds and local_steps must be at least 1.")
            need(f.server_lr > 0 and f.server_tau > 0 and f.momentum_lr > 0 and 0 <= f.server_momentum < 1,
                 "server_lr, server_tau and momentum_lr must be positive and server_momentum in [0, 1).")
            need(f.setting in ("kto-o", "kto-r"), "federated setting must be kto-o or kto-r.")
            need(not (f.setting == "kto-r" and self.data_kind == "pairs"),
                 "DPO cannot train on KTO-R data: redistribution splits a prompt's good and bad answers across "
                 "sites, so no site holds both halves of a pair. Use KTO, or the KTO-O setting.")


def _sub(cls, d: Any, name: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{name} must be an object.")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"Unknown {name} field(s): {', '.join(unknown)}.")
    return cls(**d)

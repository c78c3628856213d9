"""The one training loop. `Trainer(config, run_dir)`: prepare() loads model, data and cached references;
train_step() runs one optimizer step (grad_accum micro-batches) and returns its scalars; train() is the whole job
with status heartbeat, metrics, per-instance values, checkpoints, SIGTERM handling and resume.
"""
from __future__ import annotations

import math
import random
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import torch

from storage import rundir
from training import algorithms
from training.config import JobConfig
from training.data import Example, epoch_batches, load_rows, make_batch, tokenize
from training.losses import eps_dpo_update_beta
from training.modeling import (add_lora, enable_gradient_checkpointing, is_peft, load_model, load_tokenizer,
                               load_trainable_state, packed_logps, reference_mode, response_logps, trainable_state)
from training.objectives import OBJECTIVES, StepInput
from training.runtime import JobError, Status, heartbeat, seed_everything

REF_CACHE = "ref_logps.pt"
KEEP_CHECKPOINTS = 2


class Trainer:
    def __init__(self, config: JobConfig, run_dir: str | Path):
        self.cfg = config
        self.run_dir = Path(run_dir)
        self.algorithm = algorithms.get(config.algorithm)   # what the objective needs
        self.objective = OBJECTIVES[config.algorithm]
        self.step = 0                 # optimizer steps done
        self.beta = config.beta       # global beta (eps-DPO moves it)
        self.stop_requested = False
        self.extra_loss = None        # optional callable added to each micro-batch loss (FedProx's proximal term)
        self._status = Status(self.run_dir)
        self._epoch_cache: dict[int, list[list[int]]] = {}

    # -- setup --------------------------------------------------------------------------------------------------
    def prepare(self, model=None, tokenizer=None) -> "Trainer":
        """Load everything. Federated simulation passes one shared model (with its LoRA adapter) and tokenizer so
        every site trains the same network in memory with its own data."""
        from accelerate import Accelerator

        cfg = self.cfg
        use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and torch.cuda.is_available())
        kwargs = dict(mixed_precision="bf16" if use_bf16 else "no", cpu=not torch.cuda.is_available())
        try:
            self.accelerator = Accelerator(**kwargs)
        except ValueError:
            # accelerate keeps one state per process; a single process running several jobs one after another
            # (tests, benchmarks) may switch precision. A multi-process launch has one job, so never gets here.
            from accelerate.state import AcceleratorState

            AcceleratorState._reset_state(True)
            self.accelerator = Accelerator(**kwargs)
        self.device = self.accelerator.device
        seed_everything(cfg.seed)
        if model is None:
            try:
                self.tokenizer = load_tokenizer(cfg.model)
                model = load_model(cfg.model, device=self.device)
            except (OSError, FileNotFoundError, ValueError) as e:
                raise JobError(f"Could not load the model from {cfg.model}: {e}") from None
            if cfg.lora is not None:
                model = add_lora(model, cfg.lora, cfg.adapter_init)
            elif cfg.adapter_init:
                raise JobError("adapter_init needs LoRA: a full fine-tune cannot start from an adapter.")
            if cfg.gradient_checkpointing:
                enable_gradient_checkpointing(model)
        else:
            self.tokenizer = tokenizer
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise JobError("The model has no trainable parameters; check the LoRA target modules.")

        kind = self.algorithm.data_kind
        self.rows = load_rows(self.run_dir / rundir.TRAIN_DATA, kind)
        self.examples = tokenize(self.rows, self.tokenizer, kind, cfg.max_length, cfg.max_prompt_length)
        if kind == "unpaired":
            n_good = sum(ex.label for ex in self.examples)
            problem = algorithms.kto_classes_problem(n_good, len(self.examples) - n_good)
            if problem:
                raise JobError(problem)
        eval_path = self.run_dir / rundir.EVAL_DATA
        self.eval_examples: list[Example] = []
        if eval_path.exists():
            self.eval_rows = load_rows(eval_path, kind)
            self.eval_examples = tokenize(self.eval_rows, self.tokenizer, kind, cfg.max_length, cfg.max_prompt_length)
            for ex in self.eval_examples:
                ex.example_id = "eval:" + ex.example_id

        self.lengths = [ex.length for ex in self.examples]
        self.n_batches = math.ceil(len(self.examples) / cfg.batch_size)
        if kind == "unpaired" and len(self.examples) % cfg.batch_size == 1:
            self.n_batches -= 1  # a KTO batch of one example has no KL pair; drop the odd one out
        steps_per_epoch = max(1, self.n_batches // cfg.grad_accum)
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))

        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        from transformers import get_scheduler

        self.scheduler = get_scheduler(cfg.lr_scheduler, self.optimizer, num_warmup_steps=cfg.warmup_steps,
                                       num_training_steps=self.total_steps)
        self.ref_model = None
        if self.algorithm.needs_ref_logits and not is_peft(model):
            import copy

            self.ref_model = copy.deepcopy(model).requires_grad_(False)  # full fine-tune: a frozen copy
        self._resume()
        self.cache_references()
        return self

    # -- data order ---------------------------------------------------------------------------------------------
    def micro_batch(self, index: int) -> list[Example]:
        """Micro-batch number `index` counted from the start of training: deterministic, so resuming continues
        exactly where the interrupted run was."""
        epoch, i = divmod(index, self.n_batches)
        if epoch not in self._epoch_cache:
            self._epoch_cache = {epoch: epoch_batches(len(self.examples), self.lengths, self.cfg.batch_size,
                                                      self.cfg.seed, epoch)}
        batches = [b for b in self._epoch_cache[epoch] if len(b) > 1 or self.algorithm.data_kind != "unpaired"]
        return [self.examples[j] for j in batches[i]]

    # -- references ---------------------------------------------------------------------------------------------
    def cache_references(self) -> None:
        """Reference log-probs for every sequence training and evaluation will see, computed once (and kept in
        the run directory, so a resumed run does not recompute them)."""
        path = self.run_dir / REF_CACHE
        self.ref_cache: dict[str, torch.Tensor] = torch.load(path) if path.exists() else {}
        kind = self.algorithm.data_kind
        n_micro = self.total_steps * self.cfg.grad_accum * self.accelerator.num_processes
        groups = [self.micro_batch(i) for i in range(n_micro)]
        groups += [self.eval_examples[i:i + self.cfg.batch_size] for i in range(0, len(self.eval_examples), self.cfg.batch_size)]
        # Each batch as training will see it (same sequences, same packed layout): at step 0 the policy's numbers
        # are then the reference's exactly, also in bf16, where another layout would round differently.
        todo, seen = [], set()
        for exs in groups:
            for with_kl in ((False, True) if self.algorithm.needs_kl_pairs and len(exs) > 1 else (False,)):
                b = make_batch(exs, kind, self.tokenizer.pad_token_id, with_kl=with_kl)
                if any(k not in self.ref_cache and k not in seen for k in b.keys):
                    todo.append(b)
                    seen.update(b.keys)
        if not todo:
            return
        refs = [None] + list(self.cfg.references)   # None = the base (adapter off)
        values: dict[str, torch.Tensor] = {}
        self._status(state="running", phase=f"computing reference log-probs for {len(seen)} sequences")
        for k, ref in enumerate(refs):
            done: set[str] = set()
            with self._reference_model(ref) as model:
                for b in todo:
                    with self.accelerator.autocast():
                        lp = self.logps(model, b.parts).logps.float().cpu()
                    for key, v in zip(b.keys, lp):
                        if key not in done:      # first layout wins: the one training meets first
                            values.setdefault(key, torch.zeros(len(refs)))[k] = v
                            done.add(key)
        for key, v in values.items():
            self.ref_cache.setdefault(key, v)
        torch.save(self.ref_cache, path)

    def _reference_model(self, ref: str | None):
        import contextlib

        if ref is None:
            if self.ref_model is not None:
                return contextlib.nullcontext(self.ref_model)
            return reference_mode(self.model)
        return _extra_reference(self.cfg.model, ref, self.device)

    def _ref(self, keys: list[str]) -> torch.Tensor:
        try:
            return torch.stack([self.ref_cache[k] for k in keys], dim=1).to(self.device)   # [K, S]
        except KeyError as e:
            raise JobError(f"Internal error: no cached reference log-prob for {e}.") from None

    # -- one step -----------------------------------------------------------------------------------------------
    def logps(self, model, parts: list[tuple[list[int], list[int]]], keep_logits: bool = False):
        """Summed response log-probs of (prompt, response) sequences; prompts shared within the list are computed
        once when `pack_prompts` is on (the default), else each sequence is padded on its own."""
        if self.cfg.pack_prompts:
            return packed_logps(model, parts, self.tokenizer.pad_token_id, keep_logits, device=self.device)
        from training.data import collate

        ids, attn, resp = (t.to(self.device) for t in collate(parts, self.tokenizer.pad_token_id))
        return response_logps(model, ids, attn, resp, keep_logits=keep_logits)

    def forward(self, examples: list[Example], train: bool = True):
        kind = self.algorithm.data_kind
        b = make_batch(examples, kind, self.tokenizer.pad_token_id)
        keep = self.algorithm.needs_ref_logits
        with self.accelerator.autocast():
            policy = self.logps(self.model, b.parts, keep_logits=keep)
        inp = StepInput(batch=b, policy=policy, ref=self._ref(b.keys), beta=self.beta)
        if keep:
            with self._reference_model(None) as ref_model, self.accelerator.autocast():
                inp.ref_out = self.logps(ref_model, b.parts, keep_logits=True)
        if self.algorithm.needs_kl_pairs:
            kb = make_batch(examples, kind, self.tokenizer.pad_token_id, with_kl=True)
            with torch.no_grad(), self.accelerator.autocast():
                kl_pol = self.logps(self.model, kb.parts).logps.float()
            kl_ref = self._ref(kb.keys)[0]
            if self.accelerator.num_processes > 1:   # z0 is averaged over processes
                kl_pol, kl_ref = self.accelerator.gather(kl_pol), self.accelerator.gather(kl_ref)
            inp.kl_policy, inp.kl_ref = kl_pol, kl_ref
        return self.objective(self.cfg, inp)

    def train_step(self) -> tuple[dict, list[dict]]:
        """One optimizer step over grad_accum micro-batches. Returns (scalars, instances)."""
        cfg, acc = self.cfg, self.accelerator
        t0 = time.time()
        sums: dict[str, float] = {}
        instances: list[dict] = []
        eps_acc = 0.0
        for micro in range(cfg.grad_accum):
            index = (self.step * cfg.grad_accum + micro) * acc.num_processes + acc.process_index
            result = self.forward(self.micro_batch(index))
            loss = result.loss / cfg.grad_accum
            if self.extra_loss is not None:
                loss = loss + self.extra_loss() / cfg.grad_accum
            if not torch.isfinite(loss):
                raise JobError(f"The loss became {float(loss)} at step {self.step + 1}. Lower the learning rate "
                               f"(now {cfg.learning_rate:g}) or beta, and check the data for empty or garbled answers.")
            acc.backward(loss)
            eps_acc += result.eps_steps_mean / cfg.grad_accum
            for k, v in result.scalars.items():
                if math.isfinite(v):  # e.g. a KTO micro-batch with one class has no rejected reward
                    sums[k] = sums.get(k, 0.0) + v / cfg.grad_accum
            instances += result.instances
        if acc.num_processes > 1:
            for p in self.params:
                if p.grad is not None:
                    p.grad = acc.reduce(p.grad, "mean")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.algorithm.needs_ref_logits:  # eps-DPO: move the global beta after the optimizer step
            if acc.num_processes > 1:
                eps_acc = float(acc.reduce(torch.tensor(eps_acc, device=self.device), "mean"))
            sums["kl/beta"] = self.beta
            self.beta = eps_dpo_update_beta(self.beta, eps_acc, cfg.epsilon)
        self.step += 1
        sums.update({"grad_norm": float(grad_norm), "learning_rate": self.scheduler.get_last_lr()[0],
                     "epoch": self.step * cfg.grad_accum / self.n_batches, "step_time": time.time() - t0})
        for row in instances:
            row["step"] = self.step
        return sums, instances

    # -- evaluation ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out preference accuracy by implicit reward (and by the policy's own per-token likelihood, which
        is also meaningful for the base model), mean m_theta."""
        if not self.eval_examples:
            return {}
        kind = self.algorithm.data_kind
        wins, lik_wins, ms, n = 0.0, 0.0, [], 0
        for s in range(0, len(self.eval_examples), self.cfg.batch_size):
            exs = self.eval_examples[s:s + self.cfg.batch_size]
            b = make_batch(exs, kind, self.tokenizer.pad_token_id)
            with self.accelerator.autocast():
                out = self.logps(self.model, b.parts)
            pol, ref, nt = out.logps.float().cpu(), self._ref(b.keys)[0].cpu(), out.n_tokens.cpu().clamp(min=1)
            ms.append((pol - ref) / nt)
            B = len(exs)
            if kind == "pairs":
                r = pol - ref
                wins += float(((r[:B] > r[B:]).float() + 0.5 * (r[:B] == r[B:]).float()).sum())
                lik_wins += float((pol[:B] / nt[:B] > pol[B:] / nt[B:]).float().sum())
                n += B
            elif kind == "unpaired":
                r = pol - ref
                lab = torch.tensor([ex.label for ex in exs])
                wins += float(((r > 0) == lab).float().sum())
                n += B
        out = {"eval/m_theta": float(torch.cat(ms).mean())}
        if n:
            out["eval/accuracy"] = wins / n
            if kind == "pairs":
                out["eval/likelihood_accuracy"] = lik_wins / n
        return out

    # -- checkpoints --------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        ck_dir = self.run_dir / rundir.CHECKPOINTS
        final = ck_dir / f"step-{self.step:07d}"
        tmp = ck_dir / f".tmp-step-{self.step:07d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save({
            "step": self.step, "beta": self.beta, "trainable": trainable_state(self.model),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
        }, tmp / "state.pt")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in sorted(ck_dir.glob("step-*"))[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def _resume(self) -> None:
        cks = sorted((self.run_dir / rundir.CHECKPOINTS).glob("step-*"))
        if not cks:
            return
        state = torch.load(cks[-1] / "state.pt", weights_only=False)
        load_trainable_state(self.model, state["trainable"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.beta = state["step"], state["beta"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])

    # -- the job ------------------------------------------------------------------------------------------------
    def train(self) -> str:
        """Run to the end (or until SIGTERM). Returns the final state."""
        cfg = self.cfg
        start_step, t_start = self.step, time.time()
        self._status(state="running", step=self.step, total=self.total_steps, phase="training",
                     resumed_from=start_step or None)
        stop_beat = heartbeat(self._status)
        try:
            if start_step == 0 and self.eval_examples:
                rundir.append_metrics(self.run_dir, {"step": 0, "time": time.time(), "split": "eval", **self.evaluate()})
            bar = _progress(self.total_steps, start_step)
            while self.step < self.total_steps:
                scalars, instances = self.train_step()
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    rundir.append_metrics(self.run_dir, {"step": self.step, "time": time.time(), "split": "train", **scalars})
                if instances and (self.step % cfg.instances_every == 0 or self.step == self.total_steps):
                    rundir.write_instances(self.run_dir, self.step, instances)
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < self.total_steps:
                    rundir.append_metrics(self.run_dir, {"step": self.step, "time": time.time(), "split": "eval", **self.evaluate()})
                done = self.step - start_step
                eta = (time.time() - t_start) / done * (self.total_steps - self.step)
                self._status(step=self.step, eta_s=round(eta, 1), loss=scalars.get("loss"))
                bar(self.step, scalars.get("loss"))
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if self.stop_requested and self.step < self.total_steps:
                    self.save_checkpoint()
                    self._status(state="stopped", phase="stopped; resume continues from step %d" % self.step)
                    return "stopped"
            if self.eval_examples:
                rundir.append_metrics(self.run_dir, {"step": self.step, "time": time.time(), "split": "eval", **self.evaluate()})
                self._status(phase="writing sample answers to held-out prompts")
                self.sample_answers()
            self.save_final()
            self._status(state="finished", step=self.step, eta_s=0, phase="finished")
            return "finished"
        finally:
            stop_beat()

    def sample_answers(self, n: int = 8) -> None:
        """Greedy answers to the first held-out prompts, for side-by-side comparison of runs."""
        import pandas as pd

        from training.generate import generate

        prompts = self.eval_rows["prompt"].astype(str).drop_duplicates().head(n).tolist()
        answers = generate(self.model, self.tokenizer, prompts, 1, temperature=0.0, max_new_tokens=self.cfg.max_new_tokens)
        df = pd.DataFrame({"prompt": prompts, "response": [a[0] for a in answers], "sample": 0})
        tmp = self.run_dir / f".{rundir.GENERATIONS}.tmp"
        df.to_parquet(tmp, index=False)
        tmp.rename(self.run_dir / rundir.GENERATIONS)

    def save_final(self) -> None:
        if is_peft(self.model):
            self.model.save_pretrained(self.run_dir / rundir.ADAPTER)
        else:
            self.model.save_pretrained(self.run_dir / rundir.MODEL)
            self.tokenizer.save_pretrained(self.run_dir / rundir.MODEL)
        rundir.write_json_atomic(self.run_dir / "final.json", {"step": self.step, "beta": self.beta})


# -- helpers ------------------------------------------------------------------------------------------------------------
class _extra_reference:
    """An auxiliary MRPO reference, loaded for the one caching pass and then freed: another run's LoRA adapter
    on the same base, or a whole model folder sharing the tokenizer."""

    def __init__(self, base: str, ref: str, device):
        self.base, self.ref, self.device = base, Path(ref), device

    def __enter__(self):
        if (self.ref / "adapter_config.json").exists():
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(load_model(self.base, device=self.device), str(self.ref))
        elif (self.ref / "config.json").exists():
            self.model = load_model(self.ref, device=self.device)
        else:
            raise JobError(f"Reference {self.ref} is neither a LoRA adapter folder nor a model folder.")
        self.model.eval()
        self._grad = torch.no_grad()
        self._grad.__enter__()
        return self.model

    def __exit__(self, *exc):
        self._grad.__exit__(*exc)
        del self.model


def _progress(total: int, start: int):
    """A one-line console progress bar (goes to log.txt when run by the app)."""
    import sys

    t0 = time.time()

    def show(step: int, loss) -> None:
        frac = step / total
        done = int(30 * frac)
        rate = (step - start) / max(time.time() - t0, 1e-9)
        loss_s = f" loss {loss:.4f}" if isinstance(loss, float) else ""
        sys.stdout.write(f"\r[{'#' * done}{'.' * (30 - done)}] {step}/{total}{loss_s} {rate:.2f} step/s")
        if step == total:
            sys.stdout.write("\n")
        sys.stdout.flush()

    return show


def install_sigterm(trainer: Trainer) -> None:
    def on_term(signum, frame):
        trainer.stop_requested = True

    signal.signal(signal.SIGTERM, on_term)

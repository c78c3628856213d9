"""The one training loop. `Trainer(config, run_dir)`: prepare() loads model, data and cached references;
train_step() runs one optimizer step (grad_accum micro-batches) and returns its scalars; train() is the whole job
with status heartbeat, metrics, per-instance values, checkpoints, SIGTERM handling and resume.

Several processes (`torchrun`, `accelerate launch`) run the same loop, each on its own micro-batches: the policy
goes through `accelerator.prepare` (DDP, or FSDP / DeepSpeed from `accelerate config`), every number that is logged
or steers training (metrics, eps-DPO's beta, KTO's z0, eval) is reduced over processes, reference log-probs and
eval batches are shared out among them, and only the main process writes the run directory.
"""
from __future__ import annotations

import math
import shutil
import signal
import time
from pathlib import Path

import torch

from storage import rundir
from training import algorithms
from training.config import JobConfig
from training.data import Batch, Example, epoch_batches, load_rows, make_batch, tokenize
from training.losses import eps_dpo_update_beta
from training.modeling import (add_lora, enable_gradient_checkpointing, is_peft, load_model, load_tokenizer,
                               packed_logps, packing_problem, reference_mode, response_logps)
from training.objectives import OBJECTIVES, StepInput
from training.runtime import JobError, Status, heartbeat, seed_everything

REF_CACHE = "ref_logps.pt"
TRAINER_STATE = "trainer.json"   # in a checkpoint, next to accelerate's model, optimizer, scheduler and RNG states
KEEP_CHECKPOINTS = 2


class PolicyLogps(torch.nn.Module):
    """The policy as a module whose forward is the summed response log-probs: accelerate wraps this (DDP, FSDP,
    DeepSpeed), so every policy forward goes through the wrapper, which sees it and synchronises the gradients."""

    def __init__(self, model, compute):
        super().__init__()
        self.model = model
        self.compute = compute

    def forward(self, parts, keep_logits: bool = False):
        return self.compute(self.model, parts, keep_logits)


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
        # The scheduler counts optimizer steps, which are the same in every process.
        kwargs = dict(mixed_precision="bf16" if use_bf16 else "no", cpu=not torch.cuda.is_available(),
                      gradient_accumulation_steps=cfg.grad_accum, step_scheduler_with_optimizer=False)
        try:
            self.accelerator = Accelerator(**kwargs)
        except ValueError:
            # accelerate keeps one state per process; a single process running several jobs one after another
            # (tests, benchmarks) may switch precision. A multi-process launch has one job, so never gets here.
            from accelerate.state import AcceleratorState

            AcceleratorState._reset_state(True)
            self.accelerator = Accelerator(**kwargs)
        self.device = self.accelerator.device
        if not self.accelerator.is_main_process:
            self._status = lambda **fields: None   # the main process alone writes the run directory
        seed_everything(cfg.seed)
        if model is None:
            try:
                self.tokenizer = load_tokenizer(cfg.model)
                model = load_model(cfg.model, device=self.device, quantization=cfg.quantization)
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
        note = packing_problem(model) if cfg.pack_prompts else None
        if note:   # an architecture that cannot take packed rows pads each sequence instead: the same numbers
            cfg.pack_prompts = False
            print(note, flush=True)
            self._status(note=note)
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
        self.batches_per_step = cfg.grad_accum * self.accelerator.num_processes
        steps_per_epoch = max(1, self.n_batches // self.batches_per_step)
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))

        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        from transformers import get_scheduler

        self.scheduler = get_scheduler(cfg.lr_scheduler, self.optimizer, num_warmup_steps=cfg.warmup_steps,
                                       num_training_steps=self.total_steps)
        self.ref_model = None
        if self.algorithm.needs_ref_logits and not is_peft(model):
            import copy

            self.ref_model = copy.deepcopy(model).requires_grad_(False)  # full fine-tune: a frozen copy
        self.policy, self.optimizer, self.scheduler = self.accelerator.prepare(
            PolicyLogps(model, self._compute_logps), self.optimizer, self.scheduler)
        self.accelerator.register_save_state_pre_hook(_trainable_weights_only)
        self._resume()
        self.load_references()
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
    def load_references(self) -> None:
        """Reference log-probs kept by an earlier start of this run (written with each checkpoint), so a resumed
        run recomputes none of them. The base reference (the adapter off, or the frozen copy) is computed lazily,
        batch by batch, just before its first use, so the first step starts right after the model is loaded.
        MRPO's extra references are other models: loading one costs more than many forwards and keeping it
        doubles the memory, so each is loaded once and the whole run computed up front (`cache_references`)."""
        path = self.run_dir / REF_CACHE
        self.ref_cache: dict[str, torch.Tensor] = torch.load(path) if path.exists() else {}
        self._ref_saved = set(self.ref_cache)     # keys already in the run directory
        self.ref_forwards = 0                     # reference passes over a batch, all references counted
        if self.cfg.references:
            self.cache_references()

    def cache_references(self) -> None:
        """Reference log-probs for every sequence training and evaluation will see, computed up front, shared out
        among the processes and gathered, and kept in the run directory."""
        kind, pad = self.algorithm.data_kind, self.tokenizer.pad_token_id
        batches = [b for i in range(self.total_steps * self.batches_per_step) for b in self._batches(self.micro_batch(i))]
        bs = self.cfg.batch_size
        batches += [make_batch(self.eval_examples[s:s + bs], kind, pad) for s in range(0, len(self.eval_examples), bs)]
        todo, seen = [], set()
        for b in batches:
            if any(k not in self.ref_cache and k not in seen for k in b.keys):
                todo.append(b)
                seen.update(b.keys)
        if not todo:
            return
        mine: dict[int, list[list[float]]] = {}     # todo index -> per reference, the batch's log-probs
        share = self._share(len(todo))
        progress = self._ref_progress(sum(len(todo[i].keys) for i in share if i is not None) * self.n_references)
        for ref in [None, *self.cfg.references]:    # None = the base (adapter off)
            with self._reference_model(ref) as model:
                for i in share:
                    lp = self._reference_logps(model, todo[i or 0])
                    if i is not None:
                        mine.setdefault(i, []).append(lp)
                        progress(len(todo[i].keys))
        computed = {i: lps for part in self._gather(mine) for i, lps in part.items()}
        for i in sorted(computed):       # first layout wins: the one training meets first
            for j, key in enumerate(todo[i].keys):
                self.ref_cache.setdefault(key, torch.tensor([lps[j] for lps in computed[i]]))
        self.save_references()

    @property
    def n_references(self) -> int:
        return 1 + len(self.cfg.references)

    def ensure_references(self, batches: list[Batch], progress: bool = False) -> None:
        """Compute what these batches (this process's own) lack, each in its own layout: the one training or
        evaluation meets, so at step 0 the policy's numbers are the reference's exactly, also in bf16.
        progress: a pass over many batches (the evaluation set) says how far it is in status.json."""
        todo = [b for b in batches if any(k not in self.ref_cache for k in b.keys)]
        n = len(todo)
        if self.accelerator.num_processes > 1:   # a sharded model's forward takes every process: as many each
            n = int(self.accelerator.gather(torch.tensor([n], device=self.device)).max())
        if not n:
            return
        count = self._ref_progress(sum(len(b.keys) for b in todo)) if progress and todo else (lambda k: None)
        with self._reference_model(None) as model:
            for i in range(n):
                b = todo[i] if i < len(todo) else batches[0]    # a stand-in, whose result is dropped
                lp = self._reference_logps(model, b)
                if i < len(todo):
                    for key, v in zip(b.keys, lp):
                        self.ref_cache.setdefault(key, torch.tensor([v]))
                    count(len(b.keys))

    def _reference_logps(self, model, b: Batch) -> list[float]:
        self.ref_forwards += 1
        with self.accelerator.autocast():
            return self.logps(model, b.parts).logps.float().cpu().tolist()

    def _batches(self, exs: list[Example]) -> list[Batch]:
        """The batches one micro-batch of examples is computed as: its sequences, and KTO's mismatched pairs."""
        kind = self.algorithm.data_kind
        kl = self.algorithm.needs_kl_pairs and len(exs) > 1
        return [make_batch(exs, kind, self.tokenizer.pad_token_id, with_kl=w) for w in ((False, True) if kl else (False,))]

    def _eval_references(self, starts: list[int]) -> None:
        """The evaluation batches this process computes, at their first evaluation."""
        bs, kind = self.cfg.batch_size, self.algorithm.data_kind
        batches = [make_batch(self.eval_examples[s:s + bs], kind, self.tokenizer.pad_token_id) for s in starts]
        self.ensure_references(batches, progress=True)

    def _ref_progress(self, answers: int):
        """A callable counting answers done: it writes "x of y answers, about N s left" as the phase in status.json
        (what the Runs page shows), at most once a second, and the phase from before once all y are done."""
        t0, done, last = time.time(), [0], [0.0]
        before = (rundir.read_status(self.run_dir) or {}).get("phase")

        def advance(k: int) -> None:
            done[0] += k
            now = time.time()
            if done[0] >= answers:
                self._status(phase=before)
            elif now - last[0] >= 1.0:
                last[0] = now
                left = (now - t0) / done[0] * (answers - done[0])
                self._status(phase=f"reference log-probs: {done[0]} of {answers} answers, about {left:.0f} s left")

        self._status(state="running", phase=f"reference log-probs: 0 of {answers} answers")
        return advance

    def save_references(self) -> None:
        """Gather what every process computed since the last save; the main process writes the file. Every
        process calls this at the same point (with each checkpoint)."""
        new = {k: v for k, v in self.ref_cache.items() if k not in self._ref_saved}
        if self.accelerator.num_processes > 1:
            for part in self._gather(new):
                for k, v in part.items():
                    self.ref_cache.setdefault(k, v)
            new = {k: v for k, v in self.ref_cache.items() if k not in self._ref_saved}
        if not new:
            return
        self._ref_saved.update(new)
        if self.accelerator.is_main_process:
            path = self.run_dir / REF_CACHE
            tmp = path.with_name(f".{REF_CACHE}.tmp")
            torch.save(self.ref_cache, tmp)
            tmp.rename(path)

    # -- several processes --------------------------------------------------------------------------------------
    def _share(self, n: int) -> list[int | None]:
        """This process's share of n items, round-robin. Every process runs as many forwards (a sharded model
        gathers its parameters in each one, with all processes): None is a stand-in whose result is dropped."""
        acc = self.accelerator
        return [i if i < n else None for i in range(acc.process_index, math.ceil(n / acc.num_processes) * acc.num_processes, acc.num_processes)]

    def _gather(self, obj) -> list:
        """`obj` from every process, in process order (just [obj] in a single process)."""
        from accelerate.utils import gather_object

        return gather_object([obj]) if self.accelerator.num_processes > 1 else [obj]

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
        """Summed response log-probs of (prompt, response) sequences; the policy's (also with its adapter off)
        through accelerate's wrapper."""
        if model is self.model:
            return self.policy(parts, keep_logits=keep_logits)
        return self._compute_logps(model, parts, keep_logits)

    def _compute_logps(self, model, parts: list[tuple[list[int], list[int]]], keep_logits: bool = False):
        """Prompts shared within the list are computed once when `pack_prompts` is on (the default), else each
        sequence is padded on its own."""
        if self.cfg.pack_prompts:
            return packed_logps(model, parts, self.tokenizer.pad_token_id, keep_logits, device=self.device)
        from training.data import collate

        ids, attn, resp = (t.to(self.device) for t in collate(parts, self.tokenizer.pad_token_id))
        return response_logps(model, ids, attn, resp, keep_logits=keep_logits)

    def forward(self, examples: list[Example], train: bool = True):
        batches = self._batches(examples)           # b, and KTO's mismatched pairs
        b = batches[0]
        self.ensure_references(batches)             # a micro-batch's first use computes its references
        keep = self.algorithm.needs_ref_logits
        with self.accelerator.autocast():
            policy = self.policy(b.parts, keep_logits=keep)
        inp = StepInput(batch=b, policy=policy, ref=self._ref(b.keys), beta=self.beta)
        if keep:
            with self._reference_model(None) as ref_model, self.accelerator.autocast():
                inp.ref_out = self.logps(ref_model, b.parts, keep_logits=True)
        if self.algorithm.needs_kl_pairs:
            kb = batches[1]
            with torch.no_grad(), self.accelerator.autocast():
                kl_pol = self.logps(self.model, kb.parts).logps.float()
            kl_ref = self._ref(kb.keys)[0]
            if self.accelerator.num_processes > 1:   # z0 from every process's pairs (batches may differ in size)
                pairs = [x for part in self._gather((kl_pol.tolist(), kl_ref.tolist())) for x in zip(*part)]
                kl_pol, kl_ref = torch.tensor(pairs, device=self.device).T
            inp.kl_policy, inp.kl_ref = kl_pol, kl_ref
        return self.objective(self.cfg, inp)

    def train_step(self) -> tuple[dict, list[dict]]:
        """One optimizer step over grad_accum micro-batches on each process. Returns (scalars, instances): the
        scalars are the step's means over every micro-batch of every process; the instances this process's."""
        cfg, acc = self.cfg, self.accelerator
        t0 = time.time()
        acc.gradient_accumulation_steps = cfg.grad_accum   # accelerate keeps one value per process, not per job
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        instances: list[dict] = []
        for micro in range(cfg.grad_accum):
            index = (self.step * cfg.grad_accum + micro) * acc.num_processes + acc.process_index
            with acc.accumulate(self.policy):   # gradients are synchronised after the last micro-batch only
                result = self.forward(self.micro_batch(index))
                loss = result.loss
                if self.extra_loss is not None:
                    loss = loss + self.extra_loss()
                if not torch.isfinite(loss):
                    raise JobError(f"The loss became {float(loss)} at step {self.step + 1}. Lower the learning rate "
                                   f"(now {cfg.learning_rate:g}) or beta, and check the data for empty or garbled answers.")
                acc.backward(loss)              # divided by grad_accum there
            for k, v in {**result.scalars, "kl/eps_steps": result.eps_steps_mean}.items():
                if math.isfinite(v):  # e.g. a KTO micro-batch with one class has no rejected reward
                    sums[k], counts[k] = sums.get(k, 0.0) + v, counts.get(k, 0) + 1
            instances += result.instances
        grad_norm = acc.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        scalars = _means(self._gather((sums, counts)))
        eps_steps = scalars.pop("kl/eps_steps")
        if self.algorithm.needs_ref_logits:  # eps-DPO: move the global beta after the optimizer step
            scalars["kl/beta"] = self.beta
            self.beta = eps_dpo_update_beta(self.beta, eps_steps, cfg.epsilon)
        self.step += 1
        scalars.update({"grad_norm": float(grad_norm) if grad_norm is not None else math.nan,   # DeepSpeed clips itself
                        "learning_rate": self.scheduler.get_last_lr()[0],
                        "epoch": self.step * self.batches_per_step / self.n_batches, "step_time": time.time() - t0})
        for row in instances:
            row["step"] = self.step
        return scalars, instances

    # -- evaluation ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, policy_is_reference: bool = False) -> dict[str, float]:
        """Held-out preference accuracy by implicit reward (and by the policy's own per-token likelihood, which
        is also meaningful for the base model), mean m_theta; the eval batches are shared out among the processes.
        policy_is_reference: the step-0 numbers, from the cached reference log-probs alone (no policy forward)."""
        if not self.eval_examples:
            return {}
        kind = self.algorithm.data_kind
        wins, lik_wins, ms, n = 0.0, 0.0, {}, 0     # ms: batch index -> m_theta per sequence
        starts = range(0, len(self.eval_examples), self.cfg.batch_size)
        self._eval_references([starts[i or 0] for i in self._share(len(starts))])
        for i in self._share(len(starts)):
            start = starts[i or 0]
            exs = self.eval_examples[start:start + self.cfg.batch_size]
            b = make_batch(exs, kind, self.tokenizer.pad_token_id)
            if policy_is_reference:
                if i is None:
                    continue
                ref = self._ref(b.keys)[0].cpu()
                pol, nt = ref.clone(), b.n_tokens.cpu().clamp(min=1)
            else:
                with self.accelerator.autocast():
                    out = self.logps(self.model, b.parts)
                if i is None:
                    continue
                pol, ref, nt = out.logps.float().cpu(), self._ref(b.keys)[0].cpu(), out.n_tokens.cpu().clamp(min=1)
            ms[i] = ((pol - ref) / nt).tolist()
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
        parts = self._gather((wins, lik_wins, ms, n))
        wins, lik_wins, n = (sum(part[j] for part in parts) for j in (0, 1, 3))
        ms = dict(kv for part in parts for kv in part[2].items())
        ms = [m for i in sorted(ms) for m in ms[i]]   # in batch order: the mean is the single process's exactly
        out = {"eval/m_theta": float(torch.tensor(ms).mean())}
        if n:
            out["eval/accuracy"] = wins / n
            if kind == "pairs":
                out["eval/likelihood_accuracy"] = lik_wins / n
        return out

    # -- checkpoints --------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """accelerate's state (trained weights, optimizer, scheduler, every process's RNG) and the trainer's own
        (step, which fixes the data position; eps-DPO's beta), made visible at once by renaming the folder.
        Every process calls this at the same step."""
        acc = self.accelerator
        ck_dir = self.run_dir / rundir.CHECKPOINTS
        final = ck_dir / f"step-{self.step:07d}"
        tmp = ck_dir / f".tmp-step-{self.step:07d}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        self.save_references()   # the references computed so far: a resumed run does not compute them again
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            rundir.write_json_atomic(tmp / TRAINER_STATE, {"step": self.step, "beta": self.beta})
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            for old in sorted(ck_dir.glob("step-*"))[:-KEEP_CHECKPOINTS]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def _resume(self) -> None:
        cks = sorted((self.run_dir / rundir.CHECKPOINTS).glob("step-*"))
        if not cks:
            return
        self.accelerator.load_state(str(cks[-1]), strict=False)   # strict=False: only the trained weights are kept
        state = rundir.read_json(cks[-1] / TRAINER_STATE)
        self.step, self.beta = state["step"], state["beta"]

    # -- the job ------------------------------------------------------------------------------------------------
    def train(self) -> str:
        """Run to the end (or until SIGTERM). Returns the final state. Every process runs this; the main one
        writes status, metrics, instances and the final weights."""
        cfg, main = self.cfg, self.accelerator.is_main_process
        start_step, t_start = self.step, time.time()
        self._status(state="running", step=self.step, total=self.total_steps, phase="training",
                     resumed_from=start_step or None)
        stop_beat = heartbeat(self._status)
        try:
            # The starting point's evaluation: a new adapter (or a full fine-tune's copy) leaves the policy equal to
            # the reference, so the step-0 numbers are the reference's, taken from the reference pass the first
            # evaluation makes anyway, and the first training step is not kept waiting for it.
            # A run that starts elsewhere (an earlier run's adapter) is evaluated there too, unless eval_every is 0:
            # "only at the end" (its start is then the earlier run's end, already measured).
            start_pending = bool(self.eval_examples) and self._starts_at_reference() and not self._logged_eval(0)
            if start_step == 0 and self.eval_examples and not start_pending and cfg.eval_every:
                self._log("eval", self.evaluate())
            bar = _progress(self.total_steps, start_step) if main else (lambda step, loss: None)
            while self.step < self.total_steps:
                scalars, instances = self.train_step()
                last = self.step == self.total_steps
                if self.step % cfg.log_every == 0 or last:
                    self._log("train", scalars)
                if self.step % cfg.instances_every == 0 or last:
                    rows = [row for part in self._gather(instances) for row in part]
                    if main and rows:
                        rundir.write_instances(self.run_dir, self.step, rows)
                if cfg.eval_every and self.step % cfg.eval_every == 0 and not last:
                    start_pending = self._log_start_eval(start_pending)
                    self._log("eval", self.evaluate())
                done = self.step - start_step
                eta = (time.time() - t_start) / done * (self.total_steps - self.step)
                self._status(step=self.step, eta_s=round(eta, 1), loss=scalars.get("loss"))
                bar(self.step, scalars.get("loss"))
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if self._stop_agreed() and not last:
                    self.save_checkpoint()
                    self._status(state="stopped", phase="stopped; resume continues from step %d" % self.step)
                    return "stopped"
            if self.eval_examples:
                self._log_start_eval(start_pending)
                self._log("eval", self.evaluate())
                self._status(phase="writing sample answers to held-out prompts")
                if main:
                    self.sample_answers()
            self.save_final()
            self._status(state="finished", step=self.step, eta_s=0, phase="finished")
            return "finished"
        finally:
            stop_beat()

    def sample_answers(self, n: int = 8) -> None:
        """Greedy answers to the first held-out prompts in sorted order (the base score answers the same ones), for
        side-by-side comparison of runs."""
        import pandas as pd

        from training.generate import generate

        prompts = sorted(set(self.eval_rows["prompt"].astype(str)))[:n]   # the same n as the base score's (evaluate.py)
        answers = generate(self.model, self.tokenizer, prompts, 1, temperature=0.0, max_new_tokens=self.cfg.max_new_tokens)
        df = pd.DataFrame({"prompt": prompts, "response": [a[0] for a in answers], "sample": 0})
        tmp = self.run_dir / f".{rundir.GENERATIONS}.tmp"
        df.to_parquet(tmp, index=False)
        tmp.rename(self.run_dir / rundir.GENERATIONS)

    def _log(self, split: str, scalars: dict, step: int | None = None) -> None:
        if self.accelerator.is_main_process:
            rundir.append_metrics(self.run_dir, {"step": self.step if step is None else step, "time": time.time(),
                                                 "split": split, **scalars})

    def _starts_at_reference(self) -> bool:
        """Whether the policy at step 0 is the reference exactly: a new LoRA adapter (B = 0) or a full fine-tune
        from the base, not a run that starts from an earlier adapter."""
        return not self.cfg.adapter_init

    def _logged_eval(self, step: int) -> bool:
        lines, _ = rundir.read_metrics(self.run_dir)
        return any(m.get("split") == "eval" and m.get("step") == step for m in lines)

    def _log_start_eval(self, pending: bool) -> bool:
        """Log the deferred step-0 evaluation (policy = reference) once; returns whether it is still pending."""
        if pending:
            self._log("eval", self.evaluate(policy_is_reference=True), step=0)
        return False

    def _stop_agreed(self) -> bool:
        """Whether any process was asked to stop: SIGTERM may reach only one (the app signals the main process)
        or reach them during different steps, and all must stop after the same one."""
        if self.accelerator.num_processes == 1:
            return self.stop_requested
        asked = torch.tensor(float(self.stop_requested), device=self.device)
        return bool(self.accelerator.reduce(asked, "sum") > 0)

    def save_final(self) -> None:
        """Every process takes part (a sharded model's weights are gathered here); the main one writes."""
        state = self.accelerator.get_state_dict(self.policy)
        if not self.accelerator.is_main_process:
            return
        state = {k.removeprefix("model."): v for k, v in state.items()}   # PolicyLogps holds the model as .model
        if is_peft(self.model):
            self.model.save_pretrained(self.run_dir / rundir.ADAPTER, state_dict=state)
        else:
            self.model.save_pretrained(self.run_dir / rundir.MODEL, state_dict=state)
            self.tokenizer.save_pretrained(self.run_dir / rundir.MODEL)
        rundir.write_json_atomic(self.run_dir / "final.json", {"step": self.step, "beta": self.beta})


# -- helpers ------------------------------------------------------------------------------------------------------------
def _means(parts: list[tuple[dict[str, float], dict[str, int]]]) -> dict[str, float]:
    """Per-process (sums, counts) of micro-batch scalars -> their means over all micro-batches."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for s, c in parts:
        for k, v in s.items():
            sums[k], counts[k] = sums.get(k, 0.0) + v, counts.get(k, 0) + c[k]
    return {k: sums[k] / counts[k] for k in sums}


def _trainable_weights_only(models, weights, output_dir) -> None:
    """accelerate's save_state hook: a checkpoint keeps the trained weights (the LoRA adapter), not the frozen
    base model, which the job loads anyway."""
    for model, state in zip(models, weights):
        trained = {name for name, p in model.named_parameters() if p.requires_grad}
        for name in [k for k in state if k not in trained]:
            del state[name]


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

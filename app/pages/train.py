"""Train page: pick an algorithm, the labels, the model and the settings; check; one click to train.
Also starts generation jobs that fill the labeling queues with the model's own answers."""
from __future__ import annotations

import html

import gradio as gr
import pandas as pd

from app import iterate
from app import train_guide as guide
from app.chart_guide import GLOSSARY
from app.context import AppContext, User, UserError, admin_only, require_admin
from app.devices import machine_gpus
from app.handlers import handler
from app.launch import create_run
from app.preflight import check
from labeling import conflicts
from labeling import queue as Q
from labeling import runs
from labeling.dataset import annotator_names, label_counts, prompts_to_answer, training_rows
from training import algorithms
from training.config import AGGREGATORS, FederatedConfig, JobConfig, LoraConfig

PARAMS = [  # (JobConfig field, label, one-line help); the form's box for each is made from this list
    ("beta", "β", "How strongly to stay close to the reference (larger = more conservative). Default 0.1."),
    ("learning_rate", "Learning rate", "Step size; lower it if the loss jumps or turns NaN."),
    ("batch_size", "Batch size", "Examples per step (KTO needs at least 2)."),
    ("grad_accum", "Gradient accumulation", "Micro-batches per optimizer step (a larger effective batch, same memory)."),
    ("max_steps", "Max steps", "Optimizer steps; 0 = run the number of epochs below."),
    ("epochs", "Epochs", "Passes over the data when max steps is 0."),
    ("max_length", "Max length (tokens)", "Prompt + answer; longer answers are cut."),
    ("max_prompt_length", "Max prompt length", "Longer prompts keep their end."),
    ("epsilon", "ε (ε-DPO)", "How fast β adapts; default 0.01."),
    ("eta", "η (MRPO)", "How far an extra reference may disagree with the base; default 0.1."),
    ("label_smoothing", "Label smoothing (cDPO)", "Share of pairs assumed mislabeled; 0 = plain DPO."),
    ("desirable_weight", "λ good (KTO)", "Weight of good examples; filled from the class balance."),
    ("undesirable_weight", "λ bad (KTO)", "Weight of bad examples."),
    ("eval_every", "Evaluate every N steps", "Held-out m_θ and accuracy every N steps (0 = only at the end)."),
]
SFT_REDUCTIONS = [("Per-sequence mean (as the MinorSFT paper compares)", "seq_mean"),
                  ("Per-token mean (long answers weigh more)", "token_mean")]
# Settings some algorithm names as its own (training/algorithms.py); the others apply to every algorithm.
OWN_SETTINGS = {f for a in algorithms.ALGORITHMS.values() for f in a.settings}


def applies(algorithm: str, field: str, loss_type: str = "sigmoid") -> bool:
    """Whether a setting is shown for, and read from the form for, `algorithm` (label smoothing, cDPO, only with
    DPO's sigmoid loss)."""
    if field == "label_smoothing" and loss_type != "sigmoid":
        return False
    return field not in OWN_SETTINGS or field in algorithms.get(algorithm).settings


def selection(ctx: AppContext, algorithm: str, sites, annotators, min_agreement, since: str = "",
              until: str = "", with_evaluation: bool = False, drop_conflicts: bool = True) -> pd.DataFrame:
    """The labels a run would train on; `since`/`until` are dates (YYYY-MM-DD, inclusive) of the labels;
    `with_evaluation` adds the blind-evaluation judgments (left out by default: they measure models)."""
    import datetime as dt

    def day(text: str, field: str, end: bool):
        text = (text or "").strip()
        if not text:
            return None
        try:
            d = dt.date.fromisoformat(text)
        except ValueError:
            raise UserError(f"{field}: {text[:40]!r} is not a date; write it as YYYY-MM-DD.") from None
        return dt.datetime.combine(d, dt.time.max if end else dt.time.min)

    return training_rows(ctx.db, algorithms.get(algorithm).data_kind, sites=sites or None, annotators=annotators or None,
                         since=day(since, "Labeled from", False), until=day(until, "Labeled until", True),
                         min_agreement=min_agreement or None, with_evaluation=bool(with_evaluation),
                         drop_conflicts=drop_conflicts is not False)


def build_config(ctx: AppContext, form: dict) -> JobConfig:
    """The job a filled-in form describes. `form` holds algorithm, model, use_lora, lora_r, loss_type, references
    (run ids), gpus, gradient_checkpointing, four_bit, a value per PARAMS field and `federated` (enabled plus
    FederatedConfig fields). A missing or empty value, or a setting that does not apply to the algorithm, keeps
    the JobConfig default."""
    algorithm = form.get("algorithm") or "dpo"
    lora_r = int(form.get("lora_r") or 8)
    cfg = JobConfig(algorithm=algorithm, model=form.get("model") or str(ctx.default_model()),
                    lora=LoraConfig(r=lora_r, alpha=2 * lora_r) if form.get("use_lora", True) else None)
    if applies(algorithm, "loss_type"):
        cfg.loss_type = form.get("loss_type") or cfg.loss_type
    if applies(algorithm, "sft_reduction"):
        cfg.sft_reduction = form.get("sft_reduction") or cfg.sft_reduction
    if applies(algorithm, "references"):
        cfg.references = [str(ctx.runs_dir / r / "adapter") for r in form.get("references") or []]
    _fill(cfg, {field: form.get(field) for field, _, _ in PARAMS if applies(algorithm, field, cfg.loss_type)})
    _fill(cfg, {"gpus": form.get("gpus"), "gradient_checkpointing": form.get("gradient_checkpointing")})
    if form.get("four_bit"):
        cfg.quantization = "4bit"
    federated = form.get("federated") or {}
    if federated.get("enabled"):
        cfg.federated = FederatedConfig()
        _fill(cfg.federated, {k: v for k, v in federated.items() if k != "enabled"})
    return cfg


def _fill(config, values: dict) -> None:
    """Set a config's fields from form values, as the field's type (number boxes give floats); None is skipped."""
    for field, v in values.items():
        if v is not None:
            cur = getattr(config, field)
            setattr(config, field, type(cur)(v) if isinstance(cur, (int, float)) else v)


def site_preview(cfg: JobConfig, data: pd.DataFrame) -> str:
    """Per-site counts of good/bad and pairs, as the sites will hold them (KTO-R: after redistribution)."""
    from training.federated import partition
    from training.federated.simulation import prepare_sites

    if data.empty:
        return ""
    try:
        sites = prepare_sites(cfg, data)
    except ValueError as e:
        return f"❌ {e}"
    table = partition.summary(pd.concat(sites.values(), ignore_index=True))
    head = "| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns)
    rows = "\n".join("| " + " | ".join(str(v) for v in r) + " |" for r in table.itertuples(index=False))
    text = f"**Sites ({cfg.federated.setting.upper()})**\n\n{head}\n{rows}\n"
    if cfg.algorithm == "kto":
        if cfg.federated.balance_kto_per_site:
            lam = ", ".join(f"{n} {partition.site_kto_weights(r)[0]:.2f}" for n, r in sites.items())
            text += f"\nλ good per site (each balances its own classes): {lam}.\n"
        else:
            text += f"\nEvery site trains with the λ good / λ bad entered: {cfg.desirable_weight:g} / " \
                    f"{cfg.undesirable_weight:g}.\n"
    return text


def past_runs(ctx: AppContext, limit: int = 10) -> list[dict]:
    """The newest training runs with their measured seconds per step (app/train_guide.py's `measured_speed`)."""
    import json

    from storage import rundir

    out = []
    for run_id in runs.run_ids(ctx.db.reader(), kind="train")[:limit]:
        r = runs.run(ctx.db.reader(), run_id)
        cfg = json.loads(r["config"] or "{}")
        metrics, _ = rundir.read_metrics(r["run_dir"]) if r["run_dir"] else ([], 0)
        if cfg.get("federated") is None:      # federated rounds time differently
            out.append({"name": html.escape(r["name"] or run_id), "model": cfg.get("model"),
                        "algorithm": r["algorithm"], "batch_size": cfg.get("batch_size", 4),
                        "grad_accum": cfg.get("grad_accum", 1), "step_s": guide.step_seconds(metrics)})
    return out


def plan_lines(ctx: AppContext, cfg: JobConfig, data: pd.DataFrame, parameters: int | None) -> list[str]:
    """Steps, passes over the data (warned above 3) and the time the run will take, as preview lines."""
    if data.empty or cfg.federated is not None:
        return []
    steps, passes = guide.plan(len(data), cfg.data_kind, cfg.batch_size, cfg.grad_accum, cfg.max_steps, cfg.epochs,
                               cfg.gpus)
    lines = [f"{steps} optimizer steps of {cfg.batch_size * cfg.grad_accum * cfg.gpus} examples: about "
             f"**{passes:.1f} passes** over the data."]
    warning = guide.passes_warning(passes, steps, len(data))
    if warning:
        lines.append(f"⚠️ {warning}")
    measured = guide.measured_speed(past_runs(ctx), cfg.model, cfg.algorithm)
    if measured:
        step_s, source = measured[0] * cfg.batch_size * cfg.grad_accum, measured[1]
    elif parameters:
        text = data["prompt"].str.len() + data.filter(["chosen", "rejected", "completion"]).apply(
            lambda col: col.str.len()).mean(axis=1)
        tokens = min(float(text.mean()) / 4, cfg.max_length)        # about 4 characters a token
        device = "gpu" if machine_gpus() else "cpu"
        step_s, source = guide.first_guess_step_s(parameters, tokens, cfg.batch_size * cfg.grad_accum,
                                                  cfg.algorithm, device), None
    else:
        return lines
    return lines + [guide.estimate_line(steps, step_s, source)]


def sample_rows(data: pd.DataFrame, n: int = 3) -> pd.DataFrame:
    """A few training rows as the run will see them, each text cut to 100 characters."""
    cols = [c for c in ("site", "prompt", "chosen", "rejected", "completion", "label") if c in data]
    out = data[cols].sample(min(n, len(data)), random_state=0) if len(data) else data[cols]
    return out.apply(lambda col: col.astype(str).str.slice(0, 100) if col.dtype == object else col)


def preview(ctx: AppContext, cfg: JobConfig, data: pd.DataFrame) -> tuple[str, float | None]:
    tok = None
    try:
        from training.modeling import load_tokenizer

        tok = load_tokenizer(cfg.model)
    except Exception:  # noqa: BLE001 - a missing model is reported by the check itself
        pass
    r = check(cfg, data, ctx.home, tok)
    f = r["facts"]
    lines = [f"**{algorithms.get(cfg.algorithm).title}** on **{f['rows']}** examples"
             + (f" ({f['good']} good, {f['bad']} bad)" if "good" in f else "")
             + (f" from sites: {', '.join(sorted(data['site'].dropna().unique()))}" if not data.empty else "") + "."]
    if "suggested_desirable_weight" in f:
        lines.append(f"Suggested λ good = **{f['suggested_desirable_weight']}** (balances the classes; filled in).")
    if "architecture" in f:
        what = (f"LoRA on {', '.join(f['lora_modules'])}" if f["lora_modules"] else "full fine-tuning")
        lines.append(f"{f['architecture']}, {f['parameters']:,} parameters; {what}: "
                     f"**{f['trainable_parameters']:,}** trainable.")
    if "memory_estimate_gb" in f:
        lines.append(f"Memory estimate ≈ {f['memory_estimate_gb']} GB.")
    lines += plan_lines(ctx, cfg, data, f.get("parameters"))
    lines.append(f"Free disk {f['free_disk_gb']} GB.")
    lines += [f"❌ {p}" for p in r["problems"]] + [f"⚠️ {w}" for w in r["warnings"]]
    if r["ok"]:
        lines.append("✅ Ready to train.")
    return "  \n".join(lines), f.get("suggested_desirable_weight")


def labels_note(ctx: AppContext, cfg: JobConfig, f: dict) -> str:
    """The preview's words on conflicting labels and on the pair tasks DPO drops, under the form's label filters
    (`selection` has checked the dates)."""
    import datetime as dt

    since, until = ((dt.datetime.combine(dt.date.fromisoformat(v.strip()), t) if (v or "").strip() else None)
                    for v, t in ((f.get("since"), dt.time.min), (f.get("until"), dt.time.max)))
    rep = conflicts.report(ctx.db, f.get("sites") or None, f.get("annotators") or None, since, until,
                           f.get("min_agreement") or None, bool(f.get("with_evaluation")))
    return "  \n".join(conflicts.preview_lines(rep, cfg.data_kind, f.get("drop_conflicts") is not False))


@admin_only("start training")
def start_training(ctx: AppContext, user: User, cfg: JobConfig, data: pd.DataFrame, name: str,
                   eval_fraction: float, filters: dict) -> str:
    r = check(cfg, data, ctx.home)
    if not r["ok"]:
        raise UserError("Not started: " + " ".join(r["problems"]))
    run_id = create_run(ctx, cfg, data, name=name or None, filters=filters, eval_fraction=eval_fraction)
    return f"Run **{run_id}** queued. Watch it on the Runs page."


@admin_only("start generation")
def start_generation(ctx: AppContext, user: User, n_prompts: int, samples: int, max_new_tokens: int,
                     only_unlabeled: bool, model: str) -> str:
    prompts = prompts_to_answer(ctx.db, n_prompts, only_unlabeled)
    if prompts.empty:
        raise UserError("There are no prompts to answer (import some on the Data page).")
    cfg = JobConfig(kind="generate", model=model or str(ctx.default_model()), num_samples=int(samples),
                    max_new_tokens=int(max_new_tokens))
    run_id = create_run(ctx, cfg, prompts, name=f"generate {len(prompts)} prompts")
    return f"Generation job **{run_id}** queued: its answers join the Label page's queues when it finishes."


def build(ctx: AppContext):
    def reference_choices():
        """Finished training runs with an adapter: MRPO's possible extra references."""
        return [r for r in runs.run_ids(ctx.db, kind="train", state="finished")
                if (ctx.runs_dir / r / "adapter").exists()]

    defaults, fed_defaults, first = JobConfig(model="x"), FederatedConfig(), "dpo"
    with gr.Row(equal_height=True):
        b_iterate = gr.Button("Train on what is new", variant="primary", scale=0, min_width=260,
                              elem_id="train-iterate")
        iterate_md = gr.Markdown(elem_id="train-iterate-plan")
    iterate_msg = gr.Markdown(elem_id="train-iterate-result")
    with gr.Row():
        algorithm = gr.Radio([(a.title, a.name) for a in algorithms.ALGORITHMS.values()], value=first,
                             label="Algorithm", elem_id="train-algorithm", scale=3)
        name = gr.Textbox(label="Run name (optional)", scale=1)
    explain = gr.Markdown(algorithms.get(first).explanation, elem_id="train-explain")
    hint = gr.Markdown(elem_id="train-hint")   # which algorithm fits the labels there are
    with gr.Accordion("Data", open=True):
        with gr.Row():
            f_sites = gr.Dropdown([], multiselect=True, label="Sites (empty = all)")
            f_ann = gr.Dropdown([], multiselect=True, label="Annotators (empty = all)")
            f_agree = gr.Slider(0, 1, value=0, step=0.05, label="Minimum agreement")
            f_since = gr.Textbox(label="Labeled from (YYYY-MM-DD)", placeholder="any time")
            f_until = gr.Textbox(label="Labeled until (YYYY-MM-DD)", placeholder="any time")
            f_eval = gr.Slider(0, 0.5, value=0.1, step=0.05, label="Held out for evaluation",
                               info="Only while the project has no evaluation set (Data page): runs are scored on it.")
            f_with_eval = gr.Checkbox(value=False, label="Also train on evaluation judgments",
                                      info="Blind-evaluation pairs (Evaluate mode, Try side by side) measure models; "
                                           "training on them makes later comparisons unfair. Prompts of the "
                                           "evaluation set stay out either way.",
                                      elem_id="train-with-evaluation")
            f_conflicts = gr.Checkbox(value=True, label="Leave conflicting examples out",
                                      info="Answers labeled good in one place and worse in another (the preview "
                                           "lists them; resolve them on the Data page).", elem_id="train-conflicts")
    with gr.Accordion("Model", open=False):
        with gr.Row():
            model = gr.Textbox(value=str(ctx.default_model()), label="Model folder (Hugging Face format)")
            use_lora = gr.Checkbox(value=True, label="LoRA (train a small adapter; uncheck for full fine-tuning)")
            lora_r = gr.Number(value=8, precision=0, label="LoRA rank", info=GLOSSARY["LoRA rank"])
        refs = gr.Dropdown([], multiselect=True, label="MRPO: earlier runs as extra references",
                           elem_id="train-references", visible=applies(first, "references"))
    with gr.Accordion("Settings", open=False):
        loss_type = gr.Dropdown(["sigmoid", "ipo", "hinge"], value=defaults.loss_type, label="DPO variant",
                                info="sigmoid = DPO, ipo = IPO, hinge = SLiC-style hinge",
                                visible=applies(first, "loss_type"))
        sft_reduction = gr.Dropdown(SFT_REDUCTIONS, value=defaults.sft_reduction, label="Loss averaging (SFT, "
                                    "MinorSFT)", info="Keep it equal when comparing an SFT run with a MinorSFT run.",
                                    visible=applies(first, "sft_reduction"), elem_id="train-sft-reduction")
        boxes = {}
        with gr.Row():
            for field, label, help_ in PARAMS:
                boxes[field] = gr.Number(value=getattr(defaults, field), label=label, info=help_, min_width=180,
                                         visible=applies(first, field))
        n_gpus = len(ctx.supervisor.gpus if ctx.supervisor else machine_gpus())
        gpus = gr.Number(value=defaults.gpus, precision=0, minimum=1, maximum=max(1, n_gpus), label="GPUs per job",
                         info=f"This machine has {n_gpus} GPUs; more than 1 trains data-parallel (torchrun).",
                         visible=n_gpus > 1)
        with gr.Row():
            checkpointing = gr.Checkbox(value=defaults.gradient_checkpointing, label="Gradient checkpointing",
                                        info="Less memory for about a third more compute; the same losses.")
            four_bit = gr.Checkbox(value=False, label="Load the base model in 4-bit (QLoRA)", visible=n_gpus > 0,
                                   info="Much less memory for the frozen base; LoRA only; needs bitsandbytes.")
    with gr.Accordion("Federated across sites (only LoRA weights travel)", open=False):
        with gr.Row():
            fed_on = gr.Checkbox(value=False, label="Train federated: one client per site")
            fed_setting = gr.Radio([("KTO-O: labels stay at their site", "kto-o"),
                                    ("KTO-R: unpaired rows redistributed across sites", "kto-r")],
                                   value=fed_defaults.setting, label="Data setting")
            fed_agg = gr.Dropdown(list(AGGREGATORS), value=fed_defaults.aggregator, label="Aggregator")
        with gr.Row():
            fed_rounds = gr.Number(value=fed_defaults.rounds, precision=0, label="Rounds")
            fed_k = gr.Number(value=fed_defaults.clients_per_round, precision=0, label="Sites per round (0 = all)")
            fed_local = gr.Number(value=fed_defaults.local_steps, precision=0, label="Local steps per round")
            fed_mu = gr.Number(value=fed_defaults.mu, label="FedProx μ")
        with gr.Row():
            fed_fresh = gr.Checkbox(value=fed_defaults.fresh_local_optimizer, label="Fresh local optimizer each round",
                                    info="As the authors' code: each round a site starts a new AdamW and learning-rate "
                                         "schedule. Off: a site keeps its optimizer and schedule across rounds.")
            fed_balance = gr.Checkbox(value=fed_defaults.balance_kto_per_site, label="KTO: balance λ per site",
                                      info="Each site sets λ good = its bad / good count (the authors' setting) "
                                           "instead of the λ entered under Settings; the check shows each site's.")
    with gr.Row():
        b_check = gr.Button("Preview & check", elem_id="train-check")
        b_train = gr.Button("Train", variant="primary", elem_id="train-start")
    report = gr.Markdown(elem_id="train-report")
    samples = gr.Dataframe(label="A few of the examples it will train on", visible=False, interactive=False,
                           wrap=True, elem_id="train-samples")
    with gr.Accordion("Generate answers to label", open=False):
        with gr.Row():
            g_n = gr.Number(value=20, precision=0, label="Prompts")
            g_k = gr.Number(value=defaults.num_samples, precision=0, label="Answers per prompt")
            g_tok = gr.Number(value=defaults.max_new_tokens, precision=0, label="Max new tokens")
            g_only = gr.Checkbox(value=True, label="Only prompts without answers")
        g_btn = gr.Button("Generate", elem_id="train-generate")
        g_msg = gr.Markdown()

    # The form by name: handlers get its values as a dict (a new setting is one PARAMS entry).
    form = {"algorithm": algorithm, "name": name, "sites": f_sites, "annotators": f_ann, "min_agreement": f_agree,
            "since": f_since, "until": f_until, "eval_fraction": f_eval,
            "with_evaluation": f_with_eval, "drop_conflicts": f_conflicts, "model": model, "use_lora": use_lora,
            "lora_r": lora_r, "loss_type": loss_type, "sft_reduction": sft_reduction, "references": refs, "gpus": gpus,
            "gradient_checkpointing": checkpointing, "four_bit": four_bit, **boxes,
            "federated": {"enabled": fed_on, "setting": fed_setting, "aggregator": fed_agg, "rounds": fed_rounds,
                          "clients_per_round": fed_k, "local_steps": fed_local, "mu": fed_mu,
                          "fresh_local_optimizer": fed_fresh, "balance_kto_per_site": fed_balance}}
    form_inputs = {c for c in form.values() if not isinstance(c, dict)} | set(form["federated"].values())

    def read(values: dict) -> tuple[JobConfig, pd.DataFrame, dict]:
        """The config and the selected labels from the form's values (Gradio gives {component: value})."""
        f = {k: ({kk: values[cc] for kk, cc in c.items()} if isinstance(c, dict) else values[c])
             for k, c in form.items()}
        data = selection(ctx, f["algorithm"], f["sites"], f["annotators"], f["min_agreement"], f["since"], f["until"],
                         f["with_evaluation"], drop_conflicts=f["drop_conflicts"])
        return build_config(ctx, f), data, f

    @handler(ctx)
    def on_check(user, values):
        # label counts, site names, free disk and whether a server path exists: for those who may train
        require_admin(user, "check a training run")
        cfg, data, f = read(values)
        text, lam = preview(ctx, cfg, data)
        note = labels_note(ctx, cfg, f)
        text += "  \n" + note if note else ""
        if cfg.federated is not None:
            text += "\n\n" + site_preview(cfg, data)
        rows = sample_rows(data)
        return text, (lam if lam is not None else gr.update()), gr.update(value=rows, visible=not rows.empty)

    @handler(ctx)
    def on_train(user, values):
        cfg, data, f = read(values)
        filters = {"sites": f["sites"], "annotators": f["annotators"], "min_agreement": f["min_agreement"],
                   "since": f["since"] or None, "until": f["until"] or None,
                   "with_evaluation": bool(f["with_evaluation"])}
        return start_training(ctx, user, cfg, data, f["name"], f["eval_fraction"], filters)

    @handler(ctx)
    def on_iterate(user):
        return iterate.train_on_what_is_new(ctx, user)

    @handler(ctx)
    def on_generate(user, n, k, tok, only, mdl):
        return start_generation(ctx, user, n, k, tok, only, mdl)

    @handler(ctx, user=False)
    def on_algo(algo, loss="sigmoid"):
        """The explanation, and only the settings that apply to this algorithm."""
        return (algorithms.get(algo).explanation,
                gr.update(choices=reference_choices(), visible=applies(algo, "references")),
                gr.update(visible=applies(algo, "loss_type")), gr.update(visible=applies(algo, "sft_reduction")),
                *(gr.update(visible=applies(algo, field, loss)) for field in boxes))

    @handler(ctx, user=False)
    def on_page_load():
        """Sites, annotators and finished runs as they are now, not as they were when the app started."""
        return (gr.update(choices=Q.sites(ctx.db)), gr.update(choices=annotator_names(ctx.db)),
                gr.update(choices=reference_choices()), guide.algorithm_hint(**label_counts(ctx.db)),
                iterate.describe(ctx))

    algorithm.change(on_algo, [algorithm, loss_type], [explain, refs, loss_type, sft_reduction, *boxes.values()], api_name=False)

    @handler(ctx, user=False)
    def on_loss_type(algo, loss):
        return gr.update(visible=applies(algo, "label_smoothing", loss))

    loss_type.change(on_loss_type, [algorithm, loss_type], boxes["label_smoothing"], api_name=False)
    b_check.click(on_check, form_inputs, [report, boxes["desirable_weight"], samples], api_name="train_check")
    b_train.click(on_train, form_inputs, report, api_name="train_start")
    g_btn.click(on_generate, [g_n, g_k, g_tok, g_only, model], g_msg, api_name="generate_start")
    b_iterate.click(on_iterate, None, iterate_msg, api_name="train_iterate")
    return lambda demo: demo.load(on_page_load, None, [f_sites, f_ann, refs, hint, iterate_md], api_name=False)

"""Train page: pick an algorithm, the labels, the model and the settings; check; one click to train.
Also starts generation jobs that fill the labeling queues with the model's own answers."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from app.context import AppContext, User, UserError, friendly
from app.jobs import create_run
from app.preflight import ALGO_NAMES, check
from labeling.dataset import training_rows
from training.config import DATA_KIND, FederatedConfig, JobConfig, LoraConfig

EXPLAIN = {
    "sft": "SFT: imitate the written / good answers.",
    "minor_sft": "MinorSFT: SFT that slows down on answers the model already prefers (stays closer to the base).",
    "dpo": "DPO: from pairs, make the chosen answer more likely than the rejected one, relative to the base.",
    "eps_dpo": "ε-DPO: DPO whose β adapts per example and over training (watch the β trajectory).",
    "mrpo": "MRPO: DPO against several references at once (the base plus earlier runs).",
    "kto": "KTO: from single good/bad labels; no pairs needed.",
}
PARAMS = [  # (field, label, one-line help)
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
]


def selection(ctx: AppContext, algorithm: str, sites, annotators, min_agreement, since: str = "",
              until: str = "") -> pd.DataFrame:
    """The labels a run would train on; `since`/`until` are dates (YYYY-MM-DD, inclusive) of the labels."""
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

    return training_rows(ctx.db, DATA_KIND[algorithm], sites=sites or None, annotators=annotators or None,
                         since=day(since, "Labeled from", False), until=day(until, "Labeled until", True),
                         min_agreement=min_agreement or None)


def build_config(ctx: AppContext, algorithm: str, model: str, use_lora: bool, lora_r, loss_type: str,
                 references: list[str] | None, values: dict, federated: dict | None = None) -> JobConfig:
    cfg = JobConfig(algorithm=algorithm, model=model or str(ctx.default_model()),
                    lora=LoraConfig(r=int(lora_r or 8), alpha=2 * int(lora_r or 8)) if use_lora else None,
                    loss_type=loss_type or "sigmoid",
                    references=[str(ctx.runs_dir / r / "adapter") for r in (references or [])])
    for field, _, _ in PARAMS:
        v = values.get(field)
        if v is not None:
            cur = getattr(cfg, field)
            setattr(cfg, field, type(cur)(v) if isinstance(cur, (int, float)) else v)
    if federated and federated.get("enabled"):
        cfg.federated = FederatedConfig(rounds=int(federated["rounds"]), local_steps=int(federated["local_steps"]),
                                        clients_per_round=int(federated["clients_per_round"] or 0),
                                        aggregator=federated["aggregator"], mu=float(federated["mu"]),
                                        setting=federated["setting"])
    return cfg


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
    return f"**Sites ({cfg.federated.setting.upper()})**\n\n{head}\n{rows}\n"



def preview(ctx: AppContext, cfg: JobConfig, data: pd.DataFrame) -> tuple[str, float | None]:
    tok = None
    try:
        from training.modeling import load_tokenizer

        tok = load_tokenizer(cfg.model)
    except Exception:  # noqa: BLE001 - a missing model is reported by the check itself
        pass
    r = check(cfg, data, ctx.home, tok)
    f = r["facts"]
    lines = [f"**{ALGO_NAMES[cfg.algorithm]}** on **{f['rows']}** examples"
             + (f" ({f['good']} good, {f['bad']} bad)" if "good" in f else "")
             + (f" from sites: {', '.join(sorted(data['site'].dropna().unique()))}" if not data.empty else "") + "."]
    if "suggested_desirable_weight" in f:
        lines.append(f"Suggested λ good = **{f['suggested_desirable_weight']}** (balances the classes; filled in).")
    lines.append(f"Memory estimate ≈ {f['memory_estimate_gb']} GB; free disk {f['free_disk_gb']} GB.")
    lines += [f"❌ {p}" for p in r["problems"]] + [f"⚠️ {w}" for w in r["warnings"]]
    if r["ok"]:
        lines.append("✅ Ready to train.")
    return "  \n".join(lines), f.get("suggested_desirable_weight")


def start_training(ctx: AppContext, user: User, cfg: JobConfig, data: pd.DataFrame, name: str,
                   eval_fraction: float, filters: dict) -> str:
    if not user.is_admin:
        raise UserError(f"{user.name} is an annotator; only an admin can start training.")
    r = check(cfg, data, ctx.home)
    if not r["ok"]:
        raise UserError("Not started: " + " ".join(r["problems"]))
    run_id = create_run(ctx, cfg, data, name=name or None, filters=filters, eval_fraction=eval_fraction)
    return f"Run **{run_id}** queued. Watch it on the Runs page."


def start_generation(ctx: AppContext, user: User, n_prompts: int, samples: int, max_new_tokens: int,
                     only_unlabeled: bool, model: str) -> str:
    if not user.is_admin:
        raise UserError(f"{user.name} is an annotator; only an admin can start generation.")
    where = "WHERE p.id NOT IN (SELECT prompt_id FROM tasks WHERE response_a IS NOT NULL)" if only_unlabeled else ""
    prompts = ctx.db.df(f"SELECT p.id AS prompt_id, p.text AS prompt, p.site FROM prompts p {where} "
                        f"ORDER BY p.created_at LIMIT ?", [int(n_prompts)])
    if prompts.empty:
        raise UserError("There are no prompts to answer (import some on the Data page).")
    cfg = JobConfig(kind="generate", model=model or str(ctx.default_model()), num_samples=int(samples),
                    max_new_tokens=int(max_new_tokens))
    run_id = create_run(ctx, cfg, prompts, name=f"generate {len(prompts)} prompts")
    return f"Generation job **{run_id}** queued: its answers join the Label page's queues when it finishes."


def build(ctx: AppContext) -> None:
    sites = [r[0] for r in ctx.db.fetchall("SELECT DISTINCT site FROM tasks WHERE site IS NOT NULL ORDER BY 1")]
    annotators = [r[0] for r in ctx.db.fetchall("SELECT DISTINCT annotator FROM annotations ORDER BY 1")]
    defaults = JobConfig(model="x")
    with gr.Row():
        algorithm = gr.Radio([(ALGO_NAMES[a], a) for a in EXPLAIN], value="dpo", label="Algorithm",
                             elem_id="train-algorithm", scale=3)
        name = gr.Textbox(label="Run name (optional)", scale=1)
    explain = gr.Markdown(EXPLAIN["dpo"])
    with gr.Accordion("Data", open=True):
        with gr.Row():
            f_sites = gr.Dropdown(sites, multiselect=True, label="Sites (empty = all)")
            f_ann = gr.Dropdown(annotators, multiselect=True, label="Annotators (empty = all)")
            f_agree = gr.Slider(0, 1, value=0, step=0.05, label="Minimum agreement")
            f_since = gr.Textbox(label="Labeled from (YYYY-MM-DD)", placeholder="any time")
            f_until = gr.Textbox(label="Labeled until (YYYY-MM-DD)", placeholder="any time")
            f_eval = gr.Slider(0, 0.5, value=0.1, step=0.05, label="Held out for evaluation")
    with gr.Accordion("Model", open=False):
        with gr.Row():
            model = gr.Textbox(value=str(ctx.default_model()), label="Model folder (Hugging Face format)")
            use_lora = gr.Checkbox(value=True, label="LoRA (train a small adapter; uncheck for full fine-tuning)")
            lora_r = gr.Number(value=8, precision=0, label="LoRA rank")
        refs = gr.Dropdown([], multiselect=True, label="MRPO: earlier runs as extra references",
                           elem_id="train-references")
    with gr.Accordion("Settings", open=False):
        loss_type = gr.Dropdown(["sigmoid", "ipo", "hinge"], value="sigmoid", label="DPO variant",
                                info="sigmoid = DPO, ipo = IPO, hinge = SLiC-style hinge")
        boxes = {}
        with gr.Row():
            for i, (field, label, help_) in enumerate(PARAMS):
                boxes[field] = gr.Number(value=getattr(defaults, field), label=label, info=help_, min_width=180)
    with gr.Accordion("Federated across sites (only LoRA weights travel)", open=False):
        with gr.Row():
            fed_on = gr.Checkbox(value=False, label="Train federated: one client per site")
            fed_setting = gr.Radio([("KTO-O: labels stay at their site", "kto-o"),
                                    ("KTO-R: unpaired rows redistributed across sites", "kto-r")], value="kto-o",
                                   label="Data setting")
            fed_agg = gr.Dropdown(["fedavg", "fedprox", "fedadam", "fedyogi"], value="fedavg", label="Aggregator")
        with gr.Row():
            fed_rounds = gr.Number(value=5, precision=0, label="Rounds")
            fed_k = gr.Number(value=0, precision=0, label="Sites per round (0 = all)")
            fed_local = gr.Number(value=5, precision=0, label="Local steps per round")
            fed_mu = gr.Number(value=0.01, label="FedProx μ")
    with gr.Row():
        b_check = gr.Button("Preview & check", elem_id="train-check")
        b_train = gr.Button("Train", variant="primary", elem_id="train-start")
    report = gr.Markdown(elem_id="train-report")
    with gr.Accordion("Generate answers to label", open=False):
        with gr.Row():
            g_n = gr.Number(value=20, precision=0, label="Prompts")
            g_k = gr.Number(value=2, precision=0, label="Answers per prompt")
            g_tok = gr.Number(value=128, precision=0, label="Max new tokens")
            g_only = gr.Checkbox(value=True, label="Only prompts without answers")
        g_btn = gr.Button("Generate", elem_id="train-generate")
        g_msg = gr.Markdown()

    fields = list(boxes)
    fed_inputs = [fed_on, fed_setting, fed_agg, fed_rounds, fed_k, fed_local, fed_mu]

    def _cfg(algo, mdl, lora, r, lt, rf, *vals):
        vals, fed = vals[: len(fields)], vals[len(fields):]
        fd = dict(zip(["enabled", "setting", "aggregator", "rounds", "clients_per_round", "local_steps", "mu"], fed))
        return build_config(ctx, algo, mdl, lora, r, lt, rf, dict(zip(fields, vals)), fd)

    @friendly
    def on_check(algo, s, a, agree, since, until, mdl, lora, r, lt, rf, *vals):
        cfg = _cfg(algo, mdl, lora, r, lt, rf, *vals)
        data = selection(ctx, algo, s, a, agree, since, until)
        text, lam = preview(ctx, cfg, data)
        if cfg.federated is not None:
            text += "\n\n" + site_preview(cfg, data)
        return text, (lam if lam is not None else gr.update())

    @friendly
    def on_train(request: gr.Request, algo, s, a, agree, since, until, ev, nm, mdl, lora, r, lt, rf, *vals):
        user = ctx.user(request)
        cfg = _cfg(algo, mdl, lora, r, lt, rf, *vals)
        data = selection(ctx, algo, s, a, agree, since, until)
        return start_training(ctx, user, cfg, data, nm, ev, {"sites": s, "annotators": a, "min_agreement": agree,
                                                             "since": since or None, "until": until or None})

    @friendly
    def on_generate(n, k, tok, only, mdl, request: gr.Request):
        return start_generation(ctx, ctx.user(request), n, k, tok, only, mdl)

    def on_algo(algo):
        finished = [r[0] for r in ctx.db.fetchall(
            "SELECT id FROM runs WHERE state = 'finished' AND kind = 'train' ORDER BY created_at DESC")
            if (ctx.runs_dir / r[0] / "adapter").exists()]
        return EXPLAIN[algo], gr.update(choices=finished, visible=algo == "mrpo")

    common = [algorithm, f_sites, f_ann, f_agree, f_since, f_until]
    model_in = [model, use_lora, lora_r, loss_type, refs]
    algorithm.change(on_algo, algorithm, [explain, refs], api_name=False)
    b_check.click(on_check, common + model_in + [boxes[f] for f in fields] + fed_inputs,
                  [report, boxes["desirable_weight"]],
                  api_name="train_check")
    b_train.click(on_train, common + [f_eval, name] + model_in + [boxes[f] for f in fields] + fed_inputs, report,
                  api_name="train_start")
    g_btn.click(on_generate, [g_n, g_k, g_tok, g_only, model], g_msg, api_name="generate_start")

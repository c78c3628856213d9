"""Train page handlers without a browser: config from the form, pre-flight sentences, per-site preview for
federated runs, and only admins start training."""
import pytest

from app.context import User, UserError
from app.pages.train import build_config, preview, selection, site_preview, start_training
from labeling import queue as Q
from tests.jobdata import BAD, GOOD, PROMPTS

ADMIN, ANN = User("boss", "admin"), User("ann", "annotator")


def form(algorithm, model, **values):
    """The Train page's form as its handlers read it: LoRA rank 8, DPO's sigmoid loss, no references."""
    return {"algorithm": algorithm, "model": str(model), "use_lora": True, "lora_r": 8, "loss_type": "sigmoid",
            "references": [], **values}


def label(ctx, n=8, value="a"):
    for i in range(n):
        t = Q.create_task(ctx.db, "pair", f"{PROMPTS[i % 8]} #{i}", [GOOD[i % 8], BAD[i % 8]],
                          site=["plant-a", "plant-b"][i % 2])
        Q.save_annotation(ctx.db, t, "x", value)


def test_preview_counts_classes_and_suggests_kto_weight(ctx, tiny_model_dir):
    label(ctx)
    cfg = build_config(ctx, form("kto", tiny_model_dir, batch_size=2))
    text, lam = preview(ctx, cfg, selection(ctx, "kto", None, None, 0))
    assert "16** examples (8 good, 8 bad)" in text and lam == 1.0 and "Ready to train" in text


def test_wrong_data_kind_is_said_in_words(ctx, tiny_model_dir):
    label(ctx, value="both_bad")
    cfg = build_config(ctx, form("dpo", tiny_model_dir))
    text, _ = preview(ctx, cfg, selection(ctx, "dpo", None, None, 0))
    assert "DPO trains on decided pairs" in text and "Ready" not in text


def test_federated_preview_shows_each_site(ctx, tiny_model_dir):
    label(ctx)
    fed = {"enabled": True, "setting": "kto-r", "aggregator": "fedavg", "rounds": 2, "clients_per_round": 0,
           "local_steps": 2, "mu": 0.01}
    cfg = build_config(ctx, form("kto", tiny_model_dir, batch_size=2, federated=fed))
    assert cfg.federated.setting == "kto-r"
    table = site_preview(cfg, selection(ctx, "kto", None, None, 0))
    assert "plant-a" in table and "plant-b" in table and "good" in table
    dpo = build_config(ctx, form("dpo", tiny_model_dir, federated=fed))
    text, _ = preview(ctx, dpo, selection(ctx, "dpo", None, None, 0))
    assert "DPO cannot train on KTO-R data" in text


def test_sft_reduction_is_a_setting_of_sft_and_minor_sft_with_one_default(ctx, tiny_model_dir):
    assert build_config(ctx, form("sft", tiny_model_dir)).sft_reduction == "seq_mean"
    assert build_config(ctx, form("minor_sft", tiny_model_dir)).sft_reduction == "seq_mean"
    assert build_config(ctx, form("minor_sft", tiny_model_dir, sft_reduction="token_mean")).sft_reduction == "token_mean"
    assert build_config(ctx, form("dpo", tiny_model_dir, sft_reduction="token_mean")).sft_reduction == "seq_mean"


def test_federated_kto_preview_says_which_lambda_each_site_uses(ctx, tiny_model_dir):
    label(ctx)
    fed = {"enabled": True, "setting": "kto-o", "aggregator": "fedadam", "rounds": 2, "clients_per_round": 0,
           "local_steps": 2, "mu": 0.01, "fresh_local_optimizer": False}
    cfg = build_config(ctx, form("kto", tiny_model_dir, batch_size=2, desirable_weight=1.5, federated=fed))
    assert cfg.federated.fresh_local_optimizer is False and cfg.federated.server_lr == 1e-3
    data = selection(ctx, "kto", None, None, 0)
    assert "Every site trains with the λ good / λ bad entered: 1.5 / 1" in site_preview(cfg, data)
    cfg.federated.balance_kto_per_site = True
    assert "λ good per site (each balances its own classes): plant-a 1.00, plant-b 1.00" in site_preview(cfg, data)


def test_only_admins_start_training(ctx, tiny_model_dir):
    label(ctx)
    cfg = build_config(ctx, form("dpo", tiny_model_dir, batch_size=2, max_steps=2))
    data = selection(ctx, "dpo", None, None, 0)
    with pytest.raises(UserError, match="only an admin"):
        start_training(ctx, ANN, cfg, data, "", 0.0, {})
    assert ctx.db.scalar("SELECT count(*) FROM runs") == 0
    assert "queued" in start_training(ctx, ADMIN, cfg, data, "first", 0.0, {})
    assert ctx.db.scalar("SELECT state FROM runs") == "queued"


def test_date_filter_selects_labels_by_day_and_rejects_a_bad_date(ctx):
    import datetime as dt

    label(ctx, n=4)
    today = dt.date.today()
    assert len(selection(ctx, "dpo", None, None, 0, str(today), str(today))) == 4
    assert len(selection(ctx, "dpo", None, None, 0, str(today + dt.timedelta(days=1)), "")) == 0
    assert len(selection(ctx, "dpo", None, None, 0, "", str(today - dt.timedelta(days=1)))) == 0
    with pytest.raises(UserError, match="Labeled from: '25/11' is not a date"):
        selection(ctx, "dpo", None, None, 0, "25/11", "")


def test_a_setting_that_does_not_apply_to_the_algorithm_keeps_its_default(ctx, tiny_model_dir):
    hidden = build_config(ctx, form("eps_dpo", tiny_model_dir, label_smoothing=0.2, epsilon=0.05, loss_type="ipo",
                                    references=["r1"]))
    assert (hidden.label_smoothing, hidden.loss_type, hidden.references, hidden.epsilon) == (0.0, "sigmoid", [], 0.05)
    hidden.validate()                      # a value left in a hidden box cannot make the run fail
    mrpo = build_config(ctx, form("mrpo", tiny_model_dir, references=["r1"], eta=0.2))
    assert mrpo.references == [str(ctx.runs_dir / "r1" / "adapter")] and mrpo.eta == 0.2


def test_memory_options_reach_the_config_and_4_bit_is_refused_in_words_without_a_gpu(ctx, tiny_model_dir):
    plain = build_config(ctx, form("dpo", tiny_model_dir))
    assert (plain.gradient_checkpointing, plain.quantization) == (False, "none")
    cfg = build_config(ctx, form("dpo", tiny_model_dir, gradient_checkpointing=True, four_bit=True))
    assert (cfg.gradient_checkpointing, cfg.quantization) == (True, "4bit")
    label(ctx)
    text, _ = preview(ctx, cfg, selection(ctx, "dpo", None, None, 0))
    assert "❌" in text and "4-bit" in text and "Ready to train" not in text   # this machine has no GPU


def page(ctx):
    """The Train page's endpoints, its page-load handler, and its form's components by label."""
    import gradio as gr

    from app.pages import train as T

    with gr.Blocks() as demo:
        T.build(ctx)(demo)
    fns = {name: f for f in demo.fns.values() for name in (f.api_name, f.fn.__name__)}
    return fns, {c.label: c for c in fns["train_start"].inputs}


def test_the_form_reaches_its_handlers_as_named_values_with_the_configs_defaults(ctx, tiny_model_dir):
    from training.config import FederatedConfig

    label(ctx)
    fns, boxes = page(ctx)
    values = {c: c.value for c in fns["train_start"].inputs}
    fed = FederatedConfig()
    assert (values[boxes["Rounds"]], values[boxes["Local steps per round"]], values[boxes["FedProx μ"]],
            values[boxes["Aggregator"]]) == (fed.rounds, fed.local_steps, fed.mu, fed.aggregator)
    values.update({boxes["Model folder (Hugging Face format)"]: str(tiny_model_dir), boxes["Batch size"]: 2,
                   boxes["Max steps"]: 2, boxes["Run name (optional)"]: "from the form"})
    text, _, samples = fns["train_check"].fn(values, None)
    assert "**DPO** on **8** examples" in text and "Ready to train" in text
    assert samples["visible"] and len(samples["value"]) == 3 and set(samples["value"]["chosen"]) <= set(GOOD)
    assert "queued" in fns["train_start"].fn(values, None)
    assert ctx.db.fetchone("SELECT name, algorithm FROM runs") == ("from the form", "dpo")


def test_sites_and_annotators_are_read_when_the_page_loads(ctx):
    fns, _ = page(ctx)
    label(ctx)                             # labeled after the page was built
    sites, annotators, _, hint, plan = fns["on_page_load"].fn(None)
    assert sites["choices"] == ["plant-a", "plant-b"] and annotators["choices"] == ["x"]
    assert "8 decided pairs" in hint and "**DPO** fits pairs" in hint
    assert "No run yet" in plan and "DPO" in plan        # what "Train on what is new" would start


def test_the_runs_page_says_how_the_job_adapted_to_the_model(ctx, tiny_model_dir):
    """A job that pads instead of packing (a model without position ids) writes a note; the Runs page shows it."""
    from app.launch import create_run
    from app.pages.runs import status_line
    from storage import rundir

    label(ctx)
    run = create_run(ctx, build_config(ctx, form("dpo", tiny_model_dir)), selection(ctx, "dpo", None, None, 0))
    assert "ℹ️" not in status_line(ctx, run)
    rundir.write_status(ctx.runs_dir / run, note="This model takes no position ids: prompts are not packed.")
    assert "ℹ️ This model takes no position ids" in status_line(ctx, run)


def test_the_preview_says_passes_over_the_data_warns_above_three_and_estimates_the_time(ctx, tiny_model_dir):
    label(ctx)                                               # 8 pairs
    data = selection(ctx, "dpo", None, None, 0)
    text, _ = preview(ctx, build_config(ctx, form("dpo", tiny_model_dir, batch_size=4, max_steps=2)), data)
    assert "about **1.0 passes**" in text and "memorise" not in text
    assert "a first guess from the model's size" in text          # nothing timed on this machine yet
    text, _ = preview(ctx, build_config(ctx, form("dpo", tiny_model_dir, batch_size=4, max_steps=16)), data)
    assert "about **8.0 passes**" in text and "⚠️ These settings go over the same 8 examples about 8 times" in text


def test_the_estimate_uses_the_speed_measured_on_an_earlier_run_of_the_model(ctx, tiny_model_dir):
    from app.launch import create_run
    from storage import rundir

    label(ctx)
    data = selection(ctx, "dpo", None, None, 0)
    earlier = build_config(ctx, form("dpo", tiny_model_dir, batch_size=2))
    run = create_run(ctx, earlier, data, name="monday")
    for step in range(1, 6):                                   # 3 s a step of 2 pairs
        rundir.append_metrics(ctx.runs_dir / run, {"step": step, "time": 1000.0 + 3 * step, "split": "train"})
    text, _ = preview(ctx, build_config(ctx, form("dpo", tiny_model_dir, batch_size=4, max_steps=20)), data)
    assert "Time: about **2 min** for 20 steps (at the speed measured on this machine in run monday" in text


def test_kto_is_not_offered_the_settings_of_other_algorithms():
    from app.pages.train import PARAMS, applies
    from training import algorithms

    shown = {field for field, _, _ in PARAMS if applies("kto", field)}
    assert {"beta", "desirable_weight", "undesirable_weight", "batch_size"} <= shown
    assert not shown & {"epsilon", "eta", "label_smoothing"} and not applies("kto", "loss_type")
    # every algorithm's own setting that the form has a box for is shown for it
    for algo in algorithms.ALGORITHMS.values():
        assert all(applies(algo.name, f) for f in algo.settings)


def test_label_smoothing_is_offered_and_read_only_with_dpos_sigmoid_loss(ctx, tiny_model_dir):
    from app.pages.train import applies

    assert applies("dpo", "label_smoothing") and not applies("dpo", "label_smoothing", "ipo")
    cfg = build_config(ctx, form("dpo", tiny_model_dir, loss_type="hinge", label_smoothing=0.2))
    assert (cfg.loss_type, cfg.label_smoothing) == ("hinge", 0.0)
    cfg.validate()                        # a value left in the hidden box cannot make the run fail
    fns, _ = page(ctx)
    assert fns["on_loss_type"].fn("dpo", "ipo", None)["visible"] is False
    assert fns["on_loss_type"].fn("dpo", "sigmoid", None)["visible"] is True

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
    text, _ = fns["train_check"].fn(values, None)
    assert "**DPO** on **8** examples" in text and "Ready to train" in text
    assert "queued" in fns["train_start"].fn(values, None)
    assert ctx.db.fetchone("SELECT name, algorithm FROM runs") == ("from the form", "dpo")


def test_sites_and_annotators_are_read_when_the_page_loads(ctx):
    fns, _ = page(ctx)
    label(ctx)                             # labeled after the page was built
    sites, annotators, _ = fns["on_page_load"].fn(None)
    assert sites["choices"] == ["plant-a", "plant-b"] and annotators["choices"] == ["x"]


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

"""Train page handlers without a browser: config from the form, pre-flight sentences, per-site preview for
federated runs, and only admins start training."""
import pytest

from app.context import User, UserError
from app.pages.train import build_config, preview, selection, site_preview, start_training
from labeling import queue as Q
from tests.jobdata import BAD, GOOD, PROMPTS

ADMIN, ANN = User("boss", "admin"), User("ann", "annotator")


def label(ctx, n=8, value="a"):
    for i in range(n):
        t = Q.create_task(ctx.db, "pair", f"{PROMPTS[i % 8]} #{i}", [GOOD[i % 8], BAD[i % 8]],
                          site=["plant-a", "plant-b"][i % 2])
        Q.save_annotation(ctx.db, t, "x", value)


def test_preview_counts_classes_and_suggests_kto_weight(ctx, tiny_model_dir):
    label(ctx)
    cfg = build_config(ctx, "kto", str(tiny_model_dir), True, 8, "sigmoid", [], {"batch_size": 2})
    text, lam = preview(ctx, cfg, selection(ctx, "kto", None, None, 0))
    assert "16** examples (8 good, 8 bad)" in text and lam == 1.0 and "Ready to train" in text


def test_wrong_data_kind_is_said_in_words(ctx, tiny_model_dir):
    label(ctx, value="both_bad")
    cfg = build_config(ctx, "dpo", str(tiny_model_dir), True, 8, "sigmoid", [], {})
    text, _ = preview(ctx, cfg, selection(ctx, "dpo", None, None, 0))
    assert "DPO trains on decided pairs" in text and "Ready" not in text


def test_federated_preview_shows_each_site(ctx, tiny_model_dir):
    label(ctx)
    fed = {"enabled": True, "setting": "kto-r", "aggregator": "fedavg", "rounds": 2, "clients_per_round": 0,
           "local_steps": 2, "mu": 0.01}
    cfg = build_config(ctx, "kto", str(tiny_model_dir), True, 8, "sigmoid", [], {"batch_size": 2}, fed)
    assert cfg.federated.setting == "kto-r"
    table = site_preview(cfg, selection(ctx, "kto", None, None, 0))
    assert "plant-a" in table and "plant-b" in table and "good" in table
    dpo = build_config(ctx, "dpo", str(tiny_model_dir), True, 8, "sigmoid", [], {}, fed)
    text, _ = preview(ctx, dpo, selection(ctx, "dpo", None, None, 0))
    assert "DPO cannot train on KTO-R data" in text


def test_only_admins_start_training(ctx, tiny_model_dir):
    label(ctx)
    cfg = build_config(ctx, "dpo", str(tiny_model_dir), True, 8, "sigmoid", [], {"batch_size": 2, "max_steps": 2})
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

"""Runs page without a browser: charts only where they apply to the run's algorithm, each with its sentence; the
progress said in words for every phase; the actions a run's state allows; the smoothed curves; the displacement
and overfitting warnings over the whole run so far."""
import math

import plotly.graph_objects as go

from app import chart_guide, curves
from app.launch import create_run
from app.pages.runs import figures, offered, progress_words, status_line
from storage import rundir
from tests.jobdata import data_for
from training.config import JobConfig


def run_of(ctx, model, algorithm, n=8, **cfg):
    return create_run(ctx, JobConfig(algorithm=algorithm, model=str(model), batch_size=2, **cfg),
                      data_for(algorithm, n), name=f"my {algorithm} run")


def log(ctx, run, name, values, start=1):
    for step, v in enumerate(values, start):
        ctx.db.execute("INSERT INTO run_scalars (run_id, step, name, value) VALUES (?, ?, ?, ?)", [run, step, name, v])


def shown_panels(ctx, run):
    return [p.key for p, (on, fig) in zip(chart_guide.PANELS, figures(ctx, run)) if on and fig is not None]


def test_charts_are_shown_only_where_they_apply_to_the_algorithm(ctx, tiny_model_dir):
    kto, dpo = run_of(ctx, tiny_model_dir, "kto"), run_of(ctx, tiny_model_dir, "dpo")
    on_kto, on_dpo = shown_panels(ctx, kto), shown_panels(ctx, dpo)
    assert {"loss", "rewards", "kl", "m_theta_bands"} <= set(on_kto)
    assert not {"accuracy", "beta", "minor_coef"} & set(on_kto)          # KTO logs no pair accuracy, no β moves
    assert "accuracy" in on_dpo and "beta" not in on_dpo
    assert shown_panels(ctx, None) == []
    assert all(p.explanation.endswith(".") and len(p.explanation) > 40 for p in chart_guide.PANELS)


def test_the_glossary_explains_the_words_the_charts_use():
    words = chart_guide.glossary_markdown()
    for term in ("β", "m_θ", "z₀", "implicit reward", "likelihood displacement", "λ", "LoRA rank"):
        assert term in words


def test_progress_says_each_phase_instead_of_a_wrong_eta():
    running = lambda **st: progress_words("running", st.pop("step", 0), st.pop("total", 30), st)  # noqa: E731
    assert running(phase="starting") == "starting: loading the model and the data"
    ref = "reference log-probs: 12 of 40 answers, about 20 s left"
    assert running(phase=ref) == ref                                     # not "step 0 of ?"
    assert running(step=10, phase="training", eta_s=42.3) == "step 10 of 30, about 40 s left"
    ended = "reference log-probs: 40 of 40 answers, about 0 s left"     # a finished pass is not a phase any more
    assert running(step=10, phase=ended, eta_s=42.3) == "step 10 of 30, about 40 s left"
    writing = running(step=30, phase="writing sample answers to held-out prompts", eta_s=0)
    assert writing == "step 30 of 30; writing sample answers to held-out prompts" and "0 s left" not in writing
    assert "finishing" in running(step=30, phase="training", eta_s=0)
    assert progress_words("finished", 30, 30, {"eta_s": 0, "phase": "finished"}) == "step 30 of 30"


def test_only_the_actions_that_apply_are_offered():
    assert offered("running") == {"stop": True, "resume": False, "delete": False, "new": False, "export": False}
    assert offered("queued")["stop"] and offered("queued")["delete"]
    assert offered("stopped") == {"stop": False, "resume": True, "delete": True, "new": True, "export": False}
    assert offered("finished") == {"stop": False, "resume": False, "delete": True, "new": True, "export": True}
    assert not offered("running", origin="external")["stop"] and not offered("stopped", "external")["resume"]
    assert not offered("finished", kind="generate")["new"] and not any(offered(None).values())


def test_ema_is_debiased_and_skips_nan():
    assert all(math.isclose(v, 2.0) for v in curves.ema([2.0, 2.0, 2.0]))  # no pull towards 0 at the start
    out = curves.ema([1.0, float("nan"), 0.0], weight=0.5)
    assert out[0] == 1.0 and math.isnan(out[1]) and math.isclose(out[2], 0.25 / 0.75)


def test_smoothing_adds_an_ema_line_and_keeps_the_raw_points_faint():
    fig = go.Figure(go.Scatter(x=[1, 2, 3], y=[1.0, 0.0, 1.0], mode="lines+markers", name="loss"))
    out = chart_guide.smoothed(fig)
    raw, smooth = out.data
    assert raw.mode == "markers" and raw.opacity == 0.3 and smooth.name == "loss (EMA)"
    assert list(smooth.y) == curves.ema([1.0, 0.0, 1.0])


def test_displacement_is_read_over_the_whole_run_and_kept_when_it_finishes(ctx, tiny_model_dir):
    run = run_of(ctx, tiny_model_dir, "dpo")
    chosen = [-20, -20, -20, -20.5, -22, -23, -23, -22.5, -21.5, -20.5, -20, -20]   # dips, then recovers
    rejected = [-30, -30, -30, -31, -33, -34, -35, -35, -35, -35, -35, -35]
    assert curves.displacement_start(list(range(1, 7)), chosen[:6], rejected[:6]) == 6
    for n in range(8, 13):                 # every later view of the same run still says it, from the same step
        assert curves.displacement_start(list(range(1, n + 1)), chosen[:n], rejected[:n]) == 6
    log(ctx, run, "logps/chosen", chosen)
    log(ctx, run, "logps/rejected", rejected)
    ctx.db.execute("UPDATE runs SET state = 'finished', step = 12, total_steps = 12 WHERE id = ?", [run])
    assert "Likelihood displacement since step 6" in status_line(ctx, run)
    assert curves.displacement_start(list(range(1, 13)), [-20.0] * 12, rejected) is None   # chosen kept


def test_overfitting_is_warned_when_every_pair_is_right_early_in_a_many_pass_run(ctx, tiny_model_dir):
    assert chart_guide.overfitting_warning([(s, 1.0) for s in range(1, 31)], 4, 30) is not None
    assert chart_guide.overfitting_warning([(s, 1.0) for s in range(1, 31)], 15, 30) is None     # 2 passes
    assert chart_guide.overfitting_warning([(s, 0.75) for s in range(1, 31)], 4, 30) is None
    run = run_of(ctx, tiny_model_dir, "dpo", n=8, max_steps=30)          # 4 batches of 2: 7.5 passes
    log(ctx, run, "rewards/accuracies", [0.5, 0.5, 1.0, 1.0, 1.0, 1.0])
    ctx.db.execute("UPDATE runs SET state = 'running', step = 6, total_steps = 30 WHERE id = ?", [run])
    rundir.write_status(ctx.runs_dir / run, phase="training", eta_s=50)
    line = status_line(ctx, run)
    assert line.startswith(f"**my dpo run** <small>{run}</small> (DPO) is **running**: step 6 of 30, about 50 s left")
    assert "Possible overfitting: every training pair has been ranked right since step 3 (0.8 passes" in line


def test_the_page_shows_a_kto_run_without_empty_charts_and_only_its_actions(ctx, tiny_model_dir):
    import gradio as gr

    from app.pages import runs as R

    with gr.Blocks() as demo:
        R.build(ctx)
    refresh = next(f for f in demo.fns.values() if f.fn.__name__ == "refresh")
    empty = refresh.fn(None, False, None)
    assert list(empty[0].iloc[:, 0]) == [R.NO_RUNS] and list(empty[-1].iloc[:, 0]) == [R.NO_VALUES]
    run = run_of(ctx, tiny_model_dir, "kto")
    out = dict(zip([c._id for c in refresh.outputs], refresh.fn(run, True, None)))
    ids = {c.elem_id: c._id for c in refresh.outputs if c.elem_id}
    cell = lambda key: out[ids[f"runs-cell-{key}"]]["visible"]            # noqa: E731
    assert cell("loss") and cell("rewards") and not cell("accuracy") and not cell("minor_coef")
    assert out[ids["runs-stop"]]["visible"] and not out[ids["runs-resume"]]["visible"]     # queued: stop or delete
    assert out[ids["runs-delete"]]["visible"] and "**my kto run** <small>" in out[ids["runs-status"]]
    assert "(KTO) is **queued**" in out[ids["runs-status"]]

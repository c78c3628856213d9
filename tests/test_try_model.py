"""Try page without a browser: which models are offered, the streamed answer and its token probabilities, and
opinions about answers turning into the same labels the Label page makes."""
import json
import math
import random

import pytest
import torch

from app.chat import Answer, ModelCache, confidence_note, model_choices, shaded_html, stream_answer
from app.context import User, UserError
from app.pages import try_model as P
from labeling.dataset import data_summary

ANN = User("nora", "annotator", "ward-3")
ADMIN = User("boss", "admin", None)


def make_run(ctx, base_dir, run_id="20260101-000000-beef", state="finished", seed=1):
    """A finished LoRA run as the trainer leaves it: a runs row and run_dir/adapter (non-zero weights)."""
    from peft import LoraConfig, get_peft_model

    from training.modeling import load_model

    run_dir = ctx.runs_dir / run_id
    torch.manual_seed(seed)
    model = get_peft_model(load_model(base_dir), LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                                            init_lora_weights=False, task_type="CAUSAL_LM"))
    model.save_pretrained(run_dir / "adapter")
    ctx.db.execute("INSERT INTO runs (id, name, kind, algorithm, config, run_dir, state) VALUES (?, ?, 'train', 'dpo', "
                   "?, ?, ?)", [run_id, "dpo first try", json.dumps({"model": str(base_dir)}), str(run_dir), state])
    return run_id


@pytest.fixture
def tctx(ctx, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("PREFLAB_MODEL", str(tiny_model_dir))
    return ctx


@pytest.fixture(scope="module")
def cache():
    return ModelCache()


def run_to_end(gen):
    last = None
    for last in gen:
        pass
    return last


def test_offers_the_base_model_and_finished_runs_only(tctx, tiny_model_dir):
    run = make_run(tctx, tiny_model_dir)
    make_run(tctx, tiny_model_dir, run_id="20260101-000001-dead", state="failed")
    specs = model_choices(tctx)
    assert [s.key for s in specs] == ["base", run]
    assert specs[1].adapter_path.endswith("adapter") and specs[1].base_path == str(tiny_model_dir)
    assert "dpo first try" in specs[1].label


def test_ask_before_the_lists_fill_in_uses_the_models_they_would_show(tctx, tiny_model_dir, monkeypatch):
    assert P.pick_models(tctx, None, None, False) == ["base"]       # Ask clicked while the page was still loading
    with pytest.raises(UserError, match="needs two models"):
        P.pick_models(tctx, None, None, True)
    run = make_run(tctx, tiny_model_dir)
    assert P.pick_models(tctx, None, None, True) == ["base", run]
    assert P.pick_models(tctx, run, None, True) == [run, "base"]
    assert P.pick_models(tctx, run, "base", False) == [run]          # a real pick is kept
    monkeypatch.setenv("PREFLAB_MODEL", str(tiny_model_dir / "missing"))
    tctx.db.execute("DELETE FROM runs")
    with pytest.raises(UserError, match="no model to talk to"):
        P.pick_models(tctx, None, None, False)


def test_stream_is_the_models_own_greedy_answer_with_true_probabilities(tctx, tiny_model_dir, cache):
    run = make_run(tctx, tiny_model_dir)
    base, tuned = model_choices(tctx)
    entry = cache.get(base)
    steps = list(stream_answer(entry, None, "Check the pump", temperature=0, max_new_tokens=12))
    final = steps[-1]
    assert final.done and len(final.ids) == 12 and len(steps) == 13      # one update per token, then done
    assert final.cut and "cut at the token limit" in confidence_note(final, threshold=-100)
    assert "".join(p for p, _ in final.pieces) == final.text
    # same tokens as transformers' own greedy decoding
    from training.data import encode_prompt

    prompt_ids = encode_prompt(entry.tokenizer, "Check the pump")
    ref = entry.model.generate(input_ids=torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=12,
                               eos_token_id=entry.tokenizer.eos_token_id)
    assert final.ids == ref[0, len(prompt_ids):].tolist()
    # each probability is the model's probability of that token given everything before it (one full forward)
    with torch.no_grad():
        logits = entry.model(input_ids=torch.tensor([prompt_ids + final.ids])).logits[0]
    logp = torch.log_softmax(logits.float(), -1)[len(prompt_ids) - 1:-1].gather(-1, torch.tensor(final.ids)[:, None])
    assert [p for _, p in final.pieces] == pytest.approx(logp.exp().squeeze(-1).tolist(), rel=1e-4)
    assert final.mean_logp == pytest.approx(float(logp.mean()), rel=1e-4)
    # the run's adapter changes the answer's probabilities; switching back gives the base model again
    tuned_answer = run_to_end(stream_answer(cache.get(tuned), run, "Check the pump", temperature=0, max_new_tokens=12))
    assert tuned_answer.mean_logp != pytest.approx(final.mean_logp, rel=1e-3)
    again = run_to_end(stream_answer(cache.get(base), None, "Check the pump", temperature=0, max_new_tokens=12))
    assert again.ids == final.ids and again.mean_logp == pytest.approx(final.mean_logp, rel=1e-5)


def test_sampling_follows_the_seed(tctx, cache):
    (base,) = model_choices(tctx)
    e = cache.get(base)
    a, b, c = (run_to_end(stream_answer(e, None, "Refund", temperature=1.0, top_p=0.9, max_new_tokens=10, seed=s))
               for s in (7, 7, 8))
    assert a.ids == b.ids and a.ids != c.ids


def test_shading_escapes_html_and_follows_probability():
    a = Answer(pieces=[("<script>alert(1)</script>", 0.9), (" <img src=x onerror=alert(2)>", 0.05)], done=True)
    out = shaded_html(a)
    assert "<script>" not in out and "<img" not in out and "&lt;script&gt;" in out
    alphas = [float(x.split(")")[0]) for x in out.split("rgba(239, 68, 68, ")[1:]]
    assert alphas[0] < alphas[1]                                          # less likely = redder
    assert "Low confidence" in confidence_note(a, threshold=-1.0)          # mean log p = (ln .9 + ln .05)/2 = -1.55
    assert "Low confidence" not in confidence_note(a, threshold=-2.0)


def test_a_finished_answer_shows_as_formatted_text_like_the_label_page_and_stays_safe():
    from app.chat import answer_html

    text = "**Stop** the pump:\n\n- torque the bolts\n- <img src=x onerror=alert(1)> [log](javascript:alert(2))"
    a = Answer(text=text, pieces=[(text, 0.5)], done=True)
    out = answer_html(a)
    assert "<strong>Stop</strong>" in out and "<li>torque the bolts</li>" in out
    assert "<img" not in out and 'href="javascript:' not in out and "**" not in out
    assert answer_html(a, shade=True) == shaded_html(a)                  # shading asked for: word by word
    assert answer_html(Answer(text=text, pieces=[(text, 0.5)]), shade=False).count("rgba(") == 1   # being written


def test_thumbs_down_is_a_single_label_counted_on_the_data_page(tctx, cache, tiny_model_dir):
    run = make_run(tctx, tiny_model_dir)
    state, shown = run_to_end(P.ask(tctx, cache, "Is the ward phone working?", [run], temperature=0,
                                    max_new_tokens=8))
    msg = P.rate(tctx, ANN, state, 0, "bad")
    assert "bad" in msg
    rows = tctx.db.records("""SELECT a.*, t.kind, r.text AS answer FROM annotations a JOIN tasks t ON t.id = a.task_id
                              JOIN responses r ON r.id = t.response_a""")
    assert len(rows) == 1
    r = rows[0]
    assert (r["kind"], r["value"], r["annotator"], r["source"], r["run_id"], r["site"]) == \
        ("single", "bad", "nora", "playground", run, "ward-3")
    assert r["answer"] == shown[0].text
    counts = {x["annotator"]: x["labels"] for x in data_summary(tctx.db)["per_annotator"]}
    assert counts == {"nora": 1}
    # changing one's mind is a new row superseding the old one, not a second label
    P.rate(tctx, ANN, state, 0, "good")
    assert {x["annotator"]: x["labels"] for x in data_summary(tctx.db)["per_annotator"]} == {"nora": 1}
    # someone else rating the very same answer is recorded too (the task makes room)
    P.rate(tctx, User("omar", "annotator", "ward-3"), state, 0, "bad")
    assert {x["annotator"] for x in data_summary(tctx.db)["per_annotator"]} == {"nora", "omar"}


def test_side_by_side_is_blind_and_the_preference_maps_back(tctx, cache, tiny_model_dir):
    run = make_run(tctx, tiny_model_dir)
    orders = set()
    for seed in range(6):
        state, _ = run_to_end(P.ask(tctx, cache, "Why is the pump loud?", ["base", run], temperature=1.0,
                                    max_new_tokens=6, rng=random.Random(seed), seed=seed))
        orders.add(tuple(state["order"]))
    assert orders == {(0, 1), (1, 0)}
    state, shown = run_to_end(P.ask(tctx, cache, "Why is the pump loud?", ["base", run], temperature=1.0,
                                    max_new_tokens=6, rng=random.Random(1), seed=3))
    left_model = state["models"][state["order"][0]]["key"]
    P.prefer(tctx, ANN, state, "1")                                         # the left one is better
    row = tctx.db.records("""SELECT a.value, a.shown_order, a.run_id, a.source, ra.text AS a_text
                             FROM annotations a JOIN tasks t ON t.id = a.task_id
                             JOIN responses ra ON ra.id = t.response_a WHERE t.kind = 'pair'""")[0]
    assert row["a_text"] == state["texts"][0]                              # a = the first model picked (base)
    assert row["value"] == ("a" if left_model == "base" else "b")
    assert row["shown_order"] == ("ab" if state["order"] == [0, 1] else "ba")
    assert row["run_id"] == (None if left_model == "base" else run) and row["source"] == "playground"
    assert shown[0].text == state["texts"][state["order"][0]]
    assert P.reveal(state) == (f"**Left:** {state['models'][state['order'][0]]['label']} · "
                               f"**Right:** {state['models'][state['order'][1]]['label']}")
    # a side-by-side pick measures the two models: a blind-evaluation judgment, not training data
    from labeling.blind_eval import judgments
    from labeling.dataset import training_rows

    assert judgments(tctx.db) == [("base", run, 1.0 if left_model == "base" else 0.0)]
    assert training_rows(tctx.db, "pairs").empty and len(training_rows(tctx.db, "pairs", with_evaluation=True)) == 1


def test_written_answer_is_an_sft_example(tctx, cache):
    state, _ = run_to_end(P.ask(tctx, cache, "How do I log a spill?", ["base"], max_new_tokens=5, seed=0))
    with pytest.raises(UserError, match="empty"):
        P.write_answer(tctx, ANN, state, "   ")
    P.write_answer(tctx, ANN, state, "Tell the site safety officer within one hour.")
    from labeling.dataset import training_rows

    df = training_rows(tctx.db, "sft")
    assert df[["prompt", "completion"]].values.tolist() == [["How do I log a spill?",
                                                             "Tell the site safety officer within one hour."]]


def test_refusals_are_sentences(tctx, cache):
    with pytest.raises(UserError, match="Ask something first"):
        P.rate(tctx, ANN, None, 0, "good")
    with pytest.raises(UserError, match="Type a question"):
        run_to_end(P.ask(tctx, cache, "  ", ["base"]))
    with pytest.raises(UserError, match="two different models"):
        run_to_end(P.ask(tctx, cache, "Hi", ["base", "base"]))
    with pytest.raises(UserError, match="not available"):
        run_to_end(P.ask(tctx, cache, "Hi", ["no-such-run"]))
    streaming = P.ask(tctx, cache, "Hi", ["base"], max_new_tokens=3, seed=0)
    partial, _ = next(streaming)
    with pytest.raises(UserError, match="still being written"):          # a click while the answer streams in
        P.rate(tctx, ANN, partial, 0, "bad")
    state, _ = run_to_end(streaming)
    assert state["done"]
    with pytest.raises(UserError, match="side by side"):
        P.prefer(tctx, ANN, state, "1")


def test_only_an_admin_sets_the_low_confidence_threshold(tctx):
    with pytest.raises(UserError, match="only an admin"):
        P.set_threshold(tctx, ANN, -1)
    assert P.threshold(tctx) == P.DEFAULT_THRESHOLD
    with pytest.raises(UserError, match="outside"):
        P.set_threshold(tctx, ADMIN, 3)
    P.set_threshold(tctx, ADMIN, "-1.2")
    assert P.threshold(tctx) == -1.2 and math.isfinite(P.threshold(tctx))

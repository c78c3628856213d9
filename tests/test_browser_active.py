"""Label what matters, in the browser: an admin orders the Pairs queue by the model, the background score job orders
it, the Label page serves the least sure task first, "Train on what is new" continues the loop and the queue is
re-scored by the new run. Tiny model (PREFLAB_MODEL), so the jobs take seconds."""
import json

import pandas as pd
import pytest

from app.context import AppContext
from labeling import queue as Q
from labeling.importer import import_file
from storage import rundir
from tests.browser import browser_page, need_chromium, running_app, shot
from tests.jobdata import BAD, GOOD, PROMPTS

pytestmark = pytest.mark.browser


@pytest.fixture
def home(tmp_path):
    """16 labeled pairs to train on, and 6 open pair tasks for the queue."""
    need_chromium()
    ctx = AppContext(home=tmp_path)
    rows = [{"prompt": f"{PROMPTS[i % 8]} (case {i})", "chosen": GOOD[i % 8], "rejected": BAD[i % 8]}
            for i in range(16)]
    (tmp_path / "prefs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert import_file(ctx.db, tmp_path / "prefs.jsonl")["ok"]
    open_tasks = {Q.create_task(ctx.db, "pair", f"Open question {i}: {PROMPTS[i]}", [GOOD[i], BAD[i]]):
                  f"Open question {i}" for i in range(6)}
    ctx.db.close()
    (tmp_path / "open.json").write_text(json.dumps(open_tasks))
    return tmp_path


def newest_scores(home, with_adapter: bool) -> pd.DataFrame:
    """The scores file of the newest finished score job with or without a run's adapter (the app holds the
    database; the run directories are plain files)."""
    found = []
    for d in (home / "runs").iterdir():
        st = rundir.read_status(d) or {}
        cfg = rundir.read_config(d) or {}
        if cfg.get("kind") == "score" and st.get("state") == "finished" and (d / rundir.SCORES).exists():
            found.append((d.stat().st_mtime, d, cfg))
    for _, d, cfg in sorted(found, reverse=True):
        if bool(cfg.get("adapter_init")) == with_adapter:
            return pd.read_parquet(d / rundir.SCORES)
    return pd.DataFrame()


def open_data_queue(page):
    page.get_by_role("tab", name="Data").click()
    if not page.locator("#data-queue-summary").is_visible():      # opened once, it stays open
        page.get_by_role("button", name="Queue order (admin)", exact=False).click()
    page.wait_for_selector("#data-queue-summary")


def test_unsure_first_and_train_on_what_is_new(home, tiny_model_dir):
    open_tasks = json.loads((home / "open.json").read_text())
    env = {"PREFLAB_MODEL": str(tiny_model_dir)}
    with running_app(home, env=env) as (url, _), browser_page() as page:
        page.goto(url)
        page.wait_for_selector("#label-start")
        open_data_queue(page)
        page.get_by_label("Model unsure first").check()
        page.click("#data-queue-set")
        page.wait_for_function("() => document.querySelector('#data-queue-result').innerText.includes('Score job')")
        # the base model's scores arrive in the background; the summary says so once they are in
        page.wait_for_function("""() => { document.querySelector('#data-refresh').click();
            return document.querySelector('#data-queue-summary').innerText.includes('6 of 6 open tasks scored'); }""",
                               polling=1000, timeout=120000)
        assert "Pairs: Model unsure first" in page.inner_text("#data-queue-summary")
        shot(page, "data-queue-order")

        scores = newest_scores(home, False).sort_values("unsure")
        least_sure = open_tasks[scores["task_id"].iloc[0]]
        page.get_by_role("tab", name="Label").click()
        page.get_by_label("Pairs").check()
        page.wait_for_function(f"() => document.querySelector('#label-prompt').innerText.includes('{least_sure}')")
        assert "unsure" not in page.inner_text("body").lower()           # never shown to annotators
        page.keyboard.press("1")
        second = open_tasks[scores["task_id"].iloc[1]]
        page.wait_for_function(f"() => document.querySelector('#label-prompt').innerText.includes('{second}')")
        shot(page, "label-unsure-first")

        page.get_by_role("tab", name="Train").click()
        page.wait_for_function("() => document.querySelector('#train-iterate-plan').innerText.includes('No run yet')")
        page.click("#train-iterate")
        page.wait_for_function("() => document.querySelector('#train-iterate-result').innerText.includes('queued')")
        assert "DPO on all" in page.inner_text("#train-iterate-result")   # conflicting labels are left out
        shot(page, "train-iterate")
        # the run finishes; the supervisor re-scores the queue with its adapter
        page.get_by_role("tab", name="Runs").click()
        page.wait_for_function("() => document.body.innerText.includes('round 1')", timeout=30000)
        open_data_queue(page)
        page.wait_for_function("""() => { document.querySelector('#data-refresh').click();
            const text = document.querySelector('#data-queue-summary').innerText;
            return text.includes('5 of 5 open tasks scored') && text.includes('queue scores by round 1'); }""",
                               polling=1000, timeout=240000)
        assert set(newest_scores(home, True)["method"]) == {"implicit reward"}

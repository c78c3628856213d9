"""From labels to a compared model in the browser: Train page -> run finishes on the Runs page with β and m_θ
charts drawn -> a second run -> Compare. Uses the tiny model (PREFLAB_MODEL) so it runs in seconds."""
import contextlib
import json
import os
import signal
import time

import pytest

from app.context import AppContext
from labeling import queue as Q
from labeling.importer import import_file
from storage import rundir
from tests.browser import browser_page, choose, doc_shot, need_chromium, running_app, shot
from tests.jobdata import BAD, GOOD, PROMPTS

pytestmark = pytest.mark.browser


@pytest.fixture
def home(tmp_path):
    need_chromium()
    ctx = AppContext(home=tmp_path)
    rows = [{"prompt": f"{PROMPTS[i % 8]} (case {i})", "chosen": GOOD[i % 8], "rejected": BAD[i % 8],
             "site": ["maintenance", "support"][i % 2]} for i in range(24)]
    (tmp_path / "prefs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert import_file(ctx.db, tmp_path / "prefs.jsonl")["ok"]
    ctx.db.close()
    return tmp_path


def train_from_page(page, algorithm: str, steps: int):
    page.get_by_role("tab", name="Train").click()
    page.get_by_label(algorithm, exact=True).check()
    # the page has shown the algorithm's own settings (their visibility changes with it)
    page.wait_for_function(f"() => document.querySelector('#train-explain').innerText.startsWith('{algorithm}:')")
    if not page.get_by_label("Max steps").is_visible():
        page.get_by_role("button", name="Settings ▼").click()
        # the panel's last box: the panel has rendered (a box typed into while it still renders loses its value)
        page.get_by_label("Gradient checkpointing").wait_for()
    page.get_by_label("Max steps").fill(str(steps))
    page.get_by_label("Batch size").fill("4")
    page.get_by_label("Max length (tokens)").fill("64")
    page.get_by_label("Max prompt length").fill("32")
    page.keyboard.press("Tab")
    assert page.get_by_label("Max steps").input_value() == str(steps)
    page.click("#train-check")
    page.wait_for_function("() => document.body.innerText.includes('Ready to train')")
    page.click("#train-start")
    page.wait_for_function("() => document.body.innerText.includes('queued. Watch it')")
    return page.inner_text("#train-report").split("Run ")[1].split(" ")[0].strip("*")


def test_label_train_watch_compare(home, tiny_model_dir):
    with running_app(home, env={"PREFLAB_MODEL": str(tiny_model_dir)}) as (url, _), browser_page() as page:
        page.goto(url)
        page.wait_for_selector("#label-start")
        first = train_from_page(page, "ε-DPO", 8)

        shot(page, "train-queued")
        page.get_by_role("tab", name="Runs").click()
        page.wait_for_function(f"() => document.querySelector('#runs-status') && "
                               f"document.querySelector('#runs-status').innerText.includes('is finished')",
                               timeout=120000)
        page.wait_for_timeout(2500)   # one more refresh so every chart holds the final points
        # the β trajectory and the m_θ bands have data drawn
        for plot in ("#runs-plot-beta", "#runs-plot-m_theta_bands", "#runs-plot-loss"):
            assert page.locator(f"{plot} .scatterlayer .trace, {plot} .barlayer .trace").count() > 0, plot
        assert "Examples with the most extreme" in page.inner_text("body")
        # each chart says what it shows; a chart that does not apply to ε-DPO is not drawn empty
        assert "What training minimises" in page.inner_text("#runs-cell-loss")
        assert page.locator("#runs-cell-minor_coef").is_hidden() and page.locator("#runs-cell-beta").is_visible()
        assert page.locator("#runs-stop").is_hidden() and page.locator("#runs-delete").is_visible()
        shot(page, "runs-finished")
        page.get_by_label("Smooth the curves (EMA)").check()      # the loss as its EMA over faint raw points
        page.wait_for_function("() => document.querySelectorAll('#runs-plot-loss .scatterlayer .trace').length == 2")
        page.get_by_role("button", name="What the charts' words mean").click()
        page.wait_for_function("() => document.querySelector('#runs-glossary').innerText.includes('implicit reward')")
        shot(page, "runs-explained")
        second = train_from_page(page, "DPO", 6)
        page.get_by_role("tab", name="Runs").click()
        page.wait_for_function(f"() => document.body.innerText.includes('{second}')", timeout=30000)
        choose(page, "#runs-select", second)
        page.wait_for_function(f"() => document.querySelector('#runs-status').innerText.includes('{second}') && "
                               f"document.querySelector('#runs-status').innerText.includes('is finished')",
                               timeout=120000)
        page.get_by_role("tab", name="Compare").click()
        page.get_by_role("button", name="Reload run list").click()
        page.wait_for_timeout(1000)
        for run in (first, second):
            page.click("#compare-runs input")
            page.keyboard.type(run)
            page.wait_for_timeout(300)
            shot(page, "compare-dropdown")
            page.keyboard.press("Enter")
        page.click("#compare-go")
        page.wait_for_function("() => document.body.innerText.includes('Settings that differ')")
        page.wait_for_function(f"() => document.querySelector('#compare-heldout').innerText.includes('{first}')")
        page.wait_for_function(f"() => document.querySelector('#compare-heldout').innerText.includes('{second}')")
        shot(page, "compare")
        assert "algorithm" in page.inner_text("body")
        # both runs' loss curves are overlaid
        assert page.locator("#compare-loss .scatterlayer .trace").count() == 2


def test_labeling_while_a_job_trains(home, tiny_model_dir):
    """Labels are saved while a job trains (served with the job paused, app.priority), and the job keeps going
    after them: never left paused."""
    ctx = AppContext(home=home)
    for i in range(10):
        Q.create_task(ctx.db, "single", f"{PROMPTS[i % 8]} (to label {i})", [GOOD[i % 8]])
    ctx.db.close()
    env = {"PREFLAB_MODEL": str(tiny_model_dir), "PREFLAB_LABELING_FIRST": "1"}
    status = lambda: rundir.read_status(home / "runs" / run) or {}  # noqa: E731
    run = None
    try:
        with running_app(home, env=env) as (url, _), browser_page() as page:
            page.goto(url)
            page.wait_for_selector("#label-start")
            run = train_from_page(page, "DPO", 3000)
            page.get_by_role("tab", name="Label").click()
            page.get_by_label("Good / bad").check()
            deadline = time.time() + 120
            while not (status().get("state") == "running" and (status().get("step") or 0) >= 1):
                assert time.time() < deadline, f"the job never started training: {status()}"
                time.sleep(0.3)
            for n in range(6):
                page.wait_for_function(f"() => document.body.innerText.includes('mine {n} ·')")
                page.wait_for_timeout(150)
                page.keyboard.press("a")
            page.wait_for_function("() => document.body.innerText.includes('mine 6 ·')")
            shot(page, "label-while-training")
            st = status()
            assert st["state"] == "running", st            # the six labels were all saved while it trained
            time.sleep(3)
            assert status()["step"] > st["step"]            # and it went on training after them
            page.get_by_role("tab", name="Runs").click()     # the run, live: its status and curves while it trains
            choose(page, "#runs-select", run)
            page.wait_for_function(f"() => document.querySelector('#runs-status').innerText.includes('{run}') && "
                                   "document.querySelector('#runs-status').innerText.includes('is running')")
            for plot in ("#runs-plot-loss", "#runs-plot-m_theta_bands"):   # the loss and the m_θ bands are drawn
                page.wait_for_function(f"() => document.querySelector('{plot} .scatterlayer .trace')")
            doc_shot(page, "live-run", top="#runs-status", bottom="#runs-plot-m_theta_hist")
    finally:
        pid = status().get("pid") if run else None
        if pid:                                            # jobs outlive the app by design: end this one
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid), signal.SIGKILL)
    ctx = AppContext(home=home)
    assert ctx.db.scalar("SELECT count(*) FROM annotations WHERE value = 'good' AND source = 'app'") == 6
    ctx.db.close()

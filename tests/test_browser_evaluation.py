"""The whole loop in the browser, on the tiny model: label, train two runs, compare them, start a blind evaluation of
10 prompts, judge it in the Label page's Evaluate mode, read the win rate with its interval and the verdicts; and the
next training selection has exactly the rows it had before the evaluation."""
import contextlib
import json
import time

import pytest

from app.context import AppContext
from labeling import queue as Q
from labeling.importer import import_file
from tests.browser import browser_page, choose, need_chromium, running_app, shot
from tests.jobdata import BAD, GOOD, PROMPTS

pytestmark = pytest.mark.browser


@pytest.fixture
def home(tmp_path):
    need_chromium()
    ctx = AppContext(home=tmp_path)
    rows = [{"prompt": f"{PROMPTS[i % 8]} (case {i})", "chosen": GOOD[i % 8], "rejected": BAD[i % 8],
             "site": ["maintenance", "support"][i % 2]} for i in range(60)]   # 60 prompts: an evaluation set of 12
    (tmp_path / "prefs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert import_file(ctx.db, tmp_path / "prefs.jsonl")["ok"]
    for i in range(3):                                                         # left for the team to label
        Q.create_task(ctx.db, "pair", f"{PROMPTS[i]} (new {i})", [GOOD[i], BAD[i]], site="support")
    ctx.db.close()
    return tmp_path


def train(page, name: str, steps: int) -> str:
    """Queue a DPO run from the Train page with a learning rate high enough that two runs of the tiny model write
    different answers; returns its id."""
    page.get_by_role("tab", name="Train").click()
    page.get_by_label("DPO", exact=True).check()
    page.wait_for_function("() => document.querySelector('#train-explain').innerText.startsWith('DPO:')")
    page.get_by_label("Run name (optional)").fill(name)
    if not page.get_by_label("Max steps").is_visible():
        page.get_by_role("button", name="Settings ▼").click()
        page.get_by_label("Gradient checkpointing").wait_for()       # the panel has rendered
    for label, value in (("Max steps", steps), ("Batch size", 4), ("Learning rate", 0.02),
                         ("Max length (tokens)", 64), ("Max prompt length", 32)):
        page.get_by_label(label, exact=True).fill(str(value))
    page.keyboard.press("Tab")
    assert page.get_by_label("Learning rate", exact=True).input_value() == "0.02"
    page.click("#train-check")
    page.wait_for_function("() => document.body.innerText.includes('Ready to train')")
    page.click("#train-start")
    page.wait_for_function("() => document.body.innerText.includes('queued. Watch it')")
    return page.inner_text("#train-report").split("Run ")[1].split(" ")[0].strip("*")


def selection_line(page) -> str:
    """The first line of the Train page's preview: the algorithm and how many examples the selection holds."""
    page.get_by_role("tab", name="Train").click()
    for algorithm in ("KTO", "DPO"):      # KTO first: the DPO preview then shows anew even when it is unchanged
        page.get_by_label(algorithm, exact=True).check()
        page.wait_for_function(f"() => document.querySelector('#train-explain').innerText.startsWith('{algorithm}:')")
        page.click("#train-check")
        page.wait_for_function(f"() => document.querySelector('#train-report').innerText.startsWith('{algorithm} on')",
                               timeout=60000)
    return page.inner_text("#train-report").splitlines()[0]


def judged(page) -> int:
    """How many tasks of this mode the annotator has decided, as the progress bar says."""
    return int(page.inner_text(".preflab-progress").split("mine ")[1].split()[0])


def decide_all(page, total: int) -> None:
    """Press 1 (left better), and every third time 2, until `total` tasks of this mode are decided."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    while (n := judged(page)) < total:
        page.keyboard.press("1" if n % 3 else "2")
        with contextlib.suppress(PlaywrightTimeout):   # a key pressed while the last save finishes is ignored
            page.wait_for_function(f"() => document.body.innerText.includes('mine {n + 1} ·')", timeout=5000)
        page.wait_for_timeout(150)                     # a (fast) human pace


def wait_finished(page, run: str) -> None:
    """Until the Runs page says the run finished: jobs run one at a time on a CPU machine, so it may wait behind the
    evaluation-set scoring of earlier runs."""
    page.get_by_role("tab", name="Runs").click()
    page.wait_for_function(f"() => document.body.innerText.includes('{run}')", timeout=60000)
    choose(page, "#runs-select", run)
    page.wait_for_function(f"() => document.querySelector('#runs-status').innerText.includes('{run}') && "
                           "document.querySelector('#runs-status').innerText.includes('is finished')", timeout=1200000)


def test_label_train_compare_evaluate_blind_and_the_selection_stays(home, tiny_model_dir):
    # jobs at the app's priority: on a busy machine a niced job waits for minutes (six jobs run one after another)
    env = {"PREFLAB_MODEL": str(tiny_model_dir), "PREFLAB_JOB_NICE": "0"}
    with running_app(home, env=env) as (url, _), browser_page() as page:
        page.goto(url)
        page.wait_for_selector("#label-start")
        # label: the three open pairs
        page.get_by_label("Pairs", exact=True).check()
        page.wait_for_function("() => document.querySelector('#label-prompt').innerText.includes('(new ')")
        decide_all(page, 3)
        # train two runs
        first = train(page, "first run", 4)
        wait_finished(page, first)
        second = train(page, "second run", 6)
        wait_finished(page, second)
        before = selection_line(page)
        # compare them, with the verdicts
        page.get_by_role("tab", name="Compare").click()
        page.get_by_role("button", name="Reload run list").click()
        for name in ("first run", "second run"):
            page.click("#compare-runs input")
            page.keyboard.type(name)
            page.wait_for_function(f"() => [...document.querySelectorAll('ul[role=listbox] li')]"
                                   f".some(li => li.innerText.includes('{name}'))")
            page.keyboard.press("Enter")
        page.click("#compare-go")
        page.wait_for_function("() => document.querySelector('#compare-verdicts').innerText.includes('second run')")
        # a blind evaluation of the two runs on 10 prompts of the evaluation set
        page.locator("#compare-ab-n input").fill("10")
        page.click("#compare-ab")
        page.wait_for_function("() => document.querySelector('#compare-ab-result').innerText.includes('started')")
        assert "answer 10 evaluation prompts" in page.inner_text("#compare-ab-result")
        shot(page, "evaluation-started")
        # judge it in the Evaluate mode, once both models' answers are written
        page.get_by_role("tab", name="Label").click()
        page.get_by_label("Evaluate", exact=True).check()
        deadline = time.time() + 1200       # the answers are written after the runs' scoring jobs (one at a time)
        while "Nothing left" in page.inner_text("#label-prompt"):
            assert time.time() < deadline, "the evaluation's pairs never reached the Evaluate mode"
            page.click("#label-start")
            page.wait_for_timeout(1500)                                   # poll every 1.5 s
        total = int(page.inner_text(".preflab-progress").split(" of ")[-1].split()[0])
        assert 1 <= total <= 10
        shown = " ".join(page.inner_text(s) for s in ("#label-prompt", "#label-response-1", "#label-response-2"))
        assert not any(w in shown for w in ("first run", "second run", first, second))   # blind: no model names
        shot(page, "evaluate-mode")
        decide_all(page, total)
        page.wait_for_function("() => document.querySelector('#label-prompt').innerText.includes('Nothing left')")
        # the win rate with its interval, on the Evaluate tab and on Compare
        page.get_by_role("tab", name="Evaluate").click()
        page.click("#eval-refresh")
        page.wait_for_function("() => document.querySelector('#eval-results').innerText.includes('95% interval')")
        text = page.inner_text("#eval-results")
        assert f"of {total} blind judgments" in text and "second run" in text and "first run" in text
        assert "judged" in page.inner_text("#eval-table")
        shot(page, "evaluate-results")
        page.get_by_role("tab", name="Compare").click()
        page.click("#compare-go")
        page.wait_for_function("() => document.querySelector('#compare-ab-results').innerText.includes('95% interval')")
        page.wait_for_function("() => document.querySelector('#compare-verdicts').innerText"
                               ".includes('Prefers the answers your team preferred')", timeout=300000)
        shot(page, "compare-evaluated")
        # the judgments did not reach the training selection
        assert selection_line(page) == before
    from labeling.blind_eval import judgments
    from labeling.dataset import training_rows
    from storage.snapshots import create_snapshot

    ctx = AppContext(home=home)
    try:
        assert len(judgments(ctx.db)) == total
        now = create_snapshot(ctx.db, home / "check", "pairs", training_rows(ctx.db, "pairs"))
        assert now["id"] == ctx.db.scalar("SELECT snapshot_id FROM runs WHERE id = ?", [second])
    finally:
        ctx.db.close()

"""The Try page in Debian's chromium: ask a tiny model, mark the answer 👎 and see it counted on the Data page;
compare the base model and a run side by side, blind, and record a preference."""
import pytest

from app.context import AppContext
from labeling.accounts import set_user
from tests.browser import browser_page, login, need_chromium, running_app, shot
from tests.test_try_model import make_run

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    need_chromium()
    from tests.tiny import make_tiny_model

    model = make_tiny_model(tmp_path_factory.mktemp("try-model"))
    home = tmp_path_factory.mktemp("try-home")
    ctx = AppContext(home=home)
    run = make_run(ctx, model)
    set_user(ctx.db, "nora", "nora-pw", role="annotator", site="ward-3")
    ctx.db.close()
    return home, model, run


def test_chat_rate_and_compare(home):
    home, model, run = home
    with running_app(home, auth=True, env={"PREFLAB_MODEL": str(model)}) as (url, _), browser_page() as page:
        login(page, url, "nora", "nora-pw")
        page.get_by_role("tab", name="Try").click()
        page.fill("#try-prompt textarea", "Why does the pump grind?")
        page.click("#try-ask")
        page.wait_for_function("() => document.body.innerText.includes('mean log-probability')")
        page.wait_for_function("() => !document.querySelector('#try-ask').disabled")   # the answer is finished
        page.wait_for_selector("#try-answer-1 .preflab-answer p")          # finished: formatted text (markdown)
        assert page.locator("#try-answer-1 span[title^='p = ']").count() == 0
        page.get_by_label("Shade words by the model's confidence").check()
        page.wait_for_selector("#try-answer-1 span[title^='p = ']")           # shaded tokens on request
        shot(page, "try-answer")
        page.click("#try-bad-1")
        page.wait_for_function("() => document.body.innerText.includes('answer is bad')")
        page.get_by_role("tab", name="Data").click()
        page.click("#data-refresh")
        page.wait_for_function("() => document.querySelector('#data-per-annotator').innerText.includes('nora')")
        shot(page, "try-counted-on-data")
        # side by side, blind: the base model and the run
        page.get_by_role("tab", name="Try").click()
        page.get_by_label("Side by side (blind)").check()
        assert run in page.locator("#try-model-2 input").input_value()      # the second model defaults to the run
        page.click("#try-ask")
        page.wait_for_function("() => document.querySelector('#try-confidence-2').innerText.includes('log-prob')")
        page.wait_for_function("() => !document.querySelector('#try-ask').disabled")   # both answers finished
        page.click("#try-left-better")
        page.wait_for_function("() => document.body.innerText.includes('left is better')")
        page.click("#try-reveal")
        page.wait_for_function("() => document.body.innerText.includes('Left:')")
        shot(page, "try-side-by-side")

    from storage.db import open_db

    db = open_db(home / "preflab.duckdb")
    rows = db.records("SELECT a.*, t.kind FROM annotations a JOIN tasks t ON t.id = a.task_id ORDER BY a.id")
    db.close()
    assert [(r["kind"], r["value"], r["annotator"], r["source"], r["run_id"]) for r in rows[:1]] == \
        [("single", "bad", "nora", "playground", None)]
    pair = rows[1]
    assert pair["kind"] == "pair" and pair["source"] == "playground" and pair["annotator"] == "nora"
    assert pair["value"] == pair["shown_order"][0]                  # the left one, mapped back to a or b

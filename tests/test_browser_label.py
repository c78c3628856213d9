"""Labeling as a person does it, in Debian's chromium: keyboard-only good/bad and blind pairs, undo, an edit from
the history, HTML in imported text shown as text, and an annotator refused admin actions (in the page and
through a direct API call)."""
import json

import pytest

from app.context import AppContext
from labeling.accounts import set_user
from labeling import queue as Q
from labeling.importer import import_file
from tests.browser import browser_page, doc_shot, login, need_chromium, running_app, shot

pytestmark = pytest.mark.browser

XSS_PROMPT = "Is this safe? <script>window.__xss = 1</script> **bold** <img src=x onerror=\"window.__xss = 2\">"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    need_chromium()
    home = tmp_path_factory.mktemp("label-home")
    ctx = AppContext(home=home)
    singles = [{"prompt": f"Question {i}: how do I fix pump {i}?", "response": f"Answer {i}: check seal {i}.",
                "site": "plant-a"} for i in range(22)]
    singles.append({"prompt": XSS_PROMPT, "response": "<script>window.__xss = 3</script>plain answer", "site": "plant-a"})
    pairs = [{"prompt": f"Pair question {i}", "response_a": f"First answer {i}", "response_b": f"Second answer {i}",
              "site": "plant-b"} for i in range(12)]
    for name, rows in (("singles.jsonl", singles), ("pairs.jsonl", pairs)):
        (home / name).write_text("\n".join(json.dumps(r) for r in rows))
        assert import_file(ctx.db, home / name)["ok"]
    set_user(ctx.db, "alice", "alice-pw", role="annotator", site="plant-a")
    set_user(ctx.db, "boss", "boss-pw", role="admin")
    for i in range(2):
        Q.create_task(ctx.db, "write", f"Write the reply to customer {i}", [f"Draft {i}"], site="plant-a")
    disputed = Q.create_task(ctx.db, "pair", "Which reply is kinder?", ["Sorry, fixing it now.", "Not my problem."],
                             site="plant-b", required=2)
    for who, value in (("carol", "a"), ("dave", "b")):
        Q.save_annotation(ctx.db, disputed, who, value, shown_order="ab")
    ctx.db.set_setting("guidelines", "Be **kind**. <b id='gl-html'>not bold</b>")
    ctx.db.close()
    return home


def mine(page, n):
    """Wait until the progress bar says this annotator has n current labels (screenshot if it never does)."""
    try:
        page.wait_for_function(f"() => document.body.innerText.includes('mine {n} ·')", timeout=20000)
        # a key pressed while the previous decision is still finishing is ignored on purpose (it would label a
        # task the person has not seen); press at a (fast) human pace
        page.wait_for_timeout(150)
    except Exception:
        shot(page, f"label-failed-waiting-for-{n}")
        raise


def test_annotator_labels_with_the_keyboard(home):
    with running_app(home, auth=True) as (url, _), browser_page() as page:
        login(page, url, "alice", "alice-pw")
        mine(page, 0)
        page.wait_for_selector("#label-prompt")
        shot(page, "label-start")
        saw_xss = False
        for i in range(20):
            if "<script>" in page.inner_text("#label-prompt"):
                saw_xss = True
            page.keyboard.press("a" if i % 3 else "x")
            mine(page, i + 1)
        # undo the last decision: it comes back and can be labeled again
        page.keyboard.press("Backspace")
        mine(page, 19)
        page.keyboard.press("x")
        mine(page, 20)
        # the HTML in the imported prompt is shown as text and never executed
        page.get_by_label("Good / bad").check()
        for _ in range(5):
            if "<script>" in page.inner_text("#label-prompt"):
                saw_xss = True
                break
            page.keyboard.press("Space")
            page.wait_for_timeout(600)
        assert saw_xss, "the prompt with HTML in it was never shown"
        assert page.evaluate("() => window.__xss") is None
        assert page.locator("#label-prompt img").count() == 0 and page.locator("#label-prompt script").count() == 0
        shot(page, "label-html-as-text")
        # blind pairs
        page.get_by_label("Pairs").check()
        page.wait_for_function("() => document.body.innerText.includes('Pair question')")
        for i in range(10):
            page.keyboard.press("1" if i % 2 else "2")
            mine(page, i + 1)
            if i == 2:
                doc_shot(page, "label-page")
        shot(page, "label-pairs-done")
        # edit one decision from the history
        page.wait_for_timeout(500)
        page.locator("#label-history span.text", has_text="Pair question").first.click()   # the newest decision
        page.wait_for_function("() => [...document.querySelectorAll('input[type=number]')]"
                               ".some(i => i.closest('label, div')?.innerText.includes('Row') && i.value === '1')")
        page.get_by_label("Change to").click()
        page.get_by_role("option", name="Tie", exact=True).click()
        page.click("#label-edit")
        page.wait_for_function("() => document.body.innerText.includes('Changed decision 1 to tie')")
        # h opens the guidelines (markdown; their HTML shown as text)
        page.locator("#label-edit").blur()
        page.keyboard.press("h")
        page.wait_for_function("() => (document.querySelector('#guidelines-text') || {innerText: ''})"
                               ".innerText.includes('Be kind')")
        assert page.locator("#gl-html").count() == 0
        # write mode: keys typed into the answer box are text, not decisions; ctrl+enter submits
        page.get_by_label("Write", exact=True).check()
        mine(page, 0)
        box = page.locator("#label-write textarea")
        box.click()
        box.press("Control+a")
        box.type("a x 1 2 ")
        box.type("Sorry for the wait.")
        box.press("Backspace")
        page.wait_for_timeout(500)
        mine(page, 0)
        box.press("Control+Enter")
        mine(page, 1)
        shot(page, "label-write-done")
        # the Data page refuses this annotator's admin actions
        page.get_by_role("tab", name="Data").click()
        page.get_by_text("Guidelines (admin)").click()
        page.click("#data-guidelines-save")
        page.wait_for_function("() => document.body.innerText.includes('only an admin can edit the guidelines')")
        shot(page, "label-annotator-refused")

    from storage.db import open_db

    db = open_db(home / "preflab.duckdb")
    rows = db.records("""SELECT a.*, t.kind FROM annotations a JOIN tasks t ON t.id = a.task_id
                         WHERE a.annotator = 'alice' ORDER BY a.id""")
    singles = [r for r in rows if r["kind"] == "single" and r["value"] in ("good", "bad")]
    pairs = [r for r in rows if r["kind"] == "pair" and r["source"] == "app"]
    assert len({r["task_id"] for r in singles}) == 20
    assert any(r["value"] == "retracted" for r in rows)                  # the undo is a row, not a delete
    assert len(pairs) == 10
    orders = [r["shown_order"] for r in pairs]
    for i, r in enumerate(pairs):                                         # key 1 = left, key 2 = right
        pressed = "1" if i % 2 else "2"
        left, right = r["shown_order"][0], r["shown_order"][1]
        assert r["value"] == (left if pressed == "1" else right)
    assert len(set(orders)) == 2, f"pair order never varied: {orders}"
    edit = [r for r in rows if r["source"] == "edit"]
    assert len(edit) == 1 and edit[0]["value"] == "tie" and edit[0]["supersedes"] is not None
    assert db.get_setting("guidelines").startswith("Be **kind**")       # the refused edit changed nothing
    written = [r for r in rows if r["kind"] == "write"]
    assert [r["text"] for r in written] == ["a x 1 2 Sorry for the wait"]
    db.close()


def test_direct_api_calls_enforce_roles(home):
    from gradio_client import Client

    from gradio_client import handle_file

    upload = home / "sneaky.jsonl"
    upload.write_text(json.dumps({"prompt": "injected", "response": "row"}) + "\n")
    with running_app(home, auth=True) as (url, _):
        alice = Client(url, auth=("alice", "alice-pw"), verbose=False)
        for api, args in (("/data_guidelines", ["pwned"]), ("/data_export", ["preference", "jsonl", "drop"]),
                          ("/data_import", [handle_file(str(upload)), "", None, False, ""]),
                          ("/data_add_user", ["mallory", "secret-pw", "admin", ""]),
                          ("/data_resolve", ["x", "a"]), ("/try_threshold", [-1]),
                          ("/train_start", None), ("/generate_start", None), ("/run_stop", ["x"]),
                          ("/train_iterate", []), ("/queue_order_set", ["Pairs", "unsure"]), ("/queue_rescore", [])):
            kwargs = {} if args is not None else {    # long forms: send the page's own defaults
                p["parameter_name"]: p.get("parameter_default") for p in
                alice.view_api(return_format="dict", print_info=False)["named_endpoints"][api]["parameters"]}
            with pytest.raises(Exception, match="only an admin"):
                alice.predict(*(args or []), api_name=api, **kwargs)
        with pytest.raises(Exception):                            # no account, no API
            Client(url, auth=("mallory", "secret-pw"), verbose=False).predict("x", api_name="/data_guidelines")
        boss = Client(url, auth=("boss", "boss-pw"), verbose=False)
        assert "saved" in boss.predict("Be kind.", api_name="/data_guidelines")
    from storage.db import open_db

    db = open_db(home / "preflab.duckdb")
    assert db.scalar("SELECT count(*) FROM prompts WHERE text = 'injected'") == 0
    assert db.scalar("SELECT count(*) FROM annotators WHERE name = 'mallory'") == 0
    assert db.get_setting("low_confidence_logp") is None and db.scalar("SELECT count(*) FROM runs") == 0
    db.close()


def test_admin_imports_with_a_report_and_downloads_an_export(home):
    bad = home / "bad.csv"
    bad.write_text("prompt,response\nHow do I log a spill?,Call the officer.\n,missing prompt\n")
    good = home / "good.csv"
    good.write_text("prompt,response\nHow do I log a spill?,Call the officer.\nWho signs the batch record?,QA.\n")
    with running_app(home, auth=True) as (url, _), browser_page() as page:
        login(page, url, "boss", "boss-pw")
        page.get_by_role("tab", name="Data").click()
        page.get_by_text("Import (admin)").click()
        page.locator("#data-upload input[type=file]").set_input_files(str(bad))
        page.fill("#data-import-site input, #data-import-site textarea", "plant-c")
        page.click("#data-import")
        page.wait_for_function("() => document.body.innerText.includes('Nothing was imported from bad.csv')")
        assert "prompt" in page.inner_text("#data-import-report")            # the line and field named
        shot(page, "data-import-report")
        page.locator("#data-upload button[aria-label='Clear']").click()
        page.locator("#data-upload input[type=file]").set_input_files(str(good))
        page.click("#data-import")
        page.wait_for_function("() => document.body.innerText.includes('Imported 2 new item(s) from good.csv')")
        # the conflict view: pick the disputed task, read both answers and the votes, settle it
        page.get_by_text("Disputed tasks (admin").click()
        page.locator("#data-disputed span.text", has_text="Which reply is kinder?").click()
        page.wait_for_function("() => document.body.innerText.includes('carol → a')")
        assert "Not my problem." in page.inner_text("#data-dispute-detail")
        page.get_by_label("Final label").click()
        page.get_by_role("option", name="a", exact=True).click()
        page.get_by_role("button", name="Resolve (admin)").click()
        page.wait_for_function("() => document.body.innerText.includes('resolved as a')")
        shot(page, "data-dispute-resolved")
        page.get_by_text("Export (admin)").click()
        page.click("#data-export")
        link = page.locator("#data-export-file a[href]").first
        link.wait_for()
        body = page.request.get(link.get_attribute("href")).text()
        shot(page, "data-export")
    rows = [json.loads(line) for line in body.splitlines() if line.strip()]
    settled = [r for r in rows if r["prompt"] == "Which reply is kinder?"]
    assert [(r["chosen"], r["rejected"]) for r in settled] == [("Sorry, fixing it now.", "Not my problem.")]
    from storage.db import open_db

    db = open_db(home / "preflab.duckdb")
    assert db.scalar("SELECT count(*) FROM tasks WHERE site = 'plant-c'") == 2
    db.close()

"""What an annotator may see and do, accounts that can be switched off, sessions that end with a password change,
private files: the review's findings, one test each (the HTTP ones: test_web_guard, test_security_http)."""
import json
import os
import stat
import subprocess
import sys

import gradio as gr
import pytest

from app import charts
from app.context import AppContext, PermissionDenied, UserError
from app.pages import runs as runs_page
from app.pages import train as train_page
from labeling import accounts as acc
from labeling import queue as Q
from tests.conftest import ROOT


class Request:
    """What the app reads of a gr.Request: the logged-in name and the login cookie."""

    def __init__(self, username, token=None):
        self.username = username
        self.cookies = {"access-token-unsecure-x": token} if token else {}


@pytest.fixture
def team(tmp_path):
    c = AppContext(home=tmp_path / "home", auth_required=True)
    acc.set_user(c.db, "ann", "ann-password", site="plant-a")
    acc.set_user(c.db, "bea", "bea-password", site="plant-b")
    acc.set_user(c.db, "boss", "boss-password", role="admin")
    yield c
    c.db.close()


def handlers(ctx, page) -> dict:
    with gr.Blocks() as demo:
        page.build(ctx)
    return {f.fn.__name__: f.fn for f in demo.fns.values()}


def test_the_runs_page_shows_an_annotator_only_her_own_votes(team):
    db = team.db
    t = Q.create_task(db, "single", "Is this answer safe?", ["Yes."], site="plant-a", required=2)
    Q.save_annotation(db, t, "ann", "good")
    Q.save_annotation(db, t, "bea", "bad")
    db.execute("INSERT INTO runs (id, kind, state, run_dir) VALUES ('r1', 'train', 'finished', '/nowhere')")
    db.execute("INSERT INTO run_instances (run_id, step, task_id, side, m_theta) VALUES ('r1', 1, ?, 'chosen', 2.0)",
               [t])
    refresh = handlers(team, runs_page)["refresh"]

    def labels(who):
        table = refresh("r1", False, Request(who))[-1]
        table = table.get("value", table) if isinstance(table, dict) else table
        return " ".join(str(v) for v in table["labels"])

    assert "ann: good" in labels("boss") and "bea: bad" in labels("boss")
    assert "ann: good" in labels("ann") and "bea" not in labels("ann")
    assert "ann" not in labels("bea") and "bea: bad" in labels("bea")
    assert charts.extreme_instances(db, "r1", only="ann")["labels"].tolist() == ["ann: good"]


def test_the_pre_flight_check_refuses_an_annotator(team):
    check = handlers(team, train_page)["on_check"]
    with pytest.raises(gr.Error, match="ann is an annotator; only an admin can check a training run"):
        check({}, Request("ann"))


def test_a_disabled_account_cannot_log_in_or_call_anything(team):
    assert acc.check_password(team.db, "ann", "ann-password")
    acc.set_disabled(team.db, "ann")
    assert not acc.check_password(team.db, "ann", "ann-password")
    with pytest.raises(PermissionDenied, match="disabled"):
        team.user(Request("ann"))
    acc.set_disabled(team.db, "ann", False)
    assert acc.check_password(team.db, "ann", "ann-password") and team.user(Request("ann")).name == "ann"
    assert [(u["name"], u["disabled"]) for u in acc.list_users(team.db)][0] == ("ann", False)


def test_a_password_change_ends_the_sessions_started_before_it(team):
    gradio_tokens = team.login_tokens = {"t-old": "ann"}
    assert team.user(Request("ann", "t-old")).name == "ann" and team.session_ok("t-old", "ann")
    acc.set_user(team.db, "ann", "new-password", site="plant-a")
    assert not team.session_ok("t-old", "ann")
    with pytest.raises(PermissionDenied, match="session has ended"):
        team.user(Request("ann", "t-old"))
    assert "t-old" not in gradio_tokens
    assert team.user(Request("ann", "t-new")).name == "ann"           # a login after the change works
    acc.set_disabled(team.db, "ann")
    assert not team.session_ok("t-new", "ann")                        # disabling ends sessions too


def test_an_annotator_kept_to_her_site_is_served_and_accepted_only_there(team):
    db = team.db
    acc.set_user(db, "ann", "ann-password", site="plant-a", site_only=True)
    other = Q.create_task(db, "single", "Plant B question", ["B answer"], site="plant-b")
    own = Q.create_task(db, "single", "Plant A question", ["A answer"], site="plant-a")
    assert Q.next_task(db, "ann")["task_id"] == own
    assert Q.next_task(db, "ann", site="plant-b") is None
    with pytest.raises(Q.LabelError, match="only tasks of site plant-a"):
        Q.save_annotation(db, other, "ann", "good")
    Q.save_annotation(db, own, "ann", "good")
    assert Q.next_task(db, "ann") is None
    assert Q.next_task(db, "bea")["task_id"] in (own, other)          # others are not restricted
    with pytest.raises(ValueError, match="give the site"):
        acc.set_user(db, "cid", "cid-password", site_only=True)


def test_an_edit_cannot_take_over_a_task_leased_to_another(db):
    t = Q.create_task(db, "single", "Only one label needed", ["Answer"], required=1)
    assert Q.next_task(db, "ann")["task_id"] == t
    skip_id = Q.skip(db, t, "ann")
    assert Q.next_task(db, "bea")["task_id"] == t                     # now leased to bea
    with pytest.raises(Q.LabelError, match="Another annotator is working on that task"):
        Q.edit_annotation(db, skip_id, "ann", "good")
    assert db.scalar("SELECT n_done FROM tasks") == 0
    Q.save_annotation(db, t, "bea", "bad")
    assert db.scalar("SELECT n_done FROM tasks") == 1


def test_the_database_and_exports_are_readable_by_their_owner_only(team, tmp_path):
    from labeling.label_export import export

    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(team.home / "preflab.duckdb") == 0o600
    out = export(team.db, "preference", tmp_path / "out" / "prefs.jsonl")
    assert mode(out["file"]) == 0o600
    path = team.offer_download(out["file"], team.user(Request("boss")))
    assert team.downloads[os.path.basename(path)] == {"boss"}


def test_app_user_reads_the_password_from_stdin_not_the_command_line(tmp_path):
    env = {**os.environ, "PREFLAB_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    run = lambda args, stdin="": subprocess.run([sys.executable, "-m", "app", "user", *args], input=stdin,  # noqa: E731
                                                 cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    r = run(["nora", "--site", "ward-3"], "s3cret-pass\n")
    assert json.loads(r.stdout)["ok"], r.stdout + r.stderr
    assert run(["nora", "--password", "visible"]).returncode != 0    # no such option any more
    assert json.loads(run(["nora", "--disable"]).stdout)["disabled"] is True
    from storage.db import open_db

    db = open_db(tmp_path / "home" / "preflab.duckdb")
    assert not acc.check_password(db, "nora", "s3cret-pass")          # disabled
    acc.set_disabled(db, "nora", False)
    assert acc.check_password(db, "nora", "s3cret-pass")
    db.close()


@pytest.mark.parametrize("text", ["`[x](javascript:alert(1))`", "``[x](JavaScript:alert(1))``",
                                  "```\n[x](javascript:alert(1))\n```"])
def test_a_script_link_in_code_is_broken_too(text):
    from labeling.render import markdown_html, safe_markdown

    assert "javascript:" not in safe_markdown(text).lower()
    assert 'href="javascript' not in markdown_html(text).lower()


def test_right_to_left_overrides_are_shown_not_obeyed():
    from labeling.render import safe_markdown

    shown = safe_markdown("admin\u202egnp.exe and \u2067isolated\u2069")
    assert shown == "admin[U+202E]gnp.exe and [U+2067]isolated[U+2069]"


def test_an_admin_disables_an_account_from_the_data_page(team):
    from app.pages import data as D

    boss, ann = team.user(Request("boss")), team.user(Request("ann", "t-ann"))
    with pytest.raises(PermissionDenied, match="only an admin can manage accounts"):
        D.switch_user(team, ann, "bea")
    assert "disabled" in D.switch_user(team, boss, "ann")
    assert not team.session_ok("t-ann", "ann") and not acc.check_password(team.db, "ann", "ann-password")
    assert D.accounts(team, boss).set_index("name").loc["ann", "disabled"]
    with pytest.raises(UserError, match="cannot disable your own"):
        D.switch_user(team, boss, "boss")
    assert "enabled again" in D.switch_user(team, boss, "ann") and team.user(Request("ann")).name == "ann"
    # a password reset from the page keeps the account's site restriction
    acc.set_user(team.db, "bea", "bea-password", site="plant-b", site_only=True)
    acc.set_user(team.db, "bea", "bea-new-password", site="plant-b")
    assert acc.get_user(team.db, "bea")["site_only"]

"""The one handler wrapping (app.handlers): who is asking, admins-only actions refused with one sentence, labeling
first, and errors as sentences, for plain and streaming handlers and for the pages' own endpoints."""
import contextlib
import inspect
import logging

import gradio as gr
import pytest

from app.context import AppContext, admin_only
from app.handlers import handler
from app.pages import data as D
from app.pages import label as L
from labeling import queue as Q
from labeling.accounts import set_user


class Request:
    """What a handler reads of a gr.Request: the logged-in name."""

    def __init__(self, username):
        self.username = username


@pytest.fixture
def team(tmp_path):
    """Multi-user mode with an annotator and an admin."""
    c = AppContext(home=tmp_path / "home", auth_required=True)
    set_user(c.db, "ann", "ann-password", role="annotator")
    set_user(c.db, "boss", "boss-password", role="admin")
    yield c
    c.db.close()


def endpoints(ctx, page) -> dict:
    """The page's API endpoints by name, wired as the app wires them."""
    with gr.Blocks() as demo:
        page.build(ctx)
    return {f.api_name: f.fn for f in demo.fns.values() if f.api_name}


def refusal(call) -> str:
    with pytest.raises(gr.Error) as e:
        call()
    return e.value.message


def test_an_annotator_calling_an_admin_handler_is_refused_with_the_sentence(team):
    @admin_only("launch rockets")
    def launch(ctx, user, n):
        return f"{user.name} launched {n}"

    @handler(team)
    def on_launch(user, n):
        return launch(team, user, n)

    assert on_launch(3, Request("boss")) == "boss launched 3"
    assert refusal(lambda: on_launch(3, Request("ann"))) == "ann is an annotator; only an admin can launch rockets."
    assert refusal(lambda: on_launch(3, Request("mallory"))) == "There is no account named 'mallory'."
    assert refusal(lambda: on_launch(3, None)) == "Please log in first."


def test_an_error_inside_becomes_a_sentence_and_the_trace_goes_to_the_log(team, caplog):
    @handler(team, user=False)
    def broken(x):
        return {}[x]

    with caplog.at_level(logging.ERROR, logger="preflab"):
        said = refusal(lambda: broken("beta", Request("boss")))
    assert said == "Something went wrong (KeyError: 'beta'). The details are in the server log."
    assert "Traceback" not in said and "broken" in caplog.text and caplog.records[0].exc_info


def test_a_streaming_handler_yields_and_turns_errors_into_sentences(team):
    @handler(team)
    def stream(user, n):
        for i in range(n):
            yield f"{user.name} {i}"
        raise ValueError("the stream broke")

    out = []
    with pytest.raises(gr.Error) as e:
        for part in stream(2, Request("ann")):
            out.append(part)
    assert out == ["ann 0", "ann 1"] and e.value.message.startswith("Something went wrong (ValueError: the stream")
    assert refusal(lambda: list(stream(1, Request("mallory")))) == "There is no account named 'mallory'."


def test_gradio_sees_the_inputs_and_fills_in_the_request(team):
    @handler(team)
    def on_pick(user, table, evt: gr.SelectData):
        return user.name, table, evt

    from gradio.helpers import special_args

    evt = gr.EventData(None, {"index": [0, 0], "value": "x"})
    inputs, _, event_index, _ = special_args(on_pick, ["t"], request="req", event_data=evt)
    assert inputs[0] == "t" and isinstance(inputs[1], gr.SelectData) and inputs[2] == "req" and event_index == 1
    assert list(gr.utils.get_function_params(on_pick)) == [("table", False, None, None)]


def test_labeling_handlers_run_with_the_job_paused(team, monkeypatch):
    held = []

    @contextlib.contextmanager
    def hold():
        held.append("in")
        yield
        held.append("out")

    monkeypatch.setattr(team, "labeling", hold)

    @handler(team, labeling=True)
    def label(user):
        held.append(user.name)

    label(Request("ann"))
    assert held == ["in", "ann", "out"]


def test_the_pages_admin_endpoints_refuse_an_annotator(team):
    api = endpoints(team, D)
    assert refusal(lambda: api["data_guidelines"]("pwned", Request("ann"))) == \
        "ann is an annotator; only an admin can edit the guidelines."
    assert refusal(lambda: api["data_add_user"]("mallory", "secret-pw", "admin", "", Request("ann"))) == \
        "ann is an annotator; only an admin can manage accounts."
    assert team.db.get_setting("guidelines") is None
    assert "saved" in api["data_guidelines"]("Be kind.", Request("boss"))


def test_label_page_endpoints_are_served_labeling_first(team, monkeypatch):
    Q.create_task(team.db, "single", "How do I fix the pump?", ["Check the seal."])
    paused = []

    @contextlib.contextmanager
    def hold():
        paused.append(True)
        yield

    monkeypatch.setattr(team, "labeling", hold)
    api = endpoints(team, L)
    shown = api["label_next"]("Good / bad", "(all sites)", Request("ann"))
    saved = api["label_a"](shown[0], "Good / bad", "(all sites)", "", Request("ann"))
    assert saved[1] == "Saved: good." and paused == [True, True]


def test_every_handler_of_every_page_is_wrapped(tmp_path):
    from app.ui import build_app

    c = AppContext(home=tmp_path / "home")
    demo = build_app(c)
    bare = [f.fn.__name__ for f in demo.fns.values()
            if f.fn is not None and "request" not in inspect.signature(f.fn).parameters]
    c.db.close()
    assert bare == []

"""The web guard in front of Gradio (app.web_guard), on a small stand-in app with Gradio's login contract: cross-origin
actions refused, logins throttled per name and per address, ended sessions forgotten, exports only for their
admin, no API description for anonymous visitors, security headers. The real app over HTTP: test_security_http."""
import logging

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from app.login_throttle import LoginThrottle
from app.web_guard import WebGuard

PASSWORDS = {"boss": "boss-pw", "alice": "alice-pw"}
PAGE = ('<html><script>window.gradio_config = {"auth_required":true};</script><script>window.gradio_api_info = '
        '{"named_endpoints":{"/train_start":{"parameter_default":"/srv/models/secret","enum":["alice","plant-b"]}}};'
        '</script><body>login</body></html>')


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make_app(throttle=None, session_ok=None, owners=None, login_required=True):
    changed = []

    async def login(request):
        form = await request.form()
        if PASSWORDS.get(form["username"]) == form["password"]:
            token = f"tok-{form['username']}-{len(request.app.tokens)}"
            request.app.tokens[token] = form["username"]
            r = JSONResponse({"success": True})
            r.set_cookie("access-token-unsecure-x", token, httponly=True)
            return r
        return JSONResponse({"detail": "Incorrect credentials."}, status_code=400)

    async def guidelines(request):
        changed.append(await request.body())
        return PlainTextResponse("saved")

    async def page(request):
        return HTMLResponse(PAGE)

    async def file(request):
        return PlainTextResponse("prompt,chosen,rejected")

    logins = []
    guard = Middleware(WebGuard, throttle=throttle or LoginThrottle(), session_ok=session_ok,
                       owners_of=(owners or {}).get, login_required=login_required,
                       on_login=lambda token, name, tokens: logins.append((token, name)))
    app = Starlette(routes=[Route("/login", login, methods=["POST"]), Route("/api/guidelines", guidelines,
                                                                            methods=["POST"]),
                            Route("/", page), Route("/gradio_api/file={path:path}", file)], middleware=[guard])
    app.tokens = {}
    return app, changed, logins


def test_an_action_from_another_origin_is_refused_and_the_own_origin_works(caplog):
    app, changed, _ = make_app()
    client = TestClient(app, base_url="http://127.0.0.1:7860")
    for headers in ({"Origin": "http://127.0.0.1:9999"}, {"Origin": "null"},
                    {"Referer": "http://127.0.0.1:9999/evil.html"}, {"Origin": "https://127.0.0.1:7860"}):
        with caplog.at_level(logging.WARNING, logger="preflab"):
            r = client.post("/api/guidelines", content=b"pwned", headers=headers)
        assert r.status_code == 403 and "another origin" in r.json()["detail"]
    assert changed == [] and "refused a cross-origin POST /api/guidelines" in caplog.text
    own = {"Origin": "http://127.0.0.1:7860"}
    assert client.post("/api/guidelines", content=b"kind", headers=own).status_code == 200
    assert client.post("/api/guidelines", content=b"api", headers={}).status_code == 200   # scripts: no Origin
    assert changed == [b"kind", b"api"]


def test_every_answer_forbids_framing_and_sniffing():
    app, _, _ = make_app()
    r = TestClient(app).get("/")
    assert r.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"


def test_failed_logins_lock_the_name_with_growing_delays_and_are_logged(caplog):
    clock = Clock()
    app, _, logins = make_app(throttle=LoginThrottle(clock=clock))
    client = TestClient(app)
    with caplog.at_level(logging.WARNING, logger="preflab"):
        codes = [client.post("/login", data={"username": "alice", "password": f"guess{i}"}).status_code
                 for i in range(50)]
        right = client.post("/login", data={"username": "alice", "password": "alice-pw"})
    assert codes[:5] == [400] * 5 and set(codes[5:]) == {429}      # 5 tries, then locked
    assert right.status_code == 429 and "try again in" in right.json()["detail"]
    assert "failed login for 'alice' from" in caplog.text and "refused: throttled" in caplog.text
    clock.now += 2.5                                               # the first lock is 2 s
    assert client.post("/login", data={"username": "alice", "password": "guess"}).status_code == 400
    clock.now += 2.5                                               # the next one is longer
    assert client.post("/login", data={"username": "alice", "password": "alice-pw"}).status_code == 429
    clock.now += 2.0
    assert client.post("/login", data={"username": "alice", "password": "alice-pw"}).status_code == 200
    assert [name for _, name in logins] == ["alice"]
    # the lock was on alice's name: boss logs in meanwhile from the same address
    assert client.post("/login", data={"username": "boss", "password": "boss-pw"}).status_code == 200


def test_one_address_guessing_many_names_is_locked_too():
    app, _, _ = make_app(throttle=LoginThrottle(clock=Clock()))
    client = TestClient(app)
    codes = [client.post("/login", data={"username": f"user{i}", "password": "x"}).status_code for i in range(25)]
    assert codes[:20] == [400] * 20 and set(codes[20:]) == {429}
    assert client.post("/login", data={"username": "boss", "password": "boss-pw"}).status_code == 429


def test_an_ended_session_is_forgotten_before_the_request_is_served():
    ended = {"alice"}
    app, _, _ = make_app(session_ok=lambda token, name: name not in ended)
    client = TestClient(app)
    assert client.post("/login", data={"username": "alice", "password": "alice-pw"}).status_code == 200
    client.get("/")
    assert app.tokens == {}                                        # Gradio no longer knows the token


def test_an_export_is_served_only_to_the_admin_who_made_it():
    app, _, _ = make_app(owners={"preflab-preference-1a2b.jsonl": {"boss"}})
    boss, alice, nobody = TestClient(app), TestClient(app), TestClient(app)
    boss.post("/login", data={"username": "boss", "password": "boss-pw"})
    alice.post("/login", data={"username": "alice", "password": "alice-pw"})
    url = "/gradio_api/file=/tmp/gradio/abc/preflab-preference-1a2b.jsonl"
    assert boss.get(url).status_code == 200
    assert alice.get(url).status_code == 403 and nobody.get(url).status_code == 403
    assert alice.get("/gradio_api/file=/tmp/gradio/abc/upload.csv").status_code == 200   # not an export


def test_the_page_an_anonymous_visitor_gets_has_no_names_or_paths():
    app, _, _ = make_app()
    client = TestClient(app)
    anonymous = client.get("/").text
    assert "window.gradio_api_info = {};" in anonymous and "gradio_config" in anonymous
    assert not any(s in anonymous for s in ("/srv/models", "alice", "plant-b", "train_start"))
    client.post("/login", data={"username": "boss", "password": "boss-pw"})
    assert "/srv/models/secret" in client.get("/").text           # a logged-in page is left as it is


@pytest.mark.parametrize("origin,host,same", [("http://127.0.0.1:7860", "127.0.0.1:7860", True),
                                              ("http://example.org", "example.org:80", True),
                                              ("http://localhost:7860", "127.0.0.1:7860", False),
                                              ("http://[::1]:7860", "[::1]:7860", True),
                                              ("http://127.0.0.1:7860.evil.org", "127.0.0.1:7860", False)])
def test_origins_are_compared_by_scheme_host_and_port(origin, host, same):
    scope = {"scheme": "http"}
    assert WebGuard._same_origin(scope, {"origin": origin, "host": host}) is same

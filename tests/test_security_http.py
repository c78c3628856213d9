"""The review's findings against the real app over HTTP (`python -m app serve --auth`), as an attacker meets them:
another origin acting through the admin's cookie, guessing passwords, reading the page source without logging in,
an annotator fetching an admin's export, a session outliving a password change."""
import json

import httpx
import pytest

from app.context import AppContext
from labeling import queue as Q
from labeling.accounts import set_user
from tests.browser import running_app

pytestmark = pytest.mark.slow
MODEL = "/srv/preflab-models/secret-model"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    home = tmp_path_factory.mktemp("security-home")
    ctx = AppContext(home=home)
    set_user(ctx.db, "boss", "boss-pw", role="admin")
    set_user(ctx.db, "alice", "alice-pw", site="plant-a")
    set_user(ctx.db, "bea", "bea-pw", site="plant-secret")
    t = Q.create_task(ctx.db, "pair", "Which is better?", ["A", "B"], site="plant-secret")
    Q.save_annotation(ctx.db, t, "bea", "a", shown_order="ab")
    ctx.db.set_setting("guidelines", "original")
    ctx.db.set_setting("max_import_mb", "20")
    ctx.db.close()
    with running_app(home, auth=True, env={"PREFLAB_MODEL": MODEL}) as (url, _):
        yield url.rstrip("/"), home


def login(url, name, password) -> httpx.Client:
    c = httpx.Client(base_url=url, timeout=120, limits=httpx.Limits(max_connections=300))
    r = c.post("/login", data={"username": name, "password": password})
    assert r.status_code == 200, r.text
    return c


def call(client, api, data, origin=None) -> httpx.Response | str:
    """A Gradio API call (POST, then its result); the POST's response when it is refused."""
    headers = {"Origin": origin} if origin else {}
    r = client.post(f"/gradio_api/call/{api}", json={"data": data}, headers=headers)
    if r.status_code != 200:
        return r
    return client.get(f"/gradio_api/call/{api}/{r.json()['event_id']}").text


def test_another_origin_cannot_act_through_the_admins_cookie(app):
    url, _ = app
    boss = login(url, "boss", "boss-pw")
    refused = call(boss, "data_guidelines", ["pwned by 127.0.0.1:9999"], origin="http://127.0.0.1:9999")
    assert refused.status_code == 403 and "another origin" in refused.json()["detail"]
    # the same call from the app's own page goes through, so it is the origin that was refused
    assert "Guidelines saved" in call(boss, "data_guidelines", ["from the app itself"], origin=url)
    assert "Guidelines saved" in call(boss, "data_guidelines", ["original"])       # scripts send no Origin


def test_every_page_forbids_framing_and_sniffing(app):
    url, _ = app
    r = httpx.get(url + "/")
    assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"


def test_the_page_source_tells_an_anonymous_visitor_no_names_or_paths(app):
    url, _ = app
    anonymous = httpx.get(url + "/").text
    for secret in (MODEL, "plant-secret", "bea", "alice", "data_add_user", "train_start"):
        assert secret not in anonymous, secret
    assert httpx.get(url + "/gradio_api/info").status_code in (401, 403)
    admin_page = login(url, "boss", "boss-pw").get("/").text
    assert MODEL in admin_page and "plant-secret" in admin_page        # the test can see them where they belong


def test_password_guessing_is_throttled(app):
    url, _ = app
    c = httpx.Client(base_url=url, timeout=60)
    codes = [c.post("/login", data={"username": "alice", "password": f"guess-{i}"}).status_code for i in range(10)]
    right = c.post("/login", data={"username": "alice", "password": "alice-pw"})
    assert codes[:5] == [400] * 5 and 429 in codes[5:]
    assert right.status_code == 429 and "Too many failed logins" in right.json()["detail"]
    assert c.post("/login", data={"username": "boss", "password": "boss-pw"}).status_code == 200  # not boss's name


def test_an_export_link_works_only_for_the_admin_who_made_it(app):
    url, _ = app
    boss, bea = login(url, "boss", "boss-pw"), login(url, "bea", "bea-pw")
    result = call(boss, "data_export", ["preference", "jsonl", "drop"])
    data = json.loads(result.split("data: ", 1)[1].splitlines()[0])
    link = data[0]["url"]
    assert boss.get(link).status_code == 200
    assert bea.get(link).status_code == 403
    assert httpx.get(link).status_code in (401, 403)


def test_a_password_change_ends_the_annotators_open_session(app):
    url, _ = app
    bea, boss = login(url, "bea", "bea-pw"), login(url, "boss", "boss-pw")
    assert "event: complete" in call(bea, "label_next", ["Pairs", "(all sites)"])
    assert "updated" in call(boss, "data_add_user", ["bea", "new-bea-pw", "annotator", "plant-secret"])
    after = bea.post("/gradio_api/call/label_next", json={"data": ["Pairs", "(all sites)"]})
    assert after.status_code == 401 or "event: error" in bea.get(
        f"/gradio_api/call/label_next/{after.json()['event_id']}").text
    assert "event: complete" in call(login(url, "bea", "new-bea-pw"), "label_next", ["Pairs", "(all sites)"])


def test_one_annotators_burst_does_not_stall_another(app):
    """200 calls fired at once by alice; boss's one call, sent while most of hers still wait, is served next
    instead of after all of hers (the review measured 13.8 s)."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    url, _ = app
    alice, boss = login(url, "alice", "alice-pw"), login(url, "boss", "boss-pw")
    done, lock = [], threading.Lock()

    def label_next(client, who):
        r = client.post("/gradio_api/call/label_next", json={"data": ["Good / bad", "(all sites)"]})
        text = client.get(f"/gradio_api/call/label_next/{r.json()['event_id']}").text
        with lock:
            done.append((time.monotonic(), who, "event: complete" in text))

    with ThreadPoolExecutor(202) as pool:
        for _ in range(200):
            pool.submit(label_next, alice, "alice")
        waiting = 0
        while waiting < 100 and len(done) < 100:      # until most of her calls wait in the queue
            waiting = boss.get("/gradio_api/queue/status").json()["queue_size"]
        pool.submit(label_next, boss, "boss")
    assert waiting >= 100, "the burst never queued up: this machine served it as fast as it came"
    assert len(done) == 201 and all(ok for _, _, ok in done)
    order = [who for _, who, _ in sorted(done)]
    assert order.index("boss") < 50, f"boss's call finished after {order.index('boss')} of alice's 200"


def test_an_upload_that_expands_past_the_limit_is_refused_and_the_app_keeps_serving(app):
    from gradio_client import Client, handle_file

    from tests.test_import_limits import gzip_bomb

    url, home = app
    bomb = gzip_bomb(home / "bomb.jsonl.gz", 100_000)                 # 66 KB, 32 MB once decompressed
    boss = Client(url, auth=("boss", "boss-pw"), verbose=False)
    head, report = boss.predict(handle_file(str(bomb)), "", None, True, "", api_name="/data_import")
    assert "Nothing was imported from bomb.jsonl.gz" in head
    assert "too big to import" in json.dumps(report) and "/tmp" not in json.dumps(report)
    assert "event: complete" in call(login(url, "alice", "alice-pw"), "label_next", ["Good / bad", "(all sites)"])


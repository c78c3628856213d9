"""Cross-origin actions as the review made them, in Debian's chromium: the admin is logged in, then opens a page
served from another port of the same host whose script calls the app with the admin's cookie. The call is
refused; the same call from the app's own page goes through."""
import http.server
import threading

import pytest

from app.context import AppContext
from labeling.accounts import set_user
from storage.db import open_db
from tests.browser import browser_page, free_port, login, need_chromium, running_app

pytestmark = pytest.mark.browser

ATTACK = """<html><body><script>
fetch("%s/gradio_api/call/data_guidelines", {method: "POST", credentials: "include",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify({data: ["pwned from another port"]})})
  .then(r => { window.__status = r.status; document.title = "sent"; })
  .catch(e => { window.__status = "blocked: " + e; document.title = "sent"; });
</script></body></html>"""


def serve_page(html: str) -> tuple[str, http.server.HTTPServer]:
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    port = free_port()
    server = http.server.HTTPServer(("127.0.0.1", port), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{port}/", server


def test_a_page_on_another_port_cannot_change_the_guidelines_through_the_admins_cookie(tmp_path):
    need_chromium()
    ctx = AppContext(home=tmp_path)
    set_user(ctx.db, "boss", "boss-pw", role="admin")
    ctx.db.set_setting("guidelines", "original")
    ctx.db.close()
    with running_app(tmp_path, auth=True) as (url, _), browser_page() as page:
        app = url.rstrip("/")
        evil, server = serve_page(ATTACK % app)
        try:
            login(page, url, "boss", "boss-pw")
            page.goto(evil)
            page.wait_for_function("() => document.title === 'sent'")
            status = page.evaluate("() => window.__status")
            assert status == 403, status      # the browser sent it (Gradio lets localhost origins through): refused
            # the same call from the app's own page is accepted: it is the origin that was refused
            page.goto(url)
            page.wait_for_selector("#label-start")
            own = page.evaluate("""async (app) => {
                const r = await fetch(app + "/gradio_api/call/data_guidelines", {method: "POST", credentials: "include",
                    headers: {"Content-Type": "application/json"}, body: JSON.stringify({data: ["from the app"]})});
                const {event_id} = await r.json();
                return await (await fetch(app + "/gradio_api/call/data_guidelines/" + event_id)).text(); }""", app)
            assert "Guidelines saved" in own
        finally:
            server.shutdown()
    db = open_db(tmp_path / "preflab.duckdb")
    assert db.get_setting("guidelines") == "from the app"
    db.close()

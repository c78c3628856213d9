"""What the web server refuses before Gradio sees a request, and the headers every answer carries.

- Cross-origin actions: a state-changing request (POST, PUT, PATCH, DELETE) whose Origin, or without one whose
  Referer, is not the origin it was sent to is refused (403). A page on another port of the same host cannot act
  through a logged-in admin's cookie (the cookie is per host, not per port; Gradio's own CORS check lets localhost
  origins through).
- Login throttling: a name or a client address with failed logins waits (see LoginThrottle); every failure and
  every refusal is logged with the name and address.
- Anonymous pages: the page a visitor who is not logged in gets carries no API description (names, paths).
- Exports: a file an export made is served only to the admin(s) who made it (`owners_of`, app.context).
- Headers: no framing by other sites (X-Frame-Options, CSP frame-ancestors), no content sniffing, no referrer to
  other sites.
It is plain ASGI middleware, handed to Gradio's FastAPI app through `app_kwargs` (app.server).
"""
from __future__ import annotations

import json
import logging
import re
from urllib.parse import parse_qs, urlsplit

from app.login_throttle import LoginThrottle

log = logging.getLogger("preflab")

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
HEADERS = [(b"x-frame-options", b"DENY"), (b"content-security-policy", b"frame-ancestors 'none'"),
           (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin")]
MAX_LOGIN_BODY = 64 * 1024


def _origin(url: str) -> str | None:
    """'http://host:port' of a URL, default ports dropped; None when it has no host ('null', garbage)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    default = {"http": 80, "https": 443}.get(parts.scheme)
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


class WebGuard:
    def __init__(self, app, throttle: LoginThrottle | None = None, on_login=None, owners_of=None, session_ok=None,
                 login_required: bool = False):
        """on_login(token, name, tokens): after each successful login, with Gradio's token -> name dict.
        owners_of(file name): who may download a file of that name (None: not an export, anyone logged in).
        session_ok(token, name): False ends that login (Gradio forgets the token) before the request is served.
        login_required: pages served to a visitor who is not logged in lose Gradio's API description."""
        self.app = app
        self.throttle = throttle or LoginThrottle()
        self.on_login = on_login
        self.owners_of = owners_of
        self.session_ok = session_ok
        self.login_required = login_required

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        if self.session_ok:
            token, name = _session(scope, headers)
            if name is not None and not self.session_ok(token, name):
                scope["app"].tokens.pop(token, None)       # Gradio now treats the request as logged out
                log.info("ended the session of %r (password changed or account disabled)", name)
        if scope["method"] in UNSAFE and not self._same_origin(scope, headers):
            log.warning("refused a cross-origin %s %s from %s (Origin %r, Referer %r)", scope["method"],
                        scope["path"], _client(scope), headers.get("origin"), headers.get("referer"))
            return await _answer(send_with_headers, 403, "Refused: this request came from another site or page "
                                 "(another origin). Use Preflab from its own address.")
        if self.owners_of and scope["method"] in ("GET", "HEAD") and "/file=" in scope["path"]:
            owners = self.owners_of(scope["path"].rsplit("/", 1)[-1])
            if owners is not None and _who(scope, headers) not in owners:
                log.warning("refused the export %s to %s (%s)", scope["path"].rsplit("/", 1)[-1],
                            _who(scope, headers) or "no login", _client(scope))
                return await _answer(send_with_headers, 403, "This export belongs to the admin who made it.")
        if scope["method"] == "POST" and scope["path"].rstrip("/").endswith("/login"):
            return await self._login(scope, receive, send_with_headers)
        if self.login_required and scope["method"] == "GET" and _who(scope, headers) is None:
            return await self.app(scope, receive, _scrubbed(send_with_headers))
        return await self.app(scope, receive, send_with_headers)

    @staticmethod
    def _same_origin(scope, headers: dict) -> bool:
        """Origin (else Referer) matches the address the request was sent to; neither header: not a browser's
        cross-site request (browsers send Origin on every cross-origin POST), so allowed."""
        claimed = headers.get("origin") or headers.get("referer")
        if claimed is None:
            return True
        own = _origin(f"{scope.get('scheme', 'http')}://{headers.get('host', '')}")
        return own is not None and _origin(claimed) == own

    async def _login(self, scope, receive, send):
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_LOGIN_BODY:
                return await _answer(send, 413, "A login form is not that long.")
        form = parse_qs(body.decode("utf-8", "replace"))
        name = (form.get("username") or [""])[0].strip()
        addr = _client(scope)
        keys = [f"name:{name}", f"addr:{addr}"]
        wait = self.throttle.wait_s(keys)
        if wait > 0:
            log.warning("login for %r from %s refused: throttled for %.0f s more", name, addr, wait)
            return await _answer(send, 429, f"Too many failed logins for this name or from this address: try "
                                 f"again in {int(wait) + 1} seconds.")
        status = {}

        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:                 # after the body: what the client does next (e.g. disconnect)
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["cookies"] = [v.decode("latin-1") for k, v in message.get("headers", [])
                                     if k.lower() == b"set-cookie"]
            await send(message)

        await self.app(scope, replay, watch)
        if status.get("code") == 200:
            self.throttle.succeeded(keys)
            log.info("login of %r from %s", name, addr)
            token = next((c.split(";")[0].split("=", 1)[1] for c in status["cookies"]
                          if c.startswith("access-token") and "=" in c), None)
            if self.on_login and token:
                self.on_login(token, name, getattr(scope.get("app"), "tokens", None))
        else:
            self.throttle.failed(keys)
            log.warning("failed login for %r from %s", name, addr)


API_INFO = re.compile(rb"window\.gradio_api_info = .*?;</script>", re.S)


def _scrubbed(send):
    """For a visitor who is not logged in: an HTML page without Gradio's API description, which lists every
    endpoint with its defaults and choices (the model's path, site and annotator names). The login page needs
    none of it."""
    start, chunks = None, []

    async def wrapped(message):
        nonlocal start
        if message["type"] == "http.response.start":
            kind = dict(message.get("headers", [])).get(b"content-type", b"")
            if not kind.startswith(b"text/html"):
                return await send(message)
            start = message
            return None
        if start is None:
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return None
        body = API_INFO.sub(b"window.gradio_api_info = {};</script>", b"".join(chunks))
        start["headers"] = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
        start["headers"].append((b"content-length", str(len(body)).encode()))
        await send(start)
        await send({"type": "http.response.body", "body": body})
    return wrapped


def _session(scope, headers: dict) -> tuple[str | None, str | None]:
    """(token, logged-in name) of a request's access-token cookie in Gradio's tokens; (None, None) without one."""
    tokens = getattr(scope.get("app"), "tokens", None) or {}
    for part in headers.get("cookie", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key.startswith("access-token") and value in tokens:
            return value, tokens[value]
    return None, None


def _who(scope, headers: dict) -> str | None:
    return _session(scope, headers)[1]


def _client(scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


async def _answer(send, status: int, sentence: str) -> None:
    body = json.dumps({"detail": sentence, "error": sentence}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

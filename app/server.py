"""Start the app: open the database, start the job supervisor, serve the page on 127.0.0.1 by default."""
from __future__ import annotations

import logging
import os
import socket

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def port_free(host: str, port: int) -> None:
    """Say so in a sentence before anything starts, instead of Gradio's error after the supervisor is up."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # a restart's TIME_WAIT is not "in use"
        try:
            s.bind((host, port))
        except OSError:
            raise OSError(f"Port {port} on {host} is in use (another app?): stop it, or start Preflab on another "
                          f"port: ./run.sh serve --port {port + 1}") from None


def serve(host: str = "127.0.0.1", port: int = 7860, auth: bool = False) -> None:
    port_free(host, port)
    from app.context import AppContext
    from app.ui import CSS, build_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Bound to anything but loopback, login is required: single-user mode is only for one's own machine.
    ctx = AppContext(auth_required=auth or host not in LOCAL_HOSTS)
    from app.supervisor import Supervisor

    ctx.supervisor = Supervisor(ctx).start()   # re-attaches to jobs that kept running while the app was down
    demo = build_app(ctx)
    login = None
    if ctx.auth_required:
        import asyncio

        from labeling.accounts import check_password

        async def login(name: str, password: str) -> bool:
            """bcrypt takes a quarter of a second: off the event loop, so a login never holds up others' labels."""
            return await asyncio.to_thread(check_password, ctx.db, name, password)

    def on_login(token: str, name: str, tokens) -> None:
        """Remember the session epoch a login started under: a password change or disabling ends it."""
        from labeling.accounts import session_state

        ctx.login_tokens = tokens
        state = session_state(ctx.db, name)
        if state is not None:
            ctx.sessions[token] = state[1]

    demo.queue(default_concurrency_limit=8)
    from app.fair_queue import install

    install(demo._queue)           # one person's burst does not stall the others
    from pathlib import Path

    from starlette.middleware import Middleware

    from app.web_guard import WebGuard

    keys_js = (Path(__file__).parent / "keys.js").read_text()
    guard = Middleware(WebGuard, on_login=on_login, owners_of=ctx.downloads.get if ctx.auth_required else None,
                       session_ok=ctx.session_ok if ctx.auth_required else None, login_required=ctx.auth_required)
    # cross-origin actions refused, logins throttled, security headers: app.web_guard
    demo.launch(server_name=host, server_port=port, auth=login, share=False, show_error=False, css=CSS, js=keys_js,
                ssr_mode=False, inbrowser=False, app_kwargs={"middleware": [guard]})

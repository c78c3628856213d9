"""The one wrapping every Gradio handler gets: who is asking, labeling first, and errors as sentences.

A page's handler is written as `fn(user, *inputs)` (or `fn(*inputs)` with `user=False`) and decorated with
`@handler(ctx)`. The wrapper takes the inputs plus the gr.Request, resolves the user (`ctx.user`: in multi-user
mode an unknown or logged-out caller is refused), optionally serves the call with the app's training job paused
(`labeling=True`, see app.priority), and turns a UserError into a one-sentence gr.Error and anything unexpected
into a logged, plain sentence: never a stack trace. Generator handlers (streaming) get the same, per yield.

Roles are checked by the action itself (`admin_only` in app.context), not by hiding buttons: every handler is
also an HTTP API endpoint, and the action refuses an annotator whichever way it is reached.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import typing
from typing import Callable

import gradio as gr

from app.context import AppContext, UserError

log = logging.getLogger("preflab")


def as_sentence(e: Exception, where: str) -> gr.Error:
    """The error a person sees: the UserError's own sentence, or a plain one (the trace goes to the server log)."""
    if isinstance(e, gr.Error):
        return e
    if isinstance(e, UserError):
        return gr.Error(str(e))
    log.error("handler %s failed", where, exc_info=e)
    return gr.Error(f"Something went wrong ({type(e).__name__}: {e}). The details are in the server log.")


def _type_hints(fn: Callable) -> dict:
    """The handler's annotations as types (Gradio spots gr.SelectData and gr.Request by type)."""
    try:
        return typing.get_type_hints(fn)
    except (NameError, TypeError):
        return dict(fn.__annotations__)


def handler(ctx: AppContext, *, user: bool = True, labeling: bool = False) -> Callable[[Callable], Callable]:
    """Decorate a page's Gradio handler (see the module docstring). Gradio reads the wrapper's signature: the
    handler's own parameters after `user`, then `request: gr.Request`, which Gradio fills in."""
    def wrap(fn: Callable) -> Callable:
        params = list(inspect.signature(fn).parameters.values())[1 if user else 0:]
        hints = {k: v for k, v in _type_hints(fn).items() if k in {p.name for p in params}}
        request_param = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                          annotation=gr.Request)
        signature = inspect.Signature([*params, request_param])

        def call(args, kwargs):
            bound = signature.bind(*args, **kwargs)
            request = bound.arguments.pop("request")
            who = (ctx.user(request),) if user else ()
            paused = ctx.labeling() if labeling else contextlib.nullcontext()
            return paused, functools.partial(fn, *who, *bound.args, **bound.kwargs)

        if inspect.isgeneratorfunction(fn):
            def wrapper(*args, **kwargs):
                try:
                    paused, run = call(args, kwargs)
                    with paused:
                        yield from run()
                except Exception as e:  # noqa: BLE001 - last line of defence before the browser
                    raise as_sentence(e, fn.__name__) from None
        else:
            def wrapper(*args, **kwargs):
                try:
                    paused, run = call(args, kwargs)
                    with paused:
                        return run()
                except Exception as e:  # noqa: BLE001 - last line of defence before the browser
                    raise as_sentence(e, fn.__name__) from None

        wrapper.__name__ = wrapper.__qualname__ = fn.__name__
        wrapper.__doc__ = fn.__doc__
        wrapper.__module__ = fn.__module__
        wrapper.__signature__ = signature
        wrapper.__annotations__ = {**hints, "request": gr.Request}
        return wrapper
    return wrap

"""The page: one tab per module under app/pages, each exposing `build(ctx)` that lays out its components and
wires handlers (plain functions that are tested without a browser)."""
from __future__ import annotations

import importlib

import gradio as gr

from app.context import AppContext

# (tab title, module). Order is the product loop: collect/label, train, watch, compare, try.
PAGES = [
    ("Label", "app.pages.label"),
    ("Data", "app.pages.data"),
    ("Train", "app.pages.train"),
    ("Runs", "app.pages.runs"),
    ("Compare", "app.pages.compare"),
    ("Evaluate", "app.pages.evaluate"),
    ("Try", "app.pages.try_model"),
]

CSS = """
.preflab-card { border: 1px solid #d1d5db; border-radius: 8px; padding: 4px 14px; background: #f9fafb;
                min-height: 2.5em; max-height: 420px; overflow-y: auto; }
.preflab-head { margin-bottom: -10px; }
"""


def build_app(ctx: AppContext) -> gr.Blocks:
    with gr.Blocks(title="Preflab") as demo:
        on_load = []
        for title, module in PAGES:
            page = importlib.import_module(module)
            with gr.Tab(title, id=title.lower()):
                hook = page.build(ctx)   # a page may return a function to run on every page load
            if callable(hook):
                on_load.append(hook)
        for hook in on_load:
            hook(demo)
    return demo

"""Placeholder until this page is built."""
import gradio as gr


def build(ctx):
    gr.Markdown("This page is being built.")

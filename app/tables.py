"""Tables as the pages show them: Gradio draws an empty table as bare headers ("1 2 3"), which says nothing, so an
empty one is shown as one cell holding a sentence that says why it is empty and what to do."""
from __future__ import annotations

import pandas as pd


def shown(df: pd.DataFrame | None, sentence: str) -> pd.DataFrame:
    """`df` itself when it has rows; else a one-cell table with `sentence`."""
    if df is not None and len(df):
        return df
    return pd.DataFrame({" ": [sentence]})

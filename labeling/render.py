"""Show imported text safely: markdown renders (lists, emphasis, code blocks) but any HTML is shown as text."""
from __future__ import annotations

import html
import re

_CODE = re.compile(r"(```.*?```|`[^`\n]+`)", re.S)


def safe_markdown(text: str | None) -> str:
    """Escape HTML outside code (inside code, markdown already shows characters literally)."""
    if not text:
        return ""
    parts = _CODE.split(text)
    return "".join(p if i % 2 else html.escape(p, quote=False) for i, p in enumerate(parts))

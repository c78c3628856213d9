"""Show imported and generated text safely: markdown still renders (lists, emphasis, tables, code blocks with
highlighting) but no HTML in the text can become an element, and no link can run script.

Why not simply leave code alone: whether a stretch of text is code is decided by the markdown parser (fences
inside lists and quotes, backslash-escaped backticks, ...), and if we guessed "code" where the parser sees text,
raw HTML would reach the page. So nothing is left raw; every error of our guess is only cosmetic:
- outside what looks like code, `&` and `<` become entities, so the page shows them as typed;
- inside what looks like code (fenced blocks, `spans`), where markdown shows characters literally, a `<` that
  could open a tag (`<a`, `</`, `<!`, `<?`) gets an invisible zero-width space after it: it looks the same, and is
  text whatever the parser decides;
- link targets with a script scheme (javascript:, vbscript:, data:) get the same invisible break, which turns them
  into harmless relative links, inside what looks like code too;
- characters that reorder text (right-to-left overrides and isolates) are shown as [U+202E], not obeyed.
"""
from __future__ import annotations

import re

ZWSP = "\u200b"
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
_TAGLIKE = re.compile(r"<(?=[A-Za-z/!?])")
_SCHEME = re.compile(r"\b(java|vb)script(\s*):|\bdata(\s*):", re.I)
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")


def _text(s: str) -> str:
    s = s.replace("&", "&amp;").replace("<", "&lt;")
    return _SCHEME.sub(lambda m: m.group(0)[:-1] + ZWSP + ":", s)


def _code(s: str) -> str:
    """Code keeps its characters; a tag or a script link in it is broken as in text (in case the parser disagrees
    that it is code)."""
    return _SCHEME.sub(lambda m: m.group(0)[:-1] + ZWSP + ":", _TAGLIKE.sub("<" + ZWSP, s))


def _inline(s: str) -> str:
    """Text with `code spans`; spans do not cross blank lines."""
    out = []
    for para in re.split(r"(\n[ \t]*\n)", s):
        pos = 0
        for m in _SPAN.finditer(para):
            out.append(_text(para[pos:m.start()]))
            out.append(m.group(1) + _code(m.group(2)) + m.group(1))
            pos = m.end()
        out.append(_text(para[pos:]))
    return "".join(out)


def safe_markdown(text: str | None) -> str:
    """Markdown-ready text in which every HTML tag is shown as text and no link can run script."""
    if not text:
        return ""
    # right-to-left and other direction overrides are shown, not obeyed: "admin\u202egnp.exe" must not read as
    # "adminexe.png"
    text = _BIDI.sub(lambda m: f"[U+{ord(m.group()):04X}]", str(text))
    lines = text.splitlines(keepends=True)
    out, buf, fence = [], [], None
    for line in lines:
        m = _FENCE.match(line)
        if fence is None:
            if m:
                out.append(_inline("".join(buf)))
                buf = []
                fence = m.group(1)
                out.append(line[:m.end()] + _text(line[m.end():]))   # the info string ("python") is text
            else:
                buf.append(line)
        else:
            closing = m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) \
                and not line[m.end():].strip()
            out.append(line if closing else _code(line))
            if closing:
                fence = None
    out.append(_inline("".join(buf)))
    return "".join(out)


def markdown_html(text: str | None) -> str:
    """`text` rendered to HTML on the server as the Label page's Markdown shows it (emphasis, lists, tables, code),
    for places that show HTML (the Try page's answers). Raw HTML in the text stays text and script links are
    refused twice: by safe_markdown, and by markdown-it itself (html off, its link check)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(safe_markdown(text))

"""Imported text is shown, never executed: after safe_markdown, a CommonMark parser with raw HTML switched ON
(the most permissive renderer) produces only markdown's own elements, no event handlers, no script links; and
ordinary text, markdown and code still read as written."""
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labeling.render import ZWSP, safe_markdown

MarkdownIt = pytest.importorskip("markdown_it").MarkdownIt
MD = MarkdownIt("commonmark", {"html": True})
MARKDOWN_TAGS = {"p", "em", "strong", "code", "pre", "ul", "ol", "li", "blockquote", "a", "img", "hr", "br",
                 "h1", "h2", "h3", "h4", "h5", "h6"}
ATTACKS = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "<svg/onload=alert(1)>",
           "<a href='javascript:alert(1)'>x</a>", "[x](javascript:alert(1))", "[y](JavaScript :alert(1))",
           "![z](data:text/html,<script>alert(1)</script>)", "<details open ontoggle=alert(1)>", "<!-- c -->",
           "<?php ?>", "<![CDATA[x]]>", "</p><iframe src=x>", "<http://example.com>"]
PIECES = ATTACKS + ["`", "``", "```", "~~~", "```python", "\n", "\n\n", "- ", "> ", "    ", "  ", "\\", "*", "<",
                    "a<b", "&lt;", "&", "text", "[", "]", "(", ")", "1. "]


class Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs = set(), []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attrs += attrs


def elements(markdown: str) -> Elements:
    p = Elements()
    p.feed(MD.render(markdown))
    return p


def assert_inert(text: str) -> None:
    el = elements(safe_markdown(text))
    assert el.tags <= MARKDOWN_TAGS, (text, el.tags)
    for name, value in el.attrs:
        assert not name.startswith("on"), (text, name)
        if name in ("href", "src"):
            scheme = (value or "").split(":")[0].strip().lower() if ":" in (value or "") else ""
            assert scheme not in ("javascript", "vbscript", "data"), (text, value)


@pytest.mark.parametrize("attack", ATTACKS)
def test_known_attacks_are_inert_in_text_in_code_and_in_lists(attack):
    for wrap in ("{}", "x `{}` y", "\\`{}`", "```\n{}\n```", "- item\n  ```\n  code\n{}\n", "> ```\n> {}\n{}"):
        assert_inert(wrap.format(attack, attack))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=25))
def test_no_combination_of_pieces_makes_an_element(pieces):
    assert_inert("".join(pieces))


def test_text_markdown_and_code_read_as_written():
    html = MD.render(safe_markdown("Use **bold** & keep a < b.\n\n- one\n- two\n\n> quoted\n\n"
                                   "```python\nprint('<b>hi</b>' if a < b else 0)\n```\n\nInline `x<y` too."))
    assert "<strong>bold</strong> &amp; keep a &lt; b." in html
    assert "<li>one</li>" in html and "<blockquote>" in html
    assert '<code class="language-python">' in html
    # code shows the characters as typed (the only change: an invisible break after a tag-like "<")
    assert html.replace(ZWSP, "").count("&lt;b&gt;hi&lt;/b&gt;") == 1
    assert "<code>x&lt;" in html
    assert safe_markdown("") == "" and safe_markdown(None) == ""

"""What JupyterLab 4 keeps of HTML output in an untrusted notebook, for the tests.

JupyterLab passes untrusted HTML through its sanitizer (``Sanitizer`` in
``@jupyterlab/apputils``: sanitize-html with an allowlist of tags, attributes per tag,
and CSS properties whose values must match its patterns). This is a small model of
it, written for this project's markup and stricter than the real one where unsure:
the tags and attributes below are a subset of its lists; a tag not allowed is dropped
and its text kept (as sanitize-html does, except inside ``script``, ``style``,
``textarea``, ``option`` and ``noscript``); a CSS declaration is kept when its
property is in the subset below and its value has the shape the real patterns demand
(numbers between 0 and 1 with their leading zero, colours as hex, ``rgb()``,
``rgba()`` or names). ``data:`` URIs in ``src`` are kept (JupyterLab checks schemes
only on ``href`` and ``cite``).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

TAGS = {
    "a", "b", "br", "caption", "code", "col", "colgroup", "details", "div", "em", "h1",
    "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "li", "ol", "p", "pre", "small",
    "span", "strong", "sub", "summary", "sup", "table", "tbody", "td", "tfoot", "th",
    "thead", "tr", "ul",
}  # fmt: skip
ATTRIBUTES = {
    "*": {"class", "dir", "hidden", "id", "lang", "style", "title"},
    "img": {"align", "alt", "border", "height", "src", "width"},
    "td": {"align", "colspan", "nowrap", "rowspan", "scope", "valign", "width"},
    "th": {"align", "colspan", "nowrap", "rowspan", "scope", "valign", "width"},
    "table": {"align", "border", "cellpadding", "cellspacing", "summary", "width"},
    "details": {"open"},
}
#: Not allowed by JupyterLab, for all that browsers know them: gap, align-items,
#: flex-wrap, justify-content.
STYLES = {
    "background", "background-color", "border", "border-bottom", "border-collapse",
    "border-left", "border-radius", "border-right", "border-top", "color", "display",
    "font-family", "font-size", "font-weight", "height", "line-height", "margin",
    "margin-bottom", "margin-left", "margin-right", "margin-top", "max-width",
    "min-width", "opacity", "overflow", "padding", "padding-bottom", "padding-left",
    "padding-right", "padding-top", "text-align", "vertical-align", "white-space", "width",
}  # fmt: skip
NON_TEXT = {"script", "style", "textarea", "option", "noscript"}
_UNIT_NUMBER = r"(1(\.0+)?|0(\.[0-9]+)?)"  # their number_zero_one: the leading 0 required
_COLOUR = re.compile(
    r"#[0-9a-f]+|rgb\(\s*\d{1,3}\s*(,\s*\d{1,3}\s*){2}\)"
    rf"|rgba\(\s*\d{{1,3}}\s*(,\s*\d{{1,3}}\s*){{2}},\s*{_UNIT_NUMBER}\s*\)|[a-z]+",
    re.I,
)


def value_kept(prop: str, value: str) -> bool:
    if prop == "opacity":
        return re.fullmatch(_UNIT_NUMBER, value) is not None
    if prop in ("color", "background", "background-color"):
        return _COLOUR.fullmatch(value) is not None and value not in ("inherit", "initial")
    # a colour inside a compound value (border: 1px solid rgba(...)) must be valid too
    for colour in re.findall(r"rgba?\([^)]*\)", value):
        if _COLOUR.fullmatch(colour) is None:
            return False
    return not re.search(r"(?<![0-9])\.[0-9]", value)  # their numbers never start with '.'


class Sanitized(HTMLParser):
    """Feed markup; ``text`` is what the page shows as text, ``dropped`` what the
    sanitizer took away (tags, attributes, style declarations), ``images`` the kept
    ``<img>`` attributes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.dropped: list[str] = []
        self.images: list[dict[str, str]] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in NON_TEXT:
            self._skip += 1
        if tag not in TAGS:
            self.dropped.append(f"<{tag}>")
            return
        allowed = ATTRIBUTES["*"] | ATTRIBUTES.get(tag, set())
        kept = {}
        for name, value in attrs:
            if name not in allowed:
                if not name.startswith("data-"):  # our data-* are for tests only
                    self.dropped.append(f"<{tag} {name}>")
                continue
            if name == "style":
                for declaration in filter(None, (d.strip() for d in (value or "").split(";"))):
                    prop, _, val = declaration.partition(":")
                    prop, val = prop.strip().lower(), val.strip()
                    if prop not in STYLES or not value_kept(prop, val):
                        self.dropped.append(f"<{tag} style={prop}:{val}>")
            kept[name] = value or ""
        if tag == "img":
            self.images.append(kept)

    def handle_endtag(self, tag: str) -> None:
        if tag in NON_TEXT:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)


def sanitize(markup: str) -> Sanitized:
    parsed = Sanitized()
    parsed.feed(markup)
    parsed.close()
    return parsed

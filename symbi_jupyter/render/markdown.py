"""The markdown rendering: bold status, a table of usage and limits, then notes."""

from __future__ import annotations

import html

from ..result import ExecutionResult
from . import summary
from .options import ResultDisplay, display_options
from .text import render_text
from .words import other_limits

_MD_SPECIAL = "\\`*_[]|~#"


def _md(text: str) -> str:
    """Escape text for markdown, HTML included (front ends render HTML in markdown)."""
    text = html.escape(text, quote=False)
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in text)


def render_markdown(
    result: ExecutionResult, display: ResultDisplay | None = None, *, compact: bool = False
) -> str:
    """Bold status, then a small table of usage and limits, then notes; with
    ``compact``, the text line alone."""
    shown = display_options(display)
    if compact:
        return _md(render_text(result, shown)) + "\n"
    lines = [
        f"**\\[symbi\\] {_md(summary.tier_label(result))}: {_md(summary.status_words(result))}**"
    ]
    usage = summary.usage(result, shown)
    columns = [
        (title, key)
        for title, key in (("used", "used"), ("limit", "limit"))
        if any(getattr(row, key) is not None for row in usage)
    ]
    if usage and columns:
        lines += [
            "",
            "| | " + " | ".join(title for title, _ in columns) + " |",
            "|:--|" + "--:|" * len(columns),
        ]
        for row in usage:
            cells = [getattr(row, key) or "" for _, key in columns]
            if row.method:  # set only with a used figure, the first column
                cells[0] += f" ({row.method})"
            cells = [_md(cell) for cell in cells]
            lines.append(f"| {_md(row.name)} | " + " | ".join(cells) + " |")
    notes = []
    if shown.show_limits:
        others = other_limits(result.limits)
        if others:
            notes.append("limits: " + " · ".join(others))
    notes += summary.cautions(result)
    for name, why in summary.not_enforced(result).items():
        notes.append(f"⚠ not enforced: {name}" + (f" ({why})" if why else ""))
    if notes:
        lines.append("")
        lines += [f"- {_md(note)}" for note in notes]
    return "\n".join(lines) + "\n"

"""Renderings of an :class:`~symbi_jupyter.result.ExecutionResult`: one text line, an
HTML badge, markdown and a MIME bundle.

Rendering is separate from execution. :class:`ResultDisplay` holds the display
options; its ``stable`` trait leaves out every figure that changes from run to run
(wall time, CPU time, peak memory, usage bars), so notebooks tested with nbval
compare equal between runs.

Split by what each module holds, so that none grows past the project's size limit:
``options`` (:class:`ResultDisplay`), ``words`` (units, limits and stop reasons in
words), ``summary`` (what a result says, shared by the renderers), ``text``,
``markdown``, ``html_badge`` and ``bundle`` (the renderings), ``live`` (the line shown
while a cell runs) and ``tables`` (the tier ladder and the compare table). Import
from ``symbi_jupyter.render`` itself; the modules are its layout, not its interface.
"""

from __future__ import annotations

from .bundle import MIME_TYPE, VOLATILE_FIELDS, render_mimebundle
from .html_badge import TIER_COLOURS, render_html, sparkline_img, sparkline_svg
from .live import LiveLine, LiveUpdates, follows_display_updates
from .markdown import render_markdown
from .options import ResultDisplay
from .summary import uneventful
from .tables import Comparison, TierLadder, compare
from .text import render_text
from .words import (
    KILL_REASON_WORDS,
    KillWords,
    format_bytes,
    format_duration,
    limit_phrases,
    say_limit,
)

__all__ = [
    "KILL_REASON_WORDS",
    "MIME_TYPE",
    "TIER_COLOURS",
    "VOLATILE_FIELDS",
    "Comparison",
    "KillWords",
    "LiveLine",
    "LiveUpdates",
    "ResultDisplay",
    "TierLadder",
    "compare",
    "follows_display_updates",
    "format_bytes",
    "format_duration",
    "limit_phrases",
    "render_html",
    "render_markdown",
    "render_mimebundle",
    "render_text",
    "say_limit",
    "sparkline_img",
    "sparkline_svg",
    "uneventful",
]

"""The MIME bundle: every rendering by MIME type, plus the raw figures as JSON."""

from __future__ import annotations

from typing import Any

from ..result import ExecutionResult
from .html_badge import render_html
from .markdown import render_markdown
from .options import ResultDisplay, display_options
from .text import render_text

MIME_TYPE = "application/vnd.symbi.result+json"

#: ExecutionResult fields that change from run to run, left out of stable renderings.
VOLATILE_FIELDS = (
    "execution_time_ms",
    "wall_seconds",
    "cpu_user_seconds",
    "cpu_system_seconds",
    "peak_memory_bytes",
    "workdir",
    "stdout_bytes",  # output that names its run directory varies in length
    "stderr_bytes",
    "startup_seconds",
    "memory_samples",
    "sandbox_reported",
)


def render_mimebundle(
    result: ExecutionResult, display: ResultDisplay | None = None, *, compact: bool = False
) -> dict[str, Any]:
    """Every rendering by MIME type, plus the raw figures as
    ``application/vnd.symbi.result+json``.

    The JSON holds figures, not the output itself: stdout and stderr are already in
    the notebook as streams, and a second copy of up to ``max_output_bytes`` each would
    bloat it. nbval compares every MIME type, so in stable mode the JSON leaves the
    volatile figures out too (``null``); the ``ExecutionResult`` itself keeps them all.
    ``compact``: the one-line HTML and markdown badges (the text is one line anyway).
    """
    shown = display_options(display)
    data = result.to_dict()
    del data["stdout"], data["stderr"]
    if shown.stable:
        data.update(dict.fromkeys(VOLATILE_FIELDS))
    return {
        "text/plain": render_text(result, shown),
        "text/html": render_html(result, shown, compact=compact),
        "text/markdown": render_markdown(result, shown, compact=compact),
        MIME_TYPE: data,
    }

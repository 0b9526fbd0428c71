"""The plain-text rendering: one line in the manner of ``%%timeit``."""

from __future__ import annotations

from ..result import ExecutionResult
from . import summary
from .options import ResultDisplay, display_options
from .words import MIB, format_bytes, format_duration


def render_text(result: ExecutionResult, display: ResultDisplay | None = None) -> str:
    """One line in the manner of ``%%timeit``, e.g.
    ``[symbi] None (native) · exit 0 · wall 31.2 ms · CPU 24.0 ms · peak 9.8 MiB``."""
    shown = display_options(display)
    parts = [f"[symbi] {summary.tier_label(result)}", *line_parts(result, shown)]
    missing = summary.not_enforced(result)
    if missing:
        parts.append("not enforced: " + ", ".join(missing))
    return " · ".join(parts)


def line_parts(result: ExecutionResult, shown: ResultDisplay) -> list[str]:
    """The text line after its tier: status, figures (not when stable) and cautions;
    the compact HTML badge says the same."""
    parts = [summary.status_short(result)]
    if not shown.stable:
        wall = summary.wall_seconds(result)
        if wall is not None:
            parts.append(f"wall {format_duration(wall)}")
        cpu, cpu_method = summary.cpu(result)
        if cpu is not None:
            parts.append(f"CPU {format_duration(cpu)}" + (f" ({cpu_method})" if cpu_method else ""))
        used, method = summary.peak(result)
        if used is not None:
            peak = f"peak {format_bytes(used)}"
            if shown.show_limits and result.limits.max_memory_mb is not None:
                peak += f" of {format_bytes(result.limits.max_memory_mb * MIB)}"
            if method:
                peak += f" ({method})"
            parts.append(peak)
    parts += summary.cautions(result, reached="reached")
    return parts

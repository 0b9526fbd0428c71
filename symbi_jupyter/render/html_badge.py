"""The HTML rendering: the result badge with its usage bars and memory sparkline, and
the tier colours and pill that the other HTML displays share.

Every badge must read the same in an untrusted notebook, where JupyterLab passes HTML
through its sanitizer (sanitize-html with an allowlist): no ``<svg>`` (the sparkline
is an ``<img>`` with a ``data:`` URI and alt text), only the CSS properties it keeps
(``display``, ``margin``, ``vertical-align``, ...; no ``gap`` or ``align-items``), and
numbers written with their leading zero (``0.75``, which its patterns require).
"""

from __future__ import annotations

import base64
import html

from ..result import ExecutionResult
from ..tiers import SecurityTier
from . import summary
from .options import ResultDisplay, display_options
from .text import line_parts
from .words import format_bytes, format_duration, other_limits

TIER_COLOURS = {
    SecurityTier.NONE: "#c62828",
    SecurityTier.TIER1: "#1565c0",
    SecurityTier.TIER2: "#6a1b9a",
    SecurityTier.TIER3: "#2e7d32",
}
_TIER_BADGE = {
    SecurityTier.NONE: "no isolation",
    SecurityTier.TIER1: "Docker",
    SecurityTier.TIER2: "gVisor",
    SecurityTier.TIER3: "microVM",
}
_BAR_COLOUR = "#607d8b"
_WARN_COLOUR = "#b26a00"
_STOP_COLOUR = "#c62828"


#: The badge's box; its border and the bars' track in a grey that reads on light and
#: dark themes alike.
_BOX = (
    "display:inline-block;font-family:system-ui,-apple-system,'Segoe UI',sans-serif;"
    "font-size:12px;line-height:1.5;border:1px solid rgba(127,127,127,0.35);"
    "border-radius:4px;margin:2px 0"
)
_TRACK = "rgba(127,127,127,0.25)"


def tier_pill_html(tier: SecurityTier | None, label: str, detail: str | None = None) -> str:
    """The coloured tier label at the head of a badge."""
    colour = TIER_COLOURS.get(tier, "#616161") if tier else "#616161"
    text = f"{tier.value} · {detail or _TIER_BADGE[tier]}" if tier else label
    return (
        f'<span style="background:{colour};color:#fff;border-radius:3px;padding:0 6px;'
        f'margin-right:8px;font-weight:600;white-space:nowrap">{html.escape(text)}</span>'
    )


def render_html(
    result: ExecutionResult, display: ResultDisplay | None = None, *, compact: bool = False
) -> str:
    """A self-contained badge: tier, status, usage-versus-limit bars and warnings; with
    ``compact``, all of it on one line, without bars (for an uneventful cell).

    Inline CSS only; no script and no external resource.
    """
    if compact:
        return _compact_html(result, display_options(display))
    shown = display_options(display)
    esc = html.escape
    tier = summary.tier_of(result)
    colour = TIER_COLOURS.get(tier, "#616161") if tier else "#616161"
    tier_value = tier.value if tier else str(result.tier)
    status_style = "font-weight:600" if result.success else f"color:{_STOP_COLOUR};font-weight:600"
    if result.interrupted in ("kept", "ended"):
        # The user's own stop, nothing lost by it.
        status_style = f"color:{_WARN_COLOUR};font-weight:600"

    out = [
        f'<div class="symbi-result" data-tier="{esc(tier_value)}" style="{_BOX};'
        f'border-left:4px solid {colour};padding:4px 8px;min-width:24em">',
        "<div>",
        tier_pill_html(tier, tier_value, result.sandbox_detail),
        f'<span style="{status_style}">{esc(summary.status_words(result))}</span>',
        _node_html(result),
        "</div>",
    ]
    for row in summary.usage(result, shown):
        out.append(_html_usage_row(row))
    if shown.show_limits:
        others = other_limits(result.limits)
        if others:
            out.append('<div style="opacity:0.75">limits: ' + esc(" · ".join(others)) + "</div>")
    for note in summary.cautions(result):
        out.append(f'<div style="color:{_WARN_COLOUR}">{esc(note)}</div>')
    for name, why in summary.not_enforced(result).items():
        text = f"not enforced: {name}" + (f" ({why})" if why else "")
        out.append(f'<div style="color:{_WARN_COLOUR}">⚠ {esc(text)}</div>')
    out.append("</div>")
    return "".join(out)


def _compact_html(result: ExecutionResult, shown: ResultDisplay) -> str:
    """One line: the tier pill, then the text line's figures and notes."""
    esc = html.escape
    tier = summary.tier_of(result)
    colour = TIER_COLOURS.get(tier, "#616161") if tier else "#616161"
    tier_value = tier.value if tier else str(result.tier)
    parts = line_parts(result, shown)
    missing = summary.not_enforced(result)
    warning = (
        f'<span style="color:{_WARN_COLOUR}"> · ⚠ not enforced: {esc(", ".join(missing))}</span>'
        if missing
        else ""
    )
    return (
        f'<div class="symbi-result symbi-compact" data-tier="{esc(tier_value)}" '
        f'style="{_BOX};border-left:4px solid {colour};padding:0 8px;white-space:nowrap">'
        f"{tier_pill_html(tier, tier_value, result.sandbox_detail)}"
        f'<span style="opacity:0.85">{esc(" · ".join(parts))}</span>{_node_html(result)}'
        f"{warning}</div>"
    )


def _node_html(result: ExecutionResult) -> str:
    """' · on node ADDRESS/ID' after the status, for a run on a cluster node."""
    where = summary.node_words(result)
    if where is None:
        return ""
    return f'<span style="opacity:0.75"> · {html.escape(where)}</span>'


def _html_usage_row(row: summary.Usage) -> str:
    esc = html.escape
    if row.used is not None and row.limit is not None:
        figures = f"{row.used} of {row.limit}"
    elif row.used is not None:
        figures = row.used
    else:
        figures = f"limit {row.limit}"
    if row.method:
        figures += f" ({row.method})"
    parts = [
        f'<div class="symbi-usage" data-usage="{esc(row.name)}">',
        f'<span style="display:inline-block;width:6em;opacity:0.75">{esc(row.name)}</span>',
    ]
    if row.fraction is not None:
        percent = min(100.0, max(0.0, row.fraction * 100))
        fill = _BAR_COLOUR
        if row.stopped or row.fraction >= 1:
            fill = _STOP_COLOUR
        elif row.fraction >= 0.8:
            fill = _WARN_COLOUR
        parts.append(
            '<span class="symbi-bar" style="display:inline-block;vertical-align:middle;'
            f"width:10em;height:8px;margin-right:8px;background:{_TRACK};border-radius:4px;"
            f'overflow:hidden"><span class="symbi-bar-fill" style="display:inline-block;'
            f'vertical-align:top;width:{percent:.1f}%;height:8px;background:{fill}"></span></span>'
        )
    parts.append(f"<span>{esc(figures)}</span>")
    if row.samples:
        parts.append(sparkline_img(row.samples))
    parts.append("</div>")
    return "".join(parts)


def sparkline_img(points: list[list[float]], width: int = 96, height: int = 18) -> str:
    """The sparkline as an ``<img>`` of its SVG in a ``data:`` URI, which JupyterLab's
    sanitizer keeps in an untrusted notebook (an inline ``<svg>`` it removes, leaving
    its ``<title>`` as stray text); its alt text says what it shows."""
    svg = sparkline_svg(points, width, height)
    encoded = base64.b64encode(svg.encode()).decode("ascii")
    alt = html.escape(_sparkline_words(points))
    return (
        f'<img class="symbi-sparkline" src="data:image/svg+xml;base64,{encoded}" '
        f'width="{width}" height="{height}" alt="{alt}" title="{alt}" '
        'style="vertical-align:middle;margin-left:8px">'
    )


def _sparkline_words(points: list[list[float]]) -> str:
    t_end = max(p[0] for p in points) or 1.0
    top = max(p[1] for p in points) or 1
    return (
        f"memory over {format_duration(t_end)}: {len(points)} samples, highest {format_bytes(top)}"
    )


def sparkline_svg(points: list[list[float]], width: int = 96, height: int = 18) -> str:
    """Memory over time as an SVG document (no script): a polyline over a baseline at
    zero, the area under it lightly filled, scaled to the run's own highest figure (the
    figures beside it give the scale). A flat series is a level band over the baseline,
    not a stray line along the top edge."""
    t_end = max(p[0] for p in points) or 1.0
    top = max(p[1] for p in points) or 1
    base = height - 1
    coords = " ".join(
        f"{1 + (width - 2) * p[0] / t_end:.1f},{base - (height - 3) * p[1] / top:.1f}"
        for p in points
    )
    first, last = 1 + (width - 2) * points[0][0] / t_end, 1 + (width - 2) * points[-1][0] / t_end
    title = html.escape(_sparkline_words(points))
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><title>{title}</title>'
        f'<line class="baseline" x1="1" y1="{base}" x2="{width - 1}" y2="{base}" '
        f'stroke="{_BAR_COLOUR}" stroke-opacity="0.5" stroke-width="1"/>'
        f'<polygon points="{first:.1f},{base} {coords} {last:.1f},{base}" '
        f'fill="{_BAR_COLOUR}" fill-opacity="0.2" stroke="none"/>'
        f'<polyline points="{coords}" fill="none" stroke="{_BAR_COLOUR}" '
        'stroke-width="1.5" stroke-linejoin="round"/></svg>'
    )

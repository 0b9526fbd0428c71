"""The HTML rendering: the result badge with its usage bars and memory sparkline, and
the tier colours and pill that the other HTML displays share."""

from __future__ import annotations

import html

from ..result import ExecutionResult
from ..tiers import SecurityTier
from . import summary
from .options import ResultDisplay, display_options
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


def tier_pill_html(tier: SecurityTier | None, label: str, detail: str | None = None) -> str:
    """The coloured tier label at the head of a badge."""
    colour = TIER_COLOURS.get(tier, "#616161") if tier else "#616161"
    text = f"{tier.value} · {detail or _TIER_BADGE[tier]}" if tier else label
    return (
        f'<span style="background:{colour};color:#fff;border-radius:3px;padding:0 6px;'
        f'font-weight:600">{html.escape(text)}</span>'
    )


def render_html(result: ExecutionResult, display: ResultDisplay | None = None) -> str:
    """A self-contained badge: tier, status, usage-versus-limit bars and warnings.

    Inline CSS only; no script and no external resource.
    """
    shown = display_options(display)
    esc = html.escape
    tier = summary.tier_of(result)
    colour = TIER_COLOURS.get(tier, "#616161") if tier else "#616161"
    tier_value = tier.value if tier else str(result.tier)
    status_colour = "inherit" if result.success else _STOP_COLOUR

    out = [
        f'<div class="symbi-result" data-tier="{esc(tier_value)}" style="display:inline-block;'
        f"font-family:system-ui,-apple-system,'Segoe UI',sans-serif;font-size:12px;"
        f"line-height:1.5;border:1px solid rgba(127,127,127,.35);border-left:4px solid {colour};"
        f'border-radius:4px;padding:4px 8px;margin:2px 0;min-width:24em">',
        '<div style="display:flex;align-items:center;gap:8px;flex-wrap:wrap">',
        tier_pill_html(tier, tier_value, result.sandbox_detail),
        f'<span style="color:{status_colour};font-weight:600">'
        f"{esc(summary.status_words(result))}</span>",
        "</div>",
    ]
    for row in summary.usage(result, shown):
        out.append(_html_usage_row(row))
    if shown.show_limits:
        others = other_limits(result.limits)
        if others:
            out.append('<div style="opacity:.75">limits: ' + esc(" · ".join(others)) + "</div>")
    for note in summary.cautions(result):
        out.append(f'<div style="color:{_WARN_COLOUR}">{esc(note)}</div>')
    for name, why in summary.not_enforced(result).items():
        text = f"not enforced: {name}" + (f" ({why})" if why else "")
        out.append(f'<div style="color:{_WARN_COLOUR}">⚠ {esc(text)}</div>')
    out.append("</div>")
    return "".join(out)


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
        f'<div class="symbi-usage" data-usage="{esc(row.name)}" '
        'style="display:flex;align-items:center;gap:8px">',
        f'<span style="width:6em;opacity:.75">{esc(row.name)}</span>',
    ]
    if row.fraction is not None:
        percent = min(100.0, max(0.0, row.fraction * 100))
        fill = _BAR_COLOUR
        if row.stopped or row.fraction >= 1:
            fill = _STOP_COLOUR
        elif row.fraction >= 0.8:
            fill = _WARN_COLOUR
        parts.append(
            '<div class="symbi-bar" style="width:10em;height:8px;'
            'background:rgba(127,127,127,.25);border-radius:4px;overflow:hidden">'
            f'<div class="symbi-bar-fill" style="width:{percent:.1f}%;height:100%;'
            f'background:{fill}"></div></div>'
        )
    parts.append(f"<span>{esc(figures)}</span>")
    if row.samples:
        parts.append(sparkline_svg(row.samples))
    parts.append("</div>")
    return "".join(parts)


def sparkline_svg(points: list[list[float]], width: int = 96, height: int = 18) -> str:
    """Memory over time as an inline SVG polyline (no script), scaled to the run's
    own range so its shape shows; the figures beside it give the scale."""
    t_end = max(p[0] for p in points) or 1.0
    top = max(p[1] for p in points) or 1
    coords = " ".join(
        f"{1 + (width - 2) * p[0] / t_end:.1f},{height - 1 - (height - 2) * p[1] / top:.1f}"
        for p in points
    )
    title = (
        f"memory over {format_duration(t_end)}: {len(points)} samples, highest {format_bytes(top)}"
    )
    return (
        f'<svg class="symbi-sparkline" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">'
        f"<title>{html.escape(title)}</title>"
        f'<polyline points="{coords}" fill="none" stroke="{_BAR_COLOUR}" '
        'stroke-width="1.5" stroke-linejoin="round"/></svg>'
    )

"""The bench's chart: start-up (cold and warm, log scale) and throughput per tier as
horizontal bars, with the seed's claim marked on each, in inline SVG (no script)."""

from __future__ import annotations

import html
import math
import re
from typing import TYPE_CHECKING

from .html_badge import TIER_COLOURS
from .words import format_duration

if TYPE_CHECKING:
    from ..bench.report import BenchReport

_WIDTH = 640
_LABEL = 130  # the tier names' column
_RIGHT = 90  # room for a bar's figure
_ROW = 30
_TOP = 34
_CLAIM_COLOUR = "#b26a00"


def _claim_number(text: str) -> float | None:
    """The number in a seed claim (``~500 ms`` -> 0.5 s, ``~95 %`` -> 0.95)."""
    match = re.search(r"([\d.]+)\s*(ms|s|%)", text)
    if not match:
        return None
    value = float(match.group(1))
    return {"ms": value / 1000, "s": value, "%": value / 100}[match.group(2)]


def _decade(exponent: int) -> str:
    """10**exponent seconds in words: 1 ms, 10 ms, 100 ms, 1 s, 10 s."""
    if exponent < 0:
        return f"{10 ** (exponent + 3):g} ms"
    return f"{10**exponent:g} s"


def _axis(x: float, label: str, top: float, bottom: float) -> str:
    return (
        f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" stroke="#999" '
        'stroke-opacity=".35"/>'
        f'<text x="{x:.1f}" y="{top - 4}" font-size="10" text-anchor="middle" '
        f'fill="#666">{html.escape(label)}</text>'
    )


def _panel(
    title: str,
    rows: list[tuple[str, str, list[tuple[str, float | None, str]], float | None]],
    scale: tuple[float, float],
    log: bool,
    ticks: list[tuple[float, str]],
    y0: float,
) -> tuple[str, float]:
    """One panel: per row (label, colour, bars of (name, value, figure), claim)."""
    lo, hi = scale
    span = _WIDTH - _LABEL - _RIGHT

    def x(value: float) -> float:
        if log:
            fraction = (math.log10(max(value, lo)) - math.log10(lo)) / (
                math.log10(hi) - math.log10(lo)
            )
        else:
            fraction = (value - lo) / (hi - lo)
        return _LABEL + span * min(max(fraction, 0.0), 1.0)

    bar_rows = sum(max(1, len(bars)) for _, _, bars, _ in rows)
    height = _TOP + bar_rows * (_ROW / 2) + len(rows) * 8
    out = [
        f'<text x="0" y="{y0 + 12}" font-size="12" font-weight="600">{html.escape(title)}'
        f'<tspan font-weight="400" fill="{_CLAIM_COLOUR}"> (dashed: the seed\'s claim)'
        "</tspan></text>"
    ]
    out += [_axis(x(v), label, y0 + _TOP - 6, y0 + height) for v, label in ticks]
    y = y0 + _TOP
    for label, colour, bars, claim in rows:
        top = y
        out.append(f'<text x="0" y="{y + 11}" font-size="11">{html.escape(label)}</text>')
        for name, value, figure in bars:
            if value is not None:
                width = max(x(value) - _LABEL, 1.0)
                opacity = "1" if name in ("cold", "measured") else ".55"
                out.append(
                    f'<rect class="symbi-bench-bar" data-bar="{html.escape(name)}" '
                    f'x="{_LABEL}" y="{y + 2}" width="{width:.1f}" height="11" '
                    f'fill="{colour}" fill-opacity="{opacity}"><title>'
                    f"{html.escape(f'{label} {name}: {figure}')}</title></rect>"
                    f'<text x="{_LABEL + width + 4:.1f}" y="{y + 11}" font-size="10">'
                    f"{html.escape(f'{name} {figure}' if len(bars) > 1 else figure)}</text>"
                )
            y += _ROW / 2
        if claim is not None:
            cx = x(claim)
            out.append(
                f'<line class="symbi-bench-claim" x1="{cx:.1f}" y1="{top}" x2="{cx:.1f}" '
                f'y2="{y + 1}" stroke="{_CLAIM_COLOUR}" stroke-width="2" '
                'stroke-dasharray="3,2"><title>the seed\'s claim</title></line>'
            )
        y += 8
    return "".join(out), height


def bench_chart_svg(report: BenchReport) -> str:
    """Start-up and throughput per measured tier, the seed's claims dashed."""
    start_rows = []
    through_rows = []
    values: list[float] = []
    for tier, fig in report.tiers.items():
        if not fig.available:
            continue
        colour = TIER_COLOURS[tier]
        label = f"{tier.value}"
        claim = _claim_number(fig.claim.startup)
        bars = [
            (
                name,
                spread.median if spread else None,
                format_duration(spread.median) if spread else "",
            )
            for name, spread in (("cold", fig.cold), ("warm", fig.warm))
        ]
        values += [v for _, v, _ in bars if v] + ([claim] if claim else [])
        start_rows.append((label, colour, bars, claim))
        summary = fig.throughput_summary
        through_rows.append(
            (
                label,
                colour,
                [("measured", summary, f"{summary * 100:.0f} %" if summary is not None else "")],
                _claim_number(fig.claim.throughput),
            )
        )
    if not start_rows:
        return ""
    lo = 10 ** math.floor(math.log10(min(values))) if values else 0.001
    hi = 10 ** math.ceil(math.log10(max(values))) if values else 10.0
    hi = max(hi, lo * 10)
    decades = range(round(math.log10(lo)), round(math.log10(hi)) + 1)
    start_ticks = [(10.0**d, _decade(d)) for d in decades]
    top = max([1.2] + [r[2][0][1] or 0 for r in through_rows])
    top = math.ceil(top * 4) / 4
    through_ticks = [(q / 4, f"{q * 25} %") for q in range(round(top * 4) + 1)]
    first, h1 = _panel(
        "Start-up: a trivial cell, cold and warm (log scale)",
        start_rows,
        (lo, hi),
        True,
        start_ticks,
        0,
    )
    second, h2 = _panel(
        "Throughput against tier None (geometric mean of five workloads)",
        through_rows,
        (0.0, top),
        False,
        through_ticks,
        h1 + 16,
    )
    height = h1 + 16 + h2 + 4
    return (
        f'<svg class="symbi-bench-chart" xmlns="http://www.w3.org/2000/svg" style="margin:8px 0" '
        f'width="{_WIDTH}" height="{height:.0f}" viewBox="0 0 {_WIDTH} {height:.0f}" '
        'role="img" aria-label="start-up and throughput per tier, beside the seed\'s claims" '
        'font-family="system-ui,sans-serif">'
        "<title>Start-up and throughput per tier; dashed: the seed's claim</title>"
        f"{first}{second}</svg>"
    )

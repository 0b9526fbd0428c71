"""The bench's report (:class:`~symbi_jupyter.bench.BenchReport`) as text and HTML: the
seed's table with the measured figure beside each claim, then the details (spread,
each workload, each isolation question, memory method, notes), the host and the date.
The stable rendering leaves out every measured figure, the host and the date; what is
left (the rows, the claims, isolation, why a tier is unavailable) is the structure
nbval compares."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from ..tiers import SecurityTier
from .bench_chart import bench_chart_svg
from .html_badge import TIER_COLOURS
from .options import ResultDisplay
from .words import format_bytes, format_duration

if TYPE_CHECKING:
    from ..bench.report import BenchReport, TierFigures

MODE = {
    SecurityTier.NONE: "native",
    SecurityTier.TIER1: "Docker",
    SecurityTier.TIER2: "gVisor",
    SecurityTier.TIER3: "microVM",
}
#: The main table's columns under their groups: (group, column).
COLUMNS = (
    ("", "Mode"),
    ("Startup", "seed"),
    ("Startup", "cold"),
    ("Startup", "warm"),
    ("Throughput", "seed"),
    ("Throughput", "measured"),
    ("Memory overhead", "seed"),
    ("Memory overhead", "measured"),
    ("Isolation", "seed"),
    ("Isolation", "measured"),
)


def mode_name(tier: SecurityTier) -> str:
    return f"{tier.value} ({MODE[tier]})"


def percent(ratio: float) -> str:
    return f"{ratio * 100:.0f} %"


def signed_bytes(n: float) -> str:
    return ("+" if n >= 0 else "-") + format_bytes(abs(n))


def isolation_words(fig: TierFigures) -> str:
    """'6/6 (gVisor's kernel)' or '3/6, sees: host name, host file, kernel'."""
    from ..bench.workloads import QUESTIONS

    if fig.isolation is None:
        return "-"
    kept = sum(fig.isolation.values())
    seen = [QUESTIONS[q] for q, ok in fig.isolation.items() if not ok]
    words = f"{kept}/{len(fig.isolation)}"
    if seen:
        return f"{words}, sees: {', '.join(seen)}"
    return f"{words} ({fig.kernel_words} kernel)" if fig.kernel_words else words


def row_cells(fig: TierFigures, stable: bool) -> list[str]:
    """One tier's cells of the main table, in :data:`COLUMNS` order."""
    claim = fig.claim

    def measured(text: str) -> str:
        return "" if stable else text

    if not fig.available:
        blank = measured("-")
        return [
            mode_name(fig.tier),
            claim.startup,
            blank,
            blank,
            claim.throughput,
            blank,
            claim.memory,
            blank,
            claim.isolation,
            "-",
        ]
    summary = fig.throughput_summary
    return [
        mode_name(fig.tier),
        claim.startup,
        measured(format_duration(fig.cold.median) if fig.cold else "-"),
        measured(format_duration(fig.warm.median) if fig.warm else "-"),
        claim.throughput,
        measured(percent(summary) if summary is not None else "-"),
        claim.memory,
        measured(
            signed_bytes(fig.memory_overhead_bytes)
            if fig.memory_overhead_bytes is not None
            else "-"
        ),
        claim.isolation,
        isolation_words(fig),
    ]


def _title(report: BenchReport) -> str:
    kind = "quick" if report.quick else "full"
    runs = f"{report.runs} run{'s' if report.runs > 1 else ''}"
    return f"The seed's performance table, measured on this host ({kind} run, {runs} each)"


def host_line(report: BenchReport) -> str:
    h = report.host
    parts = [
        h.get("cpu_model") or "CPU ?",
        f"{h.get('cores')} cores",
        format_bytes(h["memory_bytes"]) if h.get("memory_bytes") else None,
        h.get("kernel"),
        f"Tier3 {h['virtualization']}" if h.get("virtualization") else None,
        f"Python {h.get('python')}",
        f"Docker {h['docker']}" if h.get("docker") else None,
        f"runsc {h['runsc']}" if h.get("runsc") else None,
        f"QEMU {h['qemu']}" if h.get("qemu") else None,
    ]
    return " · ".join(p for p in parts if p)


def detail_rows(report: BenchReport, stable: bool) -> list[tuple[str, list[str]]]:
    """Per tier, what the main table summarises: (heading, lines)."""
    from ..bench.workloads import QUESTIONS, WORKLOAD_WORDS

    out = []
    for tier, fig in report.tiers.items():
        lines = []
        if not fig.available:
            lines.append(f"unavailable: {fig.reason}")
        if fig.detail:
            lines.append(f"ran in: {fig.detail}")
        if not stable:
            for name, spread in (("cold", fig.cold), ("warm", fig.warm)):
                if spread:
                    extra = ""
                    if name == "warm":
                        extra = f", {fig.warm_prepared[0]} served by a sandbox prepared in advance"
                    lines.append(
                        f"start-up {name}: {format_duration(spread.median)} "
                        f"({format_duration(spread.low)}-{format_duration(spread.high)}, "
                        f"{spread.count} runs{extra})"
                    )
            if fig.throughput:
                each = ", ".join(
                    f"{WORKLOAD_WORDS[name]} {percent(value)}"
                    for name, value in fig.throughput.items()
                )
                lines.append(f"throughput: {each}")
            if fig.memory_peak:
                lines.append(
                    f"memory: idle cell's peak {format_bytes(fig.memory_peak.median)} "
                    f"({fig.memory_method})"
                )
        if fig.isolation is not None:
            lines.append(
                "isolated: "
                + ", ".join(
                    f"{QUESTIONS[q]} {'yes' if ok else 'no'}" for q, ok in fig.isolation.items()
                )
            )
        if not stable:  # which samples waited, or failed, changes from run to run
            lines.extend(f"note: {note}" for note in fig.notes)
        out.append((mode_name(tier), lines))
    return out


def render_bench_text(report: BenchReport, display: ResultDisplay) -> str:
    """The report as plain text: the seed's table, the details, the methods."""
    from ..bench.report import METHODS

    stable = display.stable
    rows = [row_cells(fig, stable) for fig in report.tiers.values()]
    header = [column for _, column in COLUMNS]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(COLUMNS))]
    groups: list[str] = []
    i = 0
    while i < len(COLUMNS):
        group = COLUMNS[i][0]
        span = [j for j in range(len(COLUMNS)) if COLUMNS[j][0] == group]
        width = sum(widths[j] for j in span) + 2 * (len(span) - 1)
        groups.append(group.ljust(width))
        i = span[-1] + 1
    lines = [_title(report)]
    if not stable:
        lines.append(f"{report.date} · {host_line(report)}")
    lines.append("")
    lines.append("  ".join(groups).rstrip())
    for cells in [header, *rows]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    lines.append("")
    for heading, details in detail_rows(report, stable):
        lines.append(heading)
        lines.extend(f"  {d}" for d in details)
    lines.append("")
    lines.append("How each figure is taken:")
    lines.extend(f"  {name}: {words}" for name, words in METHODS.items())
    if not stable:
        lines.append(f"The run took {format_duration(report.seconds)}.")
    return "\n".join(lines)


_CELL = "padding:2px 8px;text-align:left"


def render_bench_html(report: BenchReport, display: ResultDisplay) -> str:
    """The report as HTML: the table, the inline-SVG chart (no script), the details."""
    from ..bench.report import METHODS

    esc = html.escape
    stable = display.stable
    out = [
        '<div class="symbi-bench" style="font-family:system-ui,-apple-system,'
        "'Segoe UI',sans-serif;font-size:12px;line-height:1.45\">",
        f'<div style="font-weight:600;font-size:13px">{esc(_title(report))}</div>',
    ]
    if not stable:
        out.append(
            f'<div class="symbi-bench-host" style="opacity:.8">{esc(report.date)} · '
            f"{esc(host_line(report))}</div>"
        )
    head_groups = []
    i = 0
    while i < len(COLUMNS):
        group = COLUMNS[i][0]
        span = sum(1 for g, _ in COLUMNS if g == group)
        head_groups.append(f'<th colspan="{span}" style="{_CELL}">{esc(group)}</th>')
        i += span
    head = "".join(f'<th style="{_CELL}">{esc(column)}</th>' for _, column in COLUMNS)
    body = []
    for tier, fig in report.tiers.items():
        cells = row_cells(fig, stable)
        style = f"{_CELL};border-left:4px solid {TIER_COLOURS[tier]};font-weight:600"
        tds = [f'<td style="{style}">{esc(cells[0])}</td>']
        for n, cell in enumerate(cells[1:], start=1):
            seed = COLUMNS[n][1] == "seed"
            tds.append(f'<td style="{_CELL}{";opacity:.7" if seed else ""}">{esc(cell)}</td>')
        body.append(f'<tr data-tier="{esc(tier.value)}">{"".join(tds)}</tr>')
        if not fig.available:
            body.append(
                f'<tr class="symbi-bench-unavailable"><td></td><td colspan="{len(COLUMNS) - 1}"'
                f' style="{_CELL};color:#b26a00">unavailable: {esc(fig.reason or "")}</td></tr>'
            )
    out.append(
        '<table class="symbi-bench-table" style="border-collapse:collapse;margin:4px 0">'
        f"<tr>{''.join(head_groups)}</tr><tr>{head}</tr>{''.join(body)}</table>"
    )
    if not stable:
        out.append(bench_chart_svg(report))
    out.append("<details><summary>Details and methods</summary>")
    for heading, details in detail_rows(report, stable):
        items = "".join(f"<li>{esc(d)}</li>" for d in details)
        out.append(f'<div><b>{esc(heading)}</b><ul style="margin:0">{items}</ul></div>')
    methods = "".join(f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in METHODS.items())
    out.append(f'<ul style="margin:0">{methods}</ul></details></div>')
    return "".join(out)

"""Renderings of ExecutionResult: text line, HTML badge, markdown, MIME bundle."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from html.parser import HTMLParser

import pytest
from traitlets.config import Config

from symbi_jupyter.limits import ResourceLimits
from symbi_jupyter.render import (
    KILL_REASON_WORDS,
    MIME_TYPE,
    ResultDisplay,
    TierLadder,
    format_bytes,
    format_duration,
    render_html,
    render_markdown,
    render_mimebundle,
    render_text,
)
from symbi_jupyter.result import KILL_REASONS, ExecutionResult
from symbi_jupyter.sandboxes.base import Availability
from symbi_jupyter.tiers import SecurityTier

from .lab_sanitizer import sanitize

MIB = 1024 * 1024
LIMITS = ResourceLimits(
    max_memory_mb=1024,
    max_cpu_seconds=300,
    timeout_seconds=2,
    max_processes=64,
    max_output_bytes=10 * MIB,
    network=False,
)
# Volatile figures chosen so that their renderings are easy to look for.
VOLATILE = dict(
    wall_seconds=0.0312,
    execution_time_ms=31,
    cpu_user_seconds=0.0197,
    cpu_system_seconds=0.0043,
    peak_memory_bytes=int(9.8 * MIB),
    memory_method="cgroup",
)
VOLATILE_TEXT = ("31.2 ms", "24.0 ms", "9.8 MiB")


def make(tier: SecurityTier = SecurityTier.NONE, **fields) -> ExecutionResult:
    values = dict(exit_code=0, limits=LIMITS, **VOLATILE)
    values.update(fields)
    return ExecutionResult(tier=tier, **values)


@pytest.fixture(autouse=True)
def fresh_display(monkeypatch):
    monkeypatch.delenv("SYMBI_JUPYTER_STABLE_OUTPUT", raising=False)
    ResultDisplay.clear_instance()
    yield
    ResultDisplay.clear_instance()


class TagChecker(HTMLParser):
    """Records tag-balance errors and the top-level elements."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.roots: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        if not self.stack:
            self.roots.append((tag, dict(attrs)))
        self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.errors.append(f"self-closing <{tag}/>")

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"unbalanced </{tag}>")


def check_html(markup: str) -> dict[str, str | None]:
    """Assert the markup is one balanced element; return the root's attributes."""
    checker = TagChecker()
    checker.feed(markup)
    checker.close()
    assert checker.errors == []
    assert checker.stack == []
    assert len(checker.roots) == 1
    tag, attrs = checker.roots[0]
    assert tag == "div"
    return attrs


# -- text -----------------------------------------------------------------------------
def test_text_success_line():
    assert render_text(make()) == (
        "[symbi] None (native) · exit 0 · wall 31.2 ms · CPU 24.0 ms"
        " · peak 9.8 MiB of 1.0 GiB (cgroup)"
    )


def test_text_is_str_and_pretty():
    result = make(SecurityTier.TIER2, exit_code=3)
    assert str(result) == render_text(result)
    assert str(result).startswith("[symbi] Tier2 (gvisor) · exit 3 · ")
    assert "\n" not in str(result)


@pytest.mark.parametrize(
    "reason, expected",
    [
        ("memory", "stopped: memory limit (1024 MiB)"),
        ("timeout", "stopped: timeout after 2 s (partial output kept)"),
        ("cpu", "stopped: CPU-time limit (300 s)"),
        ("processes", "stopped: process limit (64)"),
        ("file_size", "stopped: file-size limit"),
        ("output", "stopped: output limit (10.0 MiB)"),
        ("signal", "killed by signal 9 (SIGKILL)"),
    ],
)
def test_text_stopped(reason, expected):
    result = make(exit_code=-1, term_signal=9, killed_by=reason)
    line = render_text(result)
    assert line.startswith(f"[symbi] None (native) · {expected} · wall 31.2 ms")
    assert "exit" not in line


def test_text_signal_without_reason():
    line = render_text(make(exit_code=-1, term_signal=15))
    assert "killed by signal 15 (SIGTERM)" in line
    assert "exit" not in line


def test_text_stopped_without_limit_values():
    bare = ResourceLimits()
    assert "stopped: timeout (partial output kept)" in render_text(
        make(killed_by="timeout", timed_out=True, limits=bare)
    )
    assert "stopped: memory limit ·" in render_text(make(killed_by="memory", limits=bare))


def test_text_truncation():
    assert " · stdout truncated at 10.0 MiB" in render_text(make(stdout_truncated=True))
    both = render_text(make(stdout_truncated=True, stderr_truncated=True))
    assert " · stdout and stderr truncated at 10.0 MiB" in both
    uncapped = render_text(make(stderr_truncated=True, limits=ResourceLimits()))
    assert uncapped.endswith(" · stderr truncated")
    assert "truncated" not in render_text(make())


def test_text_not_enforced():
    enforcement = {
        "memory": "cgroup",
        "processes": "not enforced: RLIMIT_NPROC does not apply to root",
        "cpu_cores": "not enforced",
    }
    line = render_text(make(enforcement=enforcement))
    assert line.endswith(" · not enforced: processes, cpu_cores")
    assert "memory," not in line
    assert "not enforced" not in render_text(make(enforcement={"memory": "cgroup"}))


def test_text_limits_reached_but_not_stopping():
    line = render_text(make(killed_by="memory", limits_reached=["memory", "processes"]))
    assert "reached: process limit" in line
    assert "reached: memory" not in line


def test_text_unknown_figures_left_out():
    result = ExecutionResult(tier=SecurityTier.TIER1, exit_code=0)
    assert render_text(result) == "[symbi] Tier1 (docker) · exit 0"
    partial = ExecutionResult(
        tier=SecurityTier.TIER1, exit_code=0, cpu_user_seconds=1.0, peak_memory_bytes=2048
    )
    line = render_text(partial)
    assert "None" not in line
    assert "CPU" not in line  # system time unknown, so CPU total unknown
    assert line.endswith(" · peak 2.0 KiB")


def test_text_show_limits_off():
    shown = ResultDisplay(show_limits=False)
    line = render_text(make(), shown)
    assert "peak 9.8 MiB (cgroup)" in line
    assert "of 1.0 GiB" not in line


# -- stable mode ------------------------------------------------------------------------
def test_stable_text_has_no_volatile_figures():
    shown = ResultDisplay(stable=True)
    line = render_text(make(), shown)
    assert line == "[symbi] None (native) · exit 0"
    for text in (*VOLATILE_TEXT, "wall", "CPU", "peak", "cgroup"):
        assert text not in line


def test_stable_keeps_what_matters():
    shown = ResultDisplay(stable=True)
    result = make(
        SecurityTier.TIER1,
        exit_code=-1,
        term_signal=9,
        killed_by="memory",
        stdout_truncated=True,
        enforcement={"processes": "not enforced: root"},
    )
    assert render_text(result, shown) == (
        "[symbi] Tier1 (docker) · stopped: memory limit (1024 MiB)"
        " · stdout truncated at 10.0 MiB · not enforced: processes"
    )


def test_stable_identical_across_volatile_figures():
    shown = ResultDisplay(stable=True)
    first = make(killed_by="timeout", timed_out=True, exit_code=-1, term_signal=9)
    second = dataclasses.replace(
        first,
        wall_seconds=2.7,
        execution_time_ms=2700,
        cpu_user_seconds=1.9,
        cpu_system_seconds=0.3,
        peak_memory_bytes=700 * MIB,
        memory_method="wait4",
    )
    for render in (render_text, render_html, render_markdown):
        assert render(first, shown) == render(second, shown)
    # ... and not identical when not stable: the figures are really rendered.
    assert render_text(first) != render_text(second)
    assert render_html(first) != render_html(second)


def test_stable_html_and_markdown_show_only_limits():
    shown = ResultDisplay(stable=True)
    markup = render_html(make(), shown)
    markdown = render_markdown(make(), shown)
    for out in (markup, markdown):
        for text in (*VOLATILE_TEXT, "cgroup"):
            assert text not in out
        assert "1.0 GiB" in out
        assert "300 s" in out
    assert "%" not in markup  # no bar widths
    assert "limit 1.0 GiB" in markup
    assert "| used |" not in markdown


def test_stable_json_leaves_volatile_figures_out():
    bundle = render_mimebundle(make(), ResultDisplay(stable=True))
    data = bundle[MIME_TYPE]
    assert data["peak_memory_bytes"] is None and data["wall_seconds"] is None
    assert data["exit_code"] == 0 and data["limits"]["max_memory_mb"] is not None
    assert "31.2 ms" not in bundle["text/plain"]
    full = render_mimebundle(make(), ResultDisplay(stable=False))[MIME_TYPE]
    assert full["peak_memory_bytes"] == VOLATILE["peak_memory_bytes"]


# -- HTML -------------------------------------------------------------------------------
def test_html_badge_success():
    markup = render_html(make())
    attrs = check_html(markup)
    assert attrs["class"] == "symbi-result"
    assert attrs["data-tier"] == "None"
    assert "no isolation" in markup
    assert "finished, exit 0" in markup
    assert "9.8 MiB of 1.0 GiB (cgroup)" in markup
    assert "24.0 ms of 300 s" in markup
    assert "31.2 ms of 2 s" in markup
    assert re.search(r"width:1\.0%", markup)  # 9.8 MiB of 1 GiB
    assert "64 processes" in markup
    assert "network off" in markup


def test_html_self_contained():
    markup = render_html(make(enforcement={"processes": "not enforced: root"}))
    lowered = markup.lower()
    for forbidden in ("<script", "<link", "<style", "<img", "http:", "https:", "url(", "on"):
        if forbidden == "on":
            assert not re.search(r"\son\w+=", lowered)
        else:
            assert forbidden not in lowered


@pytest.mark.parametrize(
    "reason, words",
    [
        ("memory", "stopped by the memory limit: the code used more than 1024 MiB"),
        ("timeout", "stopped by the wall-clock timeout after 2 s; partial output kept"),
        ("cpu", "stopped by the CPU-time limit"),
        ("processes", "stopped by the process limit"),
        ("file_size", "stopped by the file-size limit"),
        ("output", "stopped by the output limit"),
        ("signal", "killed by signal 9"),
    ],
)
def test_html_and_markdown_status_words(reason, words):
    result = make(exit_code=-1, term_signal=9, killed_by=reason)
    markup = render_html(result)
    check_html(markup)
    assert words in markup
    assert "finished" not in markup
    # markdown escapes punctuation, so compare without backslashes
    assert words in render_markdown(result).replace("\\", "")


def test_html_bar_marks_the_limit_that_stopped():
    result = make(killed_by="memory", exit_code=-1, peak_memory_bytes=1024 * MIB)
    markup = render_html(result)
    assert "width:100.0%" in markup
    assert "1.0 GiB of 1.0 GiB" in markup


def test_html_tiers_have_distinct_colours():
    roots = []
    for tier in SecurityTier:
        markup = render_html(make(tier))
        assert check_html(markup)["data-tier"] == tier.value
        roots.append(markup.split(">", 1)[0])
    assert len(set(roots)) == len(SecurityTier)


def test_html_escapes_hostile_strings():
    hostile = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
    result = make(
        memory_method=hostile,
        enforcement={hostile: "not enforced: " + hostile},
    )
    markup = render_html(result)
    check_html(markup)
    assert "<script" not in markup
    assert "<img" not in markup
    assert "&lt;script&gt;" in markup
    markdown = render_markdown(result)
    assert "<script" not in markdown
    assert "<img" not in markdown


def test_html_not_enforced_warning_and_truncation():
    result = make(
        stdout_truncated=True,
        enforcement={"processes": "not enforced: RLIMIT_NPROC does not apply to root"},
    )
    markup = render_html(result)
    assert "not enforced: processes (RLIMIT_NPROC does not apply to root)" in markup
    assert "stdout truncated at 10.0 MiB" in markup


def test_html_unknown_figures_left_out():
    result = ExecutionResult(tier=SecurityTier.TIER3, exit_code=0)
    markup = render_html(result)
    check_html(markup)
    assert "None" not in markup
    assert "%" not in markup
    assert "finished, exit 0" in markup


def test_html_show_limits_off():
    markup = render_html(make(), ResultDisplay(show_limits=False))
    assert "9.8 MiB (cgroup)" in markup
    assert "of 1.0 GiB" not in markup
    assert "%" not in markup
    assert "64 processes" not in markup


# -- markdown ---------------------------------------------------------------------------
def test_markdown_table():
    markdown = render_markdown(make(stdout_truncated=True))
    lines = markdown.splitlines()
    assert lines[0] == "**\\[symbi\\] None (native): finished, exit 0**"
    assert "| | used | limit |" in lines
    assert "| memory | 9.8 MiB (cgroup) | 1.0 GiB |" in lines
    assert "| CPU time | 24.0 ms | 300 s |" in lines
    assert "- stdout truncated at 10.0 MiB" in lines


def test_markdown_without_figures_has_no_table():
    markdown = render_markdown(ExecutionResult(tier=SecurityTier.TIER1, exit_code=1))
    assert markdown == "**\\[symbi\\] Tier1 (docker): finished, exit 1**\n"


# -- bundle and display machinery ---------------------------------------------------------
def test_mimebundle():
    result = make(killed_by="cpu", exit_code=-1, term_signal=24)
    bundle = render_mimebundle(result)
    assert set(bundle) == {"text/plain", "text/html", "text/markdown", MIME_TYPE}
    assert bundle["text/plain"] == render_text(result)
    data = json.loads(json.dumps(bundle[MIME_TYPE]))
    expected = result.to_dict()
    del expected["stdout"], expected["stderr"]  # already in the notebook as streams
    assert data == expected
    assert data["killed_by"] == "cpu"
    assert data["tier"] == "None"
    assert result._repr_mimebundle_() == bundle


def test_every_kill_reason_has_words():
    assert set(KILL_REASON_WORDS) == set(KILL_REASONS)


def test_instance_trait_change_takes_effect():
    result = make()
    assert "31.2 ms" in str(result)
    ResultDisplay.instance().stable = True
    assert str(result) == "[symbi] None (native) · exit 0"
    assert "9.8 MiB" not in result._repr_html_()
    assert "9.8 MiB" not in result._repr_markdown_()
    ResultDisplay.instance().show_limits = False
    assert "1.0 GiB" not in result._repr_html_()


def test_explicit_display_wins_over_instance():
    ResultDisplay.instance().stable = True
    assert "31.2 ms" in render_text(make(), ResultDisplay(stable=False))


def test_config_object():
    config = Config({"ResultDisplay": {"stable": True, "show_limits": False}})
    shown = ResultDisplay.instance(config=config)
    assert shown.stable and not shown.show_limits
    assert str(make()) == "[symbi] None (native) · exit 0"


@pytest.mark.parametrize(
    "value, stable", [("1", True), ("true", True), ("YES", True), ("0", False), ("no", False)]
)
def test_env_var_default(monkeypatch, value, stable):
    monkeypatch.setenv("SYMBI_JUPYTER_STABLE_OUTPUT", value)
    ResultDisplay.clear_instance()
    assert ResultDisplay.instance().stable is stable
    assert ("31.2 ms" in str(make())) is not stable


def test_default_is_not_stable():
    assert ResultDisplay.instance().stable is False
    assert ResultDisplay.instance().show_limits is True


def test_traits_are_documented_config():
    for name in ("stable", "show_limits"):
        trait = ResultDisplay.class_traits()[name]
        assert trait.metadata.get("config") is True
        assert trait.help


@pytest.fixture
def shell(tmp_path_factory, monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell

    if not InteractiveShell.initialized():
        monkeypatch.setenv("IPYTHONDIR", str(tmp_path_factory.mktemp("ipython")))
    return InteractiveShell.instance(config=Config({"HistoryManager": {"enabled": False}}))


def test_ipython_formatter(shell):
    result = make(SecurityTier.TIER1)
    data, _ = shell.display_formatter.format(result)
    assert data["text/plain"] == render_text(result)
    assert 'class="symbi-result"' in data["text/html"]
    assert data["text/markdown"].startswith("**")
    assert data[MIME_TYPE]["tier"] == "Tier1"


def test_percent_config_magic(shell):
    shown = ResultDisplay.instance()
    shell.configurables.append(shown)
    try:
        shell.run_line_magic("config", "ResultDisplay.stable = True")
        assert shown.stable is True
        data, _ = shell.display_formatter.format(make())
        assert data["text/plain"] == "[symbi] None (native) · exit 0"
    finally:
        shell.configurables.remove(shown)
        # %config wrote it into the shared shell's configuration too.
        shell.config.pop("ResultDisplay", None)


# -- units ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "seconds, text",
    [
        (0.0312, "31.2 ms"),
        (0.0004, "0.400 ms"),
        (0.312, "312 ms"),
        (0.9996, "1.00 s"),
        (12.34, "12.3 s"),
        (125, "2 min 5 s"),
        (120, "2 min"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    "n, text",
    [
        (512, "512 B"),
        (1024, "1.0 KiB"),
        (int(9.8 * MIB), "9.8 MiB"),
        (MIB - 10, "1.0 MiB"),
        (1024 * MIB, "1.0 GiB"),
    ],
)
def test_format_bytes(n, text):
    assert format_bytes(n) == text


# -- untrusted notebooks -------------------------------------------------------------------
SAMPLES = [[0.0, 40 * MIB], [0.25, 60 * MIB], [0.5, 120 * MIB], [0.75, 120 * MIB]]
LIVE = ResultDisplay(stable=False)  # not the shell's, which another test may have set


def _sparkline_document(markup: str) -> str:
    """The SVG of the badge's one sparkline image."""
    [image] = sanitize(markup).images
    prefix = "data:image/svg+xml;base64,"
    assert image["src"].startswith(prefix)
    return base64.b64decode(image["src"][len(prefix) :]).decode()


def test_an_untrusted_notebook_shows_the_sparkline_and_nothing_stray():
    """JupyterLab's sanitizer removes an inline <svg> and leaves its <title> as text;
    an <img> of it survives, with alt text and nothing else on the page."""
    markup = render_html(make(memory_samples=SAMPLES), LIVE)
    shown = sanitize(markup)
    text = "".join(shown.text)
    assert "memory over" not in text  # no stray <title>
    assert shown.dropped == []
    [image] = shown.images
    assert image["alt"] == "memory over 750 ms: 4 samples, highest 120.0 MiB"
    document = _sparkline_document(markup)
    assert document.startswith('<svg xmlns="http://www.w3.org/2000/svg"')
    assert "<script" not in document


@pytest.mark.parametrize("compact", [False, True], ids=["full", "compact"])
def test_badges_lose_nothing_to_the_sanitizer(compact):
    """Every tag, attribute and style declaration is one JupyterLab keeps untrusted."""
    result = make(
        killed_by=None if compact else "memory",
        enforcement={"network": "not enforced: not root"},
        stdout_truncated=not compact,
        memory_samples=SAMPLES,
    )
    for stable in (False, True):
        markup = render_html(result, ResultDisplay(stable=stable), compact=compact)
        assert sanitize(markup).dropped == []


def test_a_flat_sparkline_has_a_baseline():
    flat = [[0.0, 50 * MIB], [0.5, 50 * MIB], [1.0, 50 * MIB]]
    document = _sparkline_document(render_html(make(memory_samples=flat), LIVE))
    baseline = re.search(r'<line class="baseline" x1="1" y1="(\d+)" x2="95" y2="\1"', document)
    assert baseline and int(baseline.group(1)) == 17  # the bottom edge of 18 px
    # the series is a band over it, filled down to the baseline
    polygon = re.search(r'<polygon points="([^"]+)"', document).group(1).split()
    assert polygon[0].endswith(",17") and polygon[-1].endswith(",17")


# -- units ----------------------------------------------------------------------------------
def test_a_memory_kill_says_one_unit_for_the_limit_and_its_figures():
    """'more than 100 MB' beside '100.0 MiB of 100.0 MiB' named one size two ways."""
    limits = dataclasses.replace(LIMITS, max_memory_mb=100, max_disk_mb=512)
    result = make(killed_by="memory", exit_code=-9, limits=limits, peak_memory_bytes=100 * MIB)
    for rendering in (
        render_text(result, LIVE),
        render_html(result, LIVE),
        render_markdown(result, LIVE),
    ):
        assert not re.search(r"\bMB\b", rendering)
    assert "the code used more than 100 MiB" in render_html(result, LIVE)
    assert "100.0 MiB of 100.0 MiB" in render_html(result, LIVE)
    assert "stopped: memory limit (100 MiB)" in render_text(result, LIVE)
    assert "disk 512 MiB" in render_html(result, LIVE)


# -- the tier ladder ------------------------------------------------------------------------
#: What a Tier3 row held on a host whose KVM could not run guests: QEMU's own words.
KVM_ASSERTION = (
    "/dev/kvm exists but a probe VM did not boot under it (the Tier3 (Firecracker) worker "
    "did not start: qemu-system-x86_64: ../accel/kvm/kvm-all.c:1234: kvm_init: Assertion "
    "`ret == 0' failed.\nAborted (core dumped)); the VMM runs as a uid of its own"
)


def _ladder() -> TierLadder:
    from symbi_jupyter.tiers import SecurityTier as T

    return TierLadder(
        {
            T.NONE: Availability(True, "", {"cgroup": "v1"}),
            T.TIER1: Availability(False, "Tier1 (Docker): no engine; run symbi-jupyter setup"),
            T.TIER2: Availability(True, "", {"engine": "20.10", "runtimes": "runc, runsc"}),
            T.TIER3: Availability(
                True, "", {"vmm": "QEMU microvm · emulated (TCG)", "acceleration": KVM_ASSERTION}
            ),
        }
    )


class _Table(HTMLParser):
    """Rows of cells, each cell as (tag, style, text outside <details>, full text)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[tuple[str, str, str, str]]] = []
        self._cell: list | None = None
        self._folded = 0

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = [tag, dict(attrs).get("style", ""), "", ""]
        elif tag == "details":
            self._folded += 1

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(tuple(self._cell))
            self._cell = None
        elif tag == "details":
            self._folded -= 1

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[3] += data
            if not self._folded:
                self._cell[2] += data


def test_the_tier_ladder_is_a_left_aligned_table_with_a_header():
    markup = _ladder()._repr_html_()
    table = _Table()
    table.feed(markup)
    header, *rows = table.rows
    assert [(tag, text) for tag, _, text, _ in header] == [
        ("th", "tier"),
        ("th", "state"),
        ("th", "notes"),
    ]
    assert len(rows) == 4
    for cell in [*header, *(c for row in rows for c in row)]:
        assert "text-align:left" in cell[1]  # JupyterLab right-aligns cells otherwise
    assert all("white-space:nowrap" in row[0][1] for row in rows)  # names do not wrap
    assert sanitize(markup).dropped == []


def test_the_ladder_gives_the_gist_of_a_raw_error_and_keeps_the_full_text():
    markup = _ladder()._repr_html_()
    table = _Table()
    table.feed(markup)
    tier3 = table.rows[-1]
    shown, full = tier3[2][2], tier3[2][3]
    assert "✓ ready" in tier3[1][2]
    assert shown == (
        "vmm: QEMU microvm · emulated (TCG) · "
        "acceleration: /dev/kvm exists but a probe VM did not boot under it"
    )
    assert "Assertion" in full and "core dumped" in full  # folded under "details"
    assert table.rows[2][2][2] == "Tier1 (Docker): no engine; run symbi-jupyter setup"
    text = str(_ladder())  # symbi-jupyter doctor: everything, in full
    assert text.splitlines()[0].split() == ["tier", "state", "notes"]
    assert "kvm_init: Assertion" in text and "Aborted (core dumped)" in text
    assert "runsc" in text

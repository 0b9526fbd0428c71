"""The bench's flags, defined once for ``symbi-jupyter bench``, ``%symbi_bench`` in
IPython and the symbi kernel's ``%symbi_bench`` (as :mod:`..limit_flags` does for the
limits), what they ask for, and the command itself.

Exit status of the command: 0 the table was made, 1 no tier could be measured, 2 a
usage or configuration error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..cli_run import add_config_argument, configured_orchestrator
from ..errors import ConfigError, SymbiError
from ..tiers import SecurityTier

if TYPE_CHECKING:
    from .plan import Progress
    from .report import BenchReport

F = TypeVar("F", bound=Callable[..., Any])
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

BENCH_FLAGS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (
        ("--tiers",),
        {
            "metavar": "LIST",
            "default": None,
            "help": "Tiers to measure, comma-separated, any tier name (default: "
            "none,tier1,tier2,tier3). Throughput and memory overhead are against tier None, "
            "measured in the same run.",
        },
    ),
    (
        ("--runs",),
        {
            "type": int,
            "metavar": "N",
            "default": None,
            "help": "Samples of each start-up path and throughput rounds per tier "
            "(default 10; 3 with --quick).",
        },
    ),
    (
        ("--quick",),
        {
            "action": "store_true",
            "help": "Fewer runs and smaller workloads: under about 3 minutes on a 2-core "
            "machine with every tier (Tier3 emulated).",
        },
    ),
    (
        ("--json",),
        {
            "nargs": "?",
            "const": "-",
            "default": None,
            "metavar": "FILE",
            "help": "Also write the figures as JSON to FILE; without FILE, print the JSON "
            "instead of the table.",
        },
    ),
    (("--html",), {"metavar": "FILE", "help": "Also write the table and chart as HTML to FILE."}),
    # For tests: the throughput suite's size (1 is --quick's, 4 the full run's).
    (("--workload-scale",), {"type": float, "default": None, "help": argparse.SUPPRESS}),
)


def bench_arguments(func: F) -> F:
    """Add the bench flags to a magic, where this decorator stands among its
    ``@argument`` decorators."""
    from IPython.core.magic_arguments import argument

    for names, keywords in reversed(BENCH_FLAGS):
        func = argument(*names, **keywords)(func)
    return func


def add_bench_arguments(parser: Any) -> None:
    """Add the bench flags to an argparse parser."""
    for names, keywords in BENCH_FLAGS:
        parser.add_argument(*names, **keywords)


def parse_tiers(text: str | None) -> list[SecurityTier]:
    """``none,tier1,...`` as tiers (any tier name, any case); every tier without one."""
    if text is None:
        return list(SecurityTier)
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ConfigError("--tiers takes tier names, e.g. --tiers none,tier1")
    return sorted({SecurityTier.parse(name) for name in names})


def run_from_args(
    orch: Any,
    args: Any,
    progress: Callable[[Progress], None] | None,
    announce: Callable[[str], None] | None,
) -> BenchReport:
    """The run the flags in ``args`` ask for, through orchestrators like ``orch``."""
    from .runner import run_bench

    tiers = parse_tiers(args.tiers)
    # Said before the run, not after minutes of it.
    for path in (args.json, args.html):
        if path not in (None, "-") and not os.access(Path(path).resolve().parent, os.W_OK):
            raise ConfigError(f"cannot write {path}: its directory is missing or not writable")
    return run_bench(
        orch,
        tiers,
        quick=args.quick,
        runs=args.runs,
        scale=args.workload_scale,
        progress=progress,
        announce=announce,
    )


def report_json(report: BenchReport) -> str:
    return json.dumps(report.to_json(), indent=2)


def write_files(report: BenchReport, args: Any) -> list[str]:
    """Write what ``--json FILE`` and ``--html FILE`` ask for; what was written, in words."""
    from ..render.bench import render_bench_html
    from ..render.options import ResultDisplay

    written = []
    if args.json not in (None, "-"):
        _write(args.json, report_json(report) + "\n")
        written.append(f"JSON: {args.json}")
    if args.html:
        # A file is read later, elsewhere: always the full figures.
        body = render_bench_html(report, ResultDisplay(stable=False))
        page = (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            "<title>symbi-jupyter bench</title></head><body>"
            f"{body}</body></html>\n"
        )
        _write(args.html, page)
        written.append(f"HTML: {args.html}")
    return written


def _write(path: str, text: str) -> None:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None


class TerminalProgress:
    """The progress line on a terminal's stderr, rewritten in place; elsewhere (a log,
    a pipe) one line per step of each tier, without the counters."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.width = 0
        self.last = ""

    def __call__(self, progress: Progress) -> None:
        line = str(progress)
        if self.tty:
            self.stream.write("\r" + line.ljust(self.width))
            self.width = len(line)
        else:
            phase = f"{progress.tier} {progress.step.split(' ')[0]}"
            if phase == self.last:
                return
            self.last = phase
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()


# ---------------------------------------------------------------------- the command
def add_bench(subparsers: argparse._SubParsersAction) -> None:
    """Register ``bench`` and its flags."""
    cmd = subparsers.add_parser(
        "bench",
        help="measure the seed's performance table (startup, throughput, memory, "
        "isolation) on this host",
        description="Measure, for each tier, the figures of Symbiont's performance table "
        "on this host, through the orchestrator: start-up (cold and warm), throughput "
        "against tier None, memory overhead and isolation; print them beside the seed's "
        "claims. Tier None runs only where the policy allows native execution "
        "(SYMBIONT_ALLOW_NATIVE_EXECUTION=true, config.toml, jupyter_symbi_config.py); "
        "a tier that cannot run is a row that says why.",
    )
    add_bench_arguments(cmd)
    add_config_argument(cmd)
    cmd.set_defaults(func=bench)


def bench(args: argparse.Namespace) -> int:
    """The ``bench`` command."""
    orch = None
    progress = TerminalProgress()
    try:
        orch = configured_orchestrator(args.config)
        report = run_from_args(
            orch,
            args,
            progress,
            lambda words: print(words, file=sys.stderr, flush=True),
        )
        progress.done()
        for words in write_files(report, args):
            print(f"wrote {words}", file=sys.stderr)
    except ConfigError as exc:
        progress.done()
        print(f"symbi-jupyter bench: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SymbiError as exc:
        progress.done()
        print(f"symbi-jupyter bench: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        progress.done()
        print("symbi-jupyter bench: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if orch is not None:
            orch.close()
    if args.json == "-":
        print(report_json(report))
    else:
        from ..render.bench import render_bench_text
        from ..render.options import ResultDisplay

        print(render_bench_text(report, ResultDisplay(stable=False)))
    return EXIT_OK if any(f.available for f in report.tiers.values()) else EXIT_FAILED

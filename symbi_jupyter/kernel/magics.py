"""The symbi kernel's own magics: ``%symbi_tier``, ``%symbi_limits``,
``%symbi_session``, ``%symbi_stats``, ``%symbi_tiers`` and ``%config``, here; those
that run sandboxed code (``%%symbi``, ``%%symbi_agent``, ``%symbi_trigger``,
``%symbi_bench``) in :mod:`.run_magics`.

They run in the kernel process (they change what the following cells get), never in
the sandbox; :class:`~.kernel.SymbiKernel` hands its cells' magics to its
:class:`KernelMagics`, which reaches the kernel through :class:`~.host.KernelHost`.
"""

from __future__ import annotations

import argparse
import os
import shlex

from ..limit_flags import add_limit_arguments, limits_from_args
from ..limits import ResourceLimits, number
from ..render import TierLadder, format_bytes, format_duration, say_limit
from ..tiers import SecurityTier
from .host import (
    CELL_MAGICS,
    SESSION_LIMITS,
    KernelHost,
    KernelUsageError,
)
from .run_magics import RunMagics

#: %symbi_stats's styles (SymbiKernel.stats_style)
STATS_STYLES = ("auto", "compact", "full")
KERNEL_MAGICS = (
    "%symbi_tier",
    "%symbi_limits",
    "%symbi_session",
    "%symbi_stats",
    "%symbi_tiers",
    "%symbi_trigger",
    "%symbi_bench",
)
#: Limits %symbi_limits and %symbi_session say, when set (and the network always).
_SHOWN_LIMITS = (
    "max_memory_mb",
    "max_cpu_cores",
    "max_cpu_seconds",
    "timeout_seconds",
    "max_processes",
)


#: What ``%load_ext symbi_jupyter`` says in the kernel, as IPython for a loaded one.
LOADED = "The symbi_jupyter extension is already loaded: the symbi kernel has its magics.\n"


def _kernel_line(line: str) -> bool:
    """A line the kernel runs itself, before the cell: its own magics, ``%config``
    and loading this very extension (a notebook written for ipykernel)."""
    words = line.split()
    return bool(words) and (
        words[0].startswith("%symbi_")
        or words[0] == "%config"
        or words == ["%load_ext", "symbi_jupyter"]
    )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise KernelUsageError(f"{self.prog}: {message}\n{self.format_usage().strip()}")

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        raise KernelUsageError(message or self.format_help())


def _limits_parser() -> _Parser:
    parser = _Parser(
        prog="%symbi_limits", add_help=False, description="Set the limits of the following cells."
    )
    add_limit_arguments(parser)
    parser.add_argument("--reset", action="store_true", help="Back to the policy's ceilings.")
    return parser


class KernelMagics(RunMagics):
    """The magics' handlers, for one kernel (:class:`KernelHost`), which provides the
    session, streams and replies."""

    def __init__(self, kernel: KernelHost) -> None:
        from .config_magic import KernelConfig

        self.kernel = kernel
        self._config = KernelConfig(kernel)

    def line_magics(self, code: str) -> str:
        """Run the kernel's line magics at the top of a cell; return the rest, after
        as many blank lines (so its lines keep their numbers)."""
        lines = code.splitlines(keepends=True)
        done = 0
        while done < len(lines) and (lines[done].strip() == "" or _kernel_line(lines[done])):
            line = lines[done].strip()
            done += 1
            if line:
                self._line_magic(line)
        return "\n" * done + "".join(lines[done:])

    def _line_magic(self, line: str) -> None:
        name, _, rest = line.partition(" ")
        if name == "%config":
            self._config(rest)
            return
        if name == "%load_ext":
            self.kernel._stream("stdout", LOADED)
            return
        try:
            argv = shlex.split(rest)
        except ValueError as exc:
            raise KernelUsageError(f"{name}: {exc}") from None
        handler = {
            "%symbi_tier": self._magic_tier,
            "%symbi_limits": self._magic_limits,
            "%symbi_session": self._magic_session,
            "%symbi_stats": self._magic_stats,
            "%symbi_tiers": lambda argv: self.kernel._display(
                TierLadder(self.kernel.orchestrator.availability())
            ),
            "%symbi_trigger": self._magic_trigger,
            "%symbi_bench": self._magic_bench,
        }.get(name)
        if handler is None:
            raise KernelUsageError(
                f"unknown kernel magic {name}; the kernel has {', '.join(KERNEL_MAGICS)} "
                f"and the cell magics {', '.join(CELL_MAGICS)}"
            )
        handler(argv)

    def _magic_tier(self, argv: list[str]) -> None:
        kernel = self.kernel
        if len(argv) != 1:
            kernel._stream("stdout", f"Cells run at {kernel.current_tier.display_name}.\n")
            return
        tier = kernel._check_allowed(argv[0])
        had_state = kernel.worker is not None and kernel.worker.alive
        kernel._close_session()
        kernel.tier = tier.value
        note = (
            " The previous worker's state (variables, imports) did not move with it."
            if had_state
            else ""
        )
        pinned = os.environ.get("SYMBI_KERNEL_TIER")
        if pinned and SecurityTier.parse(pinned) is not tier:
            # Jupyter shows the kernelspec's name, which a kernel cannot change.
            note += (
                f" The kernel's name (toolbar, status bar) still says "
                f"{SecurityTier.parse(pinned).display_name}; each cell's badge shows the "
                "tier in force."
            )
        kernel._stream(
            "stdout",
            f"Cells now run at {tier.display_name}; the next cell starts a new worker.{note}\n",
        )

    def _magic_limits(self, argv: list[str]) -> None:
        kernel = self.kernel
        args = _limits_parser().parse_args(argv)
        new = ResourceLimits() if args.reset else limits_from_args(args, kernel.limits)
        # The orchestrator decides, and audits a refusal (a limit above its ceiling).
        effective = kernel.orchestrator.admit_limits(
            new, tier=kernel.current_tier.value, source="symbi kernel"
        )
        restart = any(getattr(new, k) != getattr(kernel.limits, k) for k in SESSION_LIMITS)
        kernel.limits = new
        if kernel.worker is not None:
            if restart and kernel.worker.alive:
                kernel._close_session()
                kernel._stream(
                    "stdout",
                    "These limits hold for a whole worker: the next "
                    "cell starts a new one, without the old state.\n",
                )
            elif kernel.worker is not None:
                kernel.worker.limits = effective
        kernel._stream("stdout", f"Limits of the following cells: {_limits_text(effective)}\n")

    def _magic_session(self, argv: list[str]) -> None:
        kernel = self.kernel
        choice = argv[0] if argv else "info"
        if choice in ("persistent", "fresh"):
            kernel.session_mode = choice
            kernel._close_session()
            words = (
                "one worker keeps its state between cells"
                if choice == "persistent"
                else "every cell runs in a new single-use sandbox, with no state"
            )
            kernel._stream("stdout", f"Session mode {choice}: {words}.\n")
        elif choice == "restart":
            kernel._close_session()
            kernel._stream("stdout", "The worker was stopped; the next cell starts a new one.\n")
        elif choice in ("info", "totals"):
            kernel._stream("stdout", self._session_info())
        else:
            raise KernelUsageError(
                f"%symbi_session takes persistent, fresh, restart or info, not {choice!r}"
            )

    def _session_info(self) -> str:
        kernel = self.kernel
        lines = [f"tier: {kernel.current_tier.display_name}", f"mode: {kernel.session_mode}"]
        session = kernel.worker
        if session is None or not session.alive:
            lines.append("worker: none running (the next cell starts one)")
        else:
            totals = session.totals
            lines.append(
                f"worker: running, {session.cells} cells, started in "
                f"{format_duration(session.startup_seconds)}"
            )
            if not kernel.display_options.stable:
                lines.append(
                    f"session totals: CPU {format_duration(totals['cpu_seconds'])}, "
                    f"wall {format_duration(totals['wall_seconds'])}, "
                    f"highest cell peak {format_bytes(totals['peak_memory_bytes'])}"
                )
        lines.append(f"limits: {_limits_text(kernel.orchestrator.admit_limits(kernel.limits))}")
        return "\n".join(lines) + "\n"

    def _magic_stats(self, argv: list[str]) -> None:
        """``%symbi_stats [on|off|auto|compact|full]``: without an argument, the setting."""
        kernel = self.kernel
        if len(argv) > 1 or (argv and argv[0] not in ("on", "off", *STATS_STYLES)):
            raise KernelUsageError(
                f"%symbi_stats takes on, off or a style ({', '.join(STATS_STYLES)}), "
                "or nothing to show the setting"
            )
        if argv and argv[0] in STATS_STYLES:
            kernel.stats_style = argv[0]
            kernel.show_stats = True
        elif argv:
            kernel.show_stats = argv == ["on"]
        kernel._stream("stdout", self._stats_setting())

    def _stats_setting(self) -> str:
        kernel = self.kernel
        if not kernel.show_stats:
            return "Statistics: off (%symbi_stats on shows them after each cell).\n"
        style = {
            "full": "the full badge after each cell",
            "compact": "one line after each cell",
            "auto": "one line after an uneventful cell (success, no limit reached, "
            f"under {number(kernel.compact_below_seconds)} s), the full badge after others",
        }[kernel.stats_style]
        live = (
            "on, while a cell runs"
            if kernel.live_stats and not kernel.display_options.stable
            else "off"
        )
        return f"Statistics: {kernel.stats_style}: {style}; live line: {live}.\n"


def _limits_text(limits: ResourceLimits) -> str:
    """The limits in the kernel's words: the network always, the others when set."""
    fields = (*_SHOWN_LIMITS, "network")
    return ", ".join(
        say_limit(f, getattr(limits, f), "kernel")
        for f in fields
        if getattr(limits, f) or f == "network"
    )

"""The symbi kernel's own magics: ``%symbi_tier``, ``%symbi_limits``,
``%symbi_session``, ``%symbi_stats``, ``%symbi_tiers``, ``%symbi_trigger``,
``%symbi_bench`` and the cell magics ``%%symbi`` and ``%%symbi_agent``.

They run in the kernel process (they change what the following cells get), never in
the sandbox; :class:`~.kernel.SymbiKernel` hands its cells' magics to its
:class:`KernelMagics`, which reaches the kernel through :class:`KernelHost`.
"""

from __future__ import annotations

import argparse
import os
import shlex
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import SymbiError
from ..limit_flags import add_limit_arguments, limits_from_args
from ..limits import ResourceLimits, number
from ..render import TierLadder, format_bytes, format_duration, say_limit
from ..result import ExecutionResult
from ..tiers import SecurityTier

if TYPE_CHECKING:
    from ..orchestrator import SandboxOrchestrator
    from ..render import ResultDisplay
    from ..sandboxes.worker import WorkerSession

#: %symbi_stats's styles (SymbiKernel.stats_style)
STATS_STYLES = ("auto", "compact", "full")
#: Limits that hold for a whole worker: changing one needs a new worker.
SESSION_LIMITS = (
    "max_memory_mb",
    "max_cpu_cores",
    "max_processes",
    "max_file_size_mb",
    "max_disk_mb",
    "network",
)

KERNEL_MAGICS = (
    "%symbi_tier",
    "%symbi_limits",
    "%symbi_session",
    "%symbi_stats",
    "%symbi_tiers",
    "%symbi_trigger",
    "%symbi_bench",
)
CELL_MAGICS = ("%%symbi", "%%symbi_agent")
#: Limits %symbi_limits and %symbi_session say, when set (and the network always).
_SHOWN_LIMITS = (
    "max_memory_mb",
    "max_cpu_cores",
    "max_cpu_seconds",
    "timeout_seconds",
    "max_processes",
)


class KernelUsageError(SymbiError):
    """A kernel magic was given bad arguments."""


class Interrupted(SymbiError):
    """A kernel magic's sandboxed run was interrupted (and stopped)."""


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


class KernelHost(Protocol):
    """What :class:`KernelMagics` uses of its kernel (:class:`~.kernel.SymbiKernel`):
    the settings the magics change, the worker, the streams and the replies."""

    tier: str
    session_mode: str
    show_stats: bool
    stats_style: str
    compact_below_seconds: float
    live_stats: bool
    follows_updates: bool
    limits: ResourceLimits
    worker: WorkerSession | None

    @property
    def orchestrator(self) -> SandboxOrchestrator: ...
    @property
    def display_options(self) -> ResultDisplay: ...
    @property
    def agents(self) -> dict[str, Any]: ...
    @property
    def execution_count(self) -> int: ...
    @property
    def current_tier(self) -> SecurityTier: ...

    def _stream(self, name: str, text: str) -> None: ...
    def _display(self, obj: Any) -> None: ...
    def _error(
        self, ename: str, evalue: str, traceback: list[str] | None = None
    ) -> dict[str, Any]: ...
    def _ok(self) -> dict[str, Any]: ...
    def _check_allowed(self, tier: SecurityTier | str | None) -> SecurityTier: ...
    def _close_session(self) -> None: ...


class KernelMagics:
    """The magics' handlers, for one kernel (:class:`KernelHost`), which provides the
    session, streams and replies."""

    def __init__(self, kernel: KernelHost) -> None:
        self.kernel = kernel

    def line_magics(self, code: str) -> str:
        """Run the kernel's line magics at the top of a cell; return the rest, after
        as many blank lines (so its lines keep their numbers)."""
        lines = code.splitlines(keepends=True)
        done = 0
        while done < len(lines) and (
            lines[done].strip() == "" or lines[done].lstrip().startswith("%symbi_")
        ):
            line = lines[done].strip()
            done += 1
            if line:
                self._line_magic(line)
        return "\n" * done + "".join(lines[done:])

    def _line_magic(self, line: str) -> None:
        name, _, rest = line.partition(" ")
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

    def cell_magic(self, code: str) -> dict[str, Any]:
        """A cell that starts with one of :data:`CELL_MAGICS`."""
        first, _, body = code.partition("\n")
        name, _, flags = first.partition(" ")
        if name == "%%symbi_agent":
            return self._agent_cell(flags, body)
        if name != "%%symbi":
            raise KernelUsageError(
                f"unknown cell magic {name}; the kernel has {', '.join(CELL_MAGICS)} "
                "(other cells run as Python in the sandbox)"
            )
        return self._symbi_cell(flags, body)

    def _symbi_cell(self, flags: str, body: str) -> dict[str, Any]:
        """``%%symbi [flags]``: one cell through the orchestrator, as in IPython."""
        from ..magics import LiveOutput, SymbiMagics, parse_posix, symbi_flags

        kernel = self.kernel
        args = parse_posix(SymbiMagics.symbi, flags)
        out = LiveOutput(kernel._stream)
        try:
            _, tier, limits, env = symbi_flags(args)
            result = kernel.orchestrator.execute_code(
                tier,
                body,
                env=env,
                language=args.language,
                limits=limits,
                on_output=out.write,
                first_line=2,  # the body's, below the %%symbi line
            )
        except KeyboardInterrupt as exc:
            out.flush()
            partial = exc.args[0] if exc.args else None
            if isinstance(partial, ExecutionResult) and not args.quiet:
                kernel._display(partial)
            return kernel._error("Interrupted", "the sandboxed run was stopped")
        except SymbiError as exc:
            if not args.no_raise_error:
                raise
            out.flush()
            kernel._stream("stderr", f"{type(exc).__name__}: {exc}\n")
            return kernel._ok()
        finally:
            out.flush()
        if not args.quiet:
            kernel._display(result)
        if result.success:
            return kernel._ok()
        return {
            "status": "error",
            "execution_count": kernel.execution_count,
            "ename": "SandboxedCodeFailed",
            "evalue": str(result),
            "traceback": [],
        }

    # ------------------------------------------------------------------ agents
    def _agent_cell(self, flags: str, body: str) -> dict[str, Any]:
        """``%%symbi_agent``: define agents, as in IPython; their actions run through
        this kernel's orchestrator, under its operator's policy."""
        from ..agent_magics import AgentMagics, parse_magic_line
        from ..agents import load

        kernel = self.kernel
        args = parse_magic_line(AgentMagics.symbi_agent, flags)
        _no_out(args, "%%symbi_agent")
        agents = load(body, orchestrator=kernel.orchestrator, directory=os.getcwd())
        for agent in agents:
            kernel.agents[agent.name] = agent
        if not args.quiet:
            for agent in agents:
                kernel._display(agent)
        return kernel._ok()

    def _magic_trigger(self, argv: list[str]) -> None:
        """``%symbi_trigger AGENT TRIGGER [--payload JSON] [limit flags]``, as in IPython."""
        from ..agent_magics import AgentMagics, find_agent, parse_payload
        from ..agents import Emitted
        from ..magics import LiveOutput

        kernel = self.kernel
        args = AgentMagics.symbi_trigger.parser.parse_args(argv)
        _no_out(args, "%symbi_trigger")
        agent = find_agent(kernel.agents, args.agent)

        def shown(item: Any) -> None:
            if isinstance(item, ExecutionResult):
                if kernel.show_stats and not args.quiet:
                    kernel._display(item)
            elif isinstance(item, Emitted):
                kernel._display(item)

        out = LiveOutput(kernel._stream)
        try:
            agent.trigger(
                args.trigger,
                parse_payload(args.payload),
                on_output=out.write,
                on_result=shown,
                limits=limits_from_args(args),
            )
        except KeyboardInterrupt:
            raise Interrupted("the sandboxed run was stopped") from None
        finally:
            out.flush()

    def _magic_bench(self, argv: list[str]) -> None:
        """``%symbi_bench [flags]``, as in IPython: the table through the kernel's
        orchestrator, under its operator's policy."""
        from ..bench.cli import report_json, run_from_args, write_files
        from ..magics import SymbiMagics

        kernel = self.kernel
        args = SymbiMagics.symbi_bench.parser.parse_args(argv)
        _no_out(args, "%symbi_bench")
        stable = kernel.display_options.stable
        progress = None if stable or not kernel.follows_updates else _KernelProgress(kernel)
        try:
            report = run_from_args(
                kernel.orchestrator,
                args,
                progress,
                None if stable else lambda words: kernel._stream("stdout", words + "\n"),
            )
        except KeyboardInterrupt:
            raise Interrupted("the bench was interrupted; its sandboxes were removed") from None
        finally:
            if progress is not None:
                progress.done()
        for words in write_files(report, args):
            kernel._stream("stdout", f"wrote {words}\n")
        if args.json == "-":
            kernel._stream("stdout", report_json(report) + "\n")
        else:
            kernel._display(report)


class _KernelProgress:
    """``%symbi_bench``'s progress line in the symbi kernel: one display, updated in
    place, emptied at the end."""

    def __init__(self, kernel: Any) -> None:
        import uuid

        self.kernel = kernel
        self.display_id = uuid.uuid4().hex
        self.shown = False

    def __call__(self, progress: Any) -> None:
        self._send("update_display_data" if self.shown else "display_data", str(progress))
        self.shown = True

    def done(self) -> None:
        if self.shown:
            self._send("update_display_data", "")

    def _send(self, kind: str, text: str) -> None:
        self.kernel.send_response(
            self.kernel.iopub_socket,
            kind,
            {
                "data": {"text/plain": text},
                "metadata": {},
                "transient": {"display_id": self.display_id},
            },
        )


def _no_out(args: Any, magic: str) -> None:
    if args.out:
        raise KernelUsageError(
            f"{magic} -o: the symbi kernel's variables live in the sandbox, which the "
            "kernel does not write to; use the displayed results"
        )


def _limits_text(limits: ResourceLimits) -> str:
    """The limits in the kernel's words: the network always, the others when set."""
    fields = (*_SHOWN_LIMITS, "network")
    return ", ".join(
        say_limit(f, getattr(limits, f), "kernel")
        for f in fields
        if getattr(limits, f) or f == "network"
    )

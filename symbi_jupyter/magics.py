"""IPython magics: ``%%symbi`` runs a cell in a sandbox, ``%symbi_tiers`` shows the
ladder and what this host can run, ``%symbi_bench`` measures the seed's performance
table on this host."""

from __future__ import annotations

import codecs
import shlex
import sys
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display
from traitlets import Bool, Instance

from .bench.cli import bench_arguments
from .errors import ConfigError, Interrupted, SymbiError
from .limit_flags import limit_arguments, limits_from_args
from .limits import ResourceLimits
from .orchestrator import SandboxOrchestrator, default_orchestrator
from .render import (
    Comparison,
    LiveLine,
    LiveUpdates,
    ResultDisplay,
    TierLadder,
    follows_display_updates,
)
from .result import ExecutionResult
from .tiers import SecurityTier

#: ``--no-raise-error`` of ``%%symbi`` and ``%symbi_trigger``.
no_raise_error_argument = argument(
    "--no-raise-error",
    dest="no_raise_error",
    action="store_true",
    help="Show a refusal (PolicyViolation, TierUnavailable, ConfigError) on stderr "
    "instead of raising it, as %%%%script --no-raise-error shows a failure: the cell "
    "then succeeds (a notebook that shows a refusal runs clean under papermill).",
)


def show_refusal(exc: SymbiError) -> None:
    """A refusal as the cell's stderr: the one line it shows when raised."""
    print(*exc._render_traceback_(), sep="\n", file=sys.stderr)


@magics_class
class SymbiMagics(Magics):
    """Magics that send notebook code through a :class:`SandboxOrchestrator`."""

    stream_output = Bool(
        True,
        config=True,
        help="Show the code's output while it runs (else only when it ends).",
    )
    show_stats = Bool(
        True, config=True, help="Display the result's statistics after each %%symbi cell."
    )
    live_stats = Bool(
        True,
        config=True,
        help="""While a cell runs (from its first usage sample on), show a line with the
        elapsed time, memory now and CPU %, updated in place and replaced in place by
        the final statistics. Off under the stable rendering (ResultDisplay.stable), because
        nbval does not follow display updates: what it compares and what a saved
        notebook holds must not differ.""",
    )
    orchestrator = Instance(SandboxOrchestrator)

    def __init__(
        self, shell: Any = None, orchestrator: SandboxOrchestrator | None = None, **kwargs: Any
    ) -> None:
        super().__init__(shell=shell, **kwargs)
        self.orchestrator = orchestrator or default_orchestrator()
        self._register(self, self.orchestrator, ResultDisplay.instance())

    def _register(self, *configurables: Any) -> None:
        """Put objects in shell.configurables so %config reaches them."""
        if self.shell is None:
            return
        for obj in configurables:
            if all(obj is not c for c in self.shell.configurables):
                self.shell.configurables.append(obj)

    @magic_arguments()
    @argument(
        "-t",
        "--tier",
        "--sandbox-tier",
        dest="tier",
        default=None,
        help="Security tier: none/native/tier0, tier1/docker, tier2/gvisor/runsc, "
        "tier3/firecracker/microvm (default: SandboxOrchestrator.default_sandbox_tier).",
    )
    @argument("--native", action="store_true", help="Same as --tier none.")
    @limit_arguments
    @argument(
        "--exec",
        dest="language",
        default=None,
        metavar="INTERPRETER",
        help="Interpreter: python3, python, bash, sh or node (default python3).",
    )
    @argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Environment variable for the code (repeatable).",
    )
    @argument("-o", "--out", metavar="NAME", help="Store the ExecutionResult in NAME.")
    @argument("--quiet", action="store_true", help="Do not display the statistics.")
    @argument("--keep-workdir", action="store_true", help="Keep the run directory.")
    @no_raise_error_argument
    @cell_magic
    def symbi(self, line: str, cell: str) -> None:
        """Run the cell's code in a sandbox at a Symbiont security tier.

        The output streams while the code runs; the statistics (exit status, what
        stopped it, wall time, CPU, peak memory of the limit) follow, also after an
        interrupt, which ends the cell with one line (:class:`Interrupted`).
        """
        args = parse_posix(self.symbi, line)
        writers = LiveOutput() if self.stream_output else None
        show = self.show_stats and not args.quiet
        live = (
            _LiveStats()
            if (
                show
                and self.live_stats
                and _front_end_follows_updates(self.shell)
                and not ResultDisplay.instance().stable
            )
            else None
        )
        try:
            _, tier, limits, env = symbi_flags(args)
            result = self.orchestrator.execute_code(
                tier,
                cell,
                env=env,
                language=args.language,
                limits=limits,
                keep_workdir=args.keep_workdir,
                on_output=writers.write if writers else None,
                on_sample=live.update if live else None,
                on_admitted=live.admitted if live else None,
                first_line=2,  # the body's, below the %%symbi line
            )
        except KeyboardInterrupt as exc:
            partial = exc.args[0] if exc.args else None
            if not isinstance(partial, ExecutionResult):
                partial = None
            if partial is not None:
                self._finish(partial, args, writers, live, show)
            elif live:
                live.finish(None)
            # One line, no traceback of ours: the output above says where it stopped.
            raise Interrupted("the sandboxed run was stopped", partial) from None
        except SymbiError as exc:
            if live:
                live.finish(None)
            if not args.no_raise_error:
                raise
            show_refusal(exc)
            return
        except BaseException:
            if live:
                live.finish(None)
            raise
        finally:
            if writers:
                writers.flush()
            # Sandboxes are made on first use; %config must reach them too.
            self._register(*self.orchestrator.active_sandboxes())
        self._finish(result, args, writers, live, show)

    def _finish(
        self,
        result: ExecutionResult,
        args: Any,
        writers: LiveOutput | None,
        live: _LiveStats | None,
        show: bool,
    ) -> None:
        """The end of a run, interrupted or not: its output (if not streamed), its
        result stored (``-o``) and its statistics, last."""
        if writers is None:
            print_output(result)
        else:
            writers.flush()
            print_truncation_markers(result)
        if args.out:
            user_ns(self)[args.out] = result
        if show and not (live and live.finish(result)):
            display(result)

    @line_magic
    def symbi_compare(self, line: str = "") -> Comparison:
        """``%symbi_compare r1 r2 ...``: stored results (``-o NAME``) side by side."""
        names = line.split()
        if not names:
            raise UsageError("%symbi_compare NAME [NAME ...]: names stored with -o NAME")
        results = []
        for name in names:
            value = user_ns(self).get(name)
            if not isinstance(value, ExecutionResult):
                raise UsageError(f"%symbi_compare: {name} is not an ExecutionResult (-o {name})")
            results.append(value)
        return Comparison(results, names)

    @line_magic
    def symbi_tiers(self, line: str = "") -> TierLadder:
        """Show the tier ladder with this host's availability."""
        return TierLadder(self.orchestrator.availability())

    @magic_arguments()
    @bench_arguments
    @argument("-o", "--out", metavar="NAME", help="Store the BenchReport in NAME.")
    @line_magic
    def symbi_bench(self, line: str = "") -> Any:
        """Measure the seed's performance table on this host: start-up (cold and
        warm), throughput against tier None, memory overhead and isolation per tier,
        beside Symbiont's claims. Runs under this orchestrator's policy (tier None
        only where native execution is allowed); a tier that cannot run is a row
        that says why. The full run says how long it will take before it starts.
        """
        from .bench.cli import report_json, run_from_args, write_files

        args = parse_posix(self.symbi_bench, line)
        stable = ResultDisplay.instance().stable
        progress = None
        if not stable and (
            getattr(self.shell, "kernel", None) is None or _front_end_follows_updates(self.shell)
        ):
            progress = _BenchProgress(self.shell)
        try:
            report = run_from_args(
                self.orchestrator,
                args,
                progress,
                # Under the stable rendering nothing that varies may be printed.
                None if stable else print,
            )
        finally:
            if progress is not None:
                progress.done()
        for words in write_files(report, args):
            print(f"wrote {words}")
        if args.out:
            user_ns(self)[args.out] = report
        if args.json == "-":
            print(report_json(report))
            return None
        return report


def user_ns(magics: Magics) -> dict[str, Any]:
    """The namespace of the shell ``magics`` run in (as magics, they run in one)."""
    assert magics.shell is not None
    return magics.shell.user_ns


def parse_symbi_flags(
    magic: Any, line: str
) -> tuple[Any, SecurityTier | str | None, ResourceLimits, dict[str, str]]:
    """``%%symbi`` flags as (parsed arguments, tier, limits, env); the symbi kernel
    parses its own ``%%symbi`` cells with this too."""
    return symbi_flags(parse_posix(magic, line))


def symbi_flags(
    args: Any,
) -> tuple[Any, SecurityTier | str | None, ResourceLimits, dict[str, str]]:
    """Parsed ``%%symbi`` arguments as (arguments, tier, limits, env); ConfigError for
    flags that contradict one another or bad values."""
    if args.native and args.tier and SecurityTier.parse(args.tier) is not SecurityTier.NONE:
        raise ConfigError(f"--native contradicts --tier {args.tier}")
    tier = SecurityTier.NONE if args.native else args.tier
    return args, tier, limits_from_args(args), _parse_env(args.env)


def parse_posix(magic: Any, line: str) -> Any:
    """Parse flags with shell quoting (``--env "B=x y"`` gives ``B=x y``), unlike
    IPython's default splitting which keeps the quotes."""
    try:
        argv = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"%%symbi: {exc}") from None
    return magic.parser.parse_args(argv)


def _parse_env(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env takes KEY=VALUE, not {pair!r}")
        env[key] = value
    return env


class LiveOutput:
    """Write streamed chunks to ``write(stream, text)`` (by default sys.stdout and
    sys.stderr), decoding UTF-8 across chunk boundaries so a character split between
    two reads is not mangled."""

    def __init__(self, write: Callable[[str, str], None] | None = None) -> None:
        self._write = write or _write_to_sys
        self._decoders = {
            name: codecs.getincrementaldecoder("utf-8")(errors="replace")
            for name in ("stdout", "stderr")
        }

    def write(self, stream: str, chunk: bytes) -> None:
        text = self._decoders[stream].decode(chunk)
        if text:
            self._write(stream, text)

    def flush(self) -> None:
        """Write what an unfinished character left (as replacement characters)."""
        for stream, decoder in self._decoders.items():
            tail = decoder.decode(b"", final=True)
            if tail:
                self._write(stream, tail)


def _write_to_sys(stream: str, text: str) -> None:
    target = sys.stdout if stream == "stdout" else sys.stderr
    target.write(text)
    target.flush()


def _front_end_follows_updates(shell: Any) -> bool:
    """In a kernel, whether the cell's front end keeps a display current (a terminal
    IPython has none: it would print every update)."""
    kernel = getattr(shell, "kernel", None)
    if kernel is None:
        return False
    try:
        parent = kernel.get_parent()
    except Exception:  # an ipykernel without get_parent (before 6.21)
        parent = getattr(shell, "parent_header", None) or {}
    return follows_display_updates(parent.get("metadata"))


class _LiveStats(LiveUpdates):
    """The live line of one cell: displayed at the first usage sample (a cell that
    ends sooner never shows one), updated in place, and replaced in place by the final
    result, so a saved notebook keeps no empty output; output printed after the line
    appeared stays below it. The line has HTML only: a front end that does not follow
    display updates (``jupyter console``) would otherwise print its first state and
    leave it there, stale."""

    def __init__(self) -> None:
        # The tier and limits shown are the orchestrator's decision, known once it has
        # admitted the cell (before any sample): see admitted().
        super().__init__(None, None)  # type: ignore[arg-type]
        self.handle: Any = None

    def admitted(self, tier: SecurityTier, limits: ResourceLimits) -> None:
        self.tier, self.limits = tier, limits

    def _show(self, line: LiveLine, first: bool) -> None:
        data = {"text/html": line._repr_html_()}
        if first:
            self.handle = display(data, raw=True, display_id=True)
        else:
            self.handle.update(data, raw=True)

    def finish(self, result: ExecutionResult | None) -> bool:
        """Replace the live line by ``result`` (or, with none, by its last state,
        marked ended); True if it was shown."""
        if self.closed:
            return self.shown
        if not self.close():
            return False
        if result is None:
            self.handle.update(LiveLine(self.tier, self.limits, self.last_sample, ended=True))
        else:
            self.handle.update(result)
        return True


class _BenchProgress:
    """``%symbi_bench``'s progress line: in a kernel's front end one display, updated
    in place and emptied at the end; in a terminal, stderr rewritten in place."""

    def __init__(self, shell: Any) -> None:
        from .bench.cli import TerminalProgress

        self.handle: Any = None
        self.terminal = None if getattr(shell, "kernel", None) else TerminalProgress()

    def __call__(self, progress: Any) -> None:
        if self.terminal is not None:
            self.terminal(progress)
        elif self.handle is None:
            self.handle = display({"text/plain": str(progress)}, raw=True, display_id=True)
        else:
            self.handle.update({"text/plain": str(progress)}, raw=True)

    def done(self) -> None:
        if self.terminal is not None:
            self.terminal.done()
        elif self.handle is not None:
            self.handle.update({"text/plain": ""}, raw=True)


def print_truncation_markers(result: ExecutionResult) -> None:
    """Streaming showed only the kept bytes; say where a stream was cut."""
    for truncated, text, target in (
        (result.stdout_truncated, result.stdout, sys.stdout),
        (result.stderr_truncated, result.stderr, sys.stderr),
    ):
        if truncated:
            marker = text[text.rfind("\n... [output truncated") :]
            target.write(marker)


def print_output(result: ExecutionResult) -> None:
    if result.stdout:
        sys.stdout.write(result.stdout)
    if result.stderr:
        sys.stderr.write(result.stderr)

"""The symbi kernel's magics that run something through its orchestrator: the cell
magics ``%%symbi`` and ``%%symbi_agent``, ``%symbi_trigger`` and ``%symbi_bench``.

Like the others they run in the kernel process, as in IPython; a result ``-o`` asks
for goes into the session's namespace, where the kernel's variables live.
"""

from __future__ import annotations

import json
import keyword
import os
from typing import Any

from ..errors import SymbiError
from ..limit_flags import limits_from_args
from ..result import ExecutionResult
from .host import CELL_MAGICS, Interrupted, KernelHost, KernelUsageError

#: What ``-o NAME`` runs in the session: the result as data, in a function so that
#: nothing but NAME is left in the namespace.
STORE = """\
def __symbi_store(text):
    import json, types

    class ExecutionResult(types.SimpleNamespace):
        \"\"\"The figures of a %%symbi run (symbi_jupyter's ExecutionResult).\"\"\"

        def __repr__(self):
            return self.summary

    data = json.loads(text)
    data["limits"] = types.SimpleNamespace(**data["limits"])
    return ExecutionResult(**data)
{name} = __symbi_store({data})
del __symbi_store
"""


class RunMagics:
    """The handlers of the magics that run sandboxed code, for :class:`.magics.
    KernelMagics`."""

    kernel: KernelHost

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
        if args.out:
            _check_out(args.out, kernel.session_mode)
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
            if isinstance(partial, ExecutionResult):
                if not args.quiet:
                    kernel._display(partial)
                if args.out:
                    self._store(args.out, partial)
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
        if args.out:
            self._store(args.out, result)
        # As in IPython: code that failed or met a limit is a result, not an error.
        return kernel._ok()

    def _store(self, name: str, result: ExecutionResult) -> None:
        """``-o NAME``: the result's fields (``NAME.exit_code``, ``NAME.limits.
        max_memory_mb``, ``NAME.enforcement[...]``) as plain data in the session's
        namespace, where the kernel's variables live; it shows as the result does."""
        data = json.dumps({**result.to_dict(), "summary": str(result)})
        code = STORE.format(name=name, data=repr(data))
        outcome = self.kernel._open_session().execute(code, lambda message: None, silent=True)
        if outcome.status != "ok":
            raise KernelUsageError(
                f"%%symbi -o {name}: the session did not take the result "
                f"({outcome.reply.get('evalue') or outcome.session_lost})"
            )

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


def _check_out(name: str, session_mode: str) -> None:
    if not name.isidentifier() or keyword.iskeyword(name):
        raise KernelUsageError(f"%%symbi -o: {name!r} is not a Python name")
    if session_mode == "fresh":
        raise KernelUsageError(
            "%%symbi -o: in the fresh session mode no variable outlives its cell; "
            "%symbi_session persistent keeps them"
        )


def _no_out(args: Any, magic: str) -> None:
    if args.out:
        raise KernelUsageError(
            f"{magic} -o: the symbi kernel's variables live in the sandbox, which the "
            "kernel does not write to; use the displayed results"
        )

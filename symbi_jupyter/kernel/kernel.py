"""``SymbiKernel``: a Jupyter kernel whose every cell runs in a sandbox.

The kernel process only relays: cells go to a
:class:`~symbi_jupyter.sandboxes.worker.WorkerSession` (one long-lived worker per
notebook, or a fresh one per cell), whose messages come back as ipykernel's would,
followed by the cell's statistics. The kernel itself survives whatever happens in the
sandbox.
"""

from __future__ import annotations

import math
import os
import platform
import re
import socket
import time
from typing import Any

from ipykernel.kernelbase import Kernel
from IPython.core.error import UsageError
from IPython.core.inputtransformer2 import TransformerManager
from traitlets import Bool, Enum, Float, Instance, Unicode

from .. import __version__
from ..errors import SymbiError
from ..limits import ResourceLimits
from ..orchestrator import SandboxOrchestrator
from ..render import ResultDisplay, follows_display_updates, render_mimebundle, uneventful
from ..result import ExecutionResult
from ..sandboxes.worker import CellOutcome, WorkerSession
from ..tiers import SecurityTier
from .live import KernelLiveLine
from .magics import KernelMagics
from .transform import transform_cell

#: The most completions passed on from the worker.
MAX_MATCHES = 1000
#: A cell that is only this leaves the kernel, as ``exit``/``quit`` do in ipykernel.
EXIT_CELL = re.compile(r"\s*(exit|quit)\s*(\(\s*(keep_kernel\s*=\s*(True|False))?\s*\))?\s*")

#: The kernel's policy is its operator's: %config is not there to switch it from a cell.
NATIVE_HOWTO = (
    "native execution (tier None) is switched off for this kernel. It is the policy of "
    "whoever starts the kernel, not of the notebook: install the kernel with "
    "`symbi-jupyter install-kernel --tier none --allow-native`, or start it with "
    "SYMBIONT_ALLOW_NATIVE_EXECUTION=true, or set "
    "c.SandboxOrchestrator.allow_native_execution = True in jupyter_symbi_config.py, "
    "or [native_execution] enabled = true in Symbiont's config.toml"
)


class SymbiKernel(Kernel):
    """Python, with every cell in a Symbiont-tier sandbox."""

    implementation = "symbi_jupyter"
    implementation_version = __version__
    language_info = {
        "name": "python",
        "version": platform.python_version(),
        "mimetype": "text/x-python",
        "file_extension": ".py",
        "pygments_lexer": "ipython3",
        "codemirror_mode": {"name": "ipython", "version": 3},
        "nbconvert_exporter": "python",
    }
    banner = (
        "Python (symbi sandbox): every cell runs in a sandbox at a Symbiont security "
        "tier.\nKernel magics: %symbi_tier, %symbi_limits, %symbi_session, %symbi_stats, "
        "%symbi_tiers, %symbi_trigger, %symbi_bench, %%symbi, %%symbi_agent."
    )
    help_links = [{"text": "symbi-jupyter", "url": "https://github.com/symbi-jupyter"}]

    tier = Unicode(
        "",
        config=True,
        help="""Tier the cells run at ('' = SandboxOrchestrator.default_sandbox_tier).
        Any tier name: none, tier1/docker, tier2/gvisor, tier3/microvm. Also set by
        the environment variable SYMBI_KERNEL_TIER (what install-kernel --tier writes).""",
    )
    session_mode = Enum(
        ["persistent", "fresh"],
        "persistent",
        config=True,
        help="""'persistent': one long-lived worker per notebook, so variables, imports
        and functions carry over between cells. 'fresh': every cell in a new
        single-use sandbox (no state, strongest separation). Switch with
        %symbi_session.""",
    )
    show_stats = Bool(True, config=True, help="Display each cell's statistics after its output.")
    stats_style = Enum(
        ["auto", "compact", "full"],
        "auto",
        config=True,
        help="""The statistics of a cell: 'full', the badge with usage bars, limits and
        the memory sparkline; 'compact', one line (tier, status, wall, CPU, peak memory;
        what is not enforced still said); 'auto', compact for an uneventful cell and full
        for any other. Uneventful: it succeeded (exit 0, nothing stopped it), reached no
        limit, lost no output, and ran under compact_below_seconds of wall time (under
        the stable rendering, which leaves the times out, the time does not count).""",
    )
    compact_below_seconds = Float(
        1.0,
        config=True,
        help="""With stats_style 'auto': the wall time under which an uneventful cell
        gets the one-line badge.""",
    )
    live_stats = Bool(
        True,
        config=True,
        help="""While a cell runs (from its first usage sample on, after
        SandboxOrchestrator.sample_interval_seconds), show a line with the elapsed
        time, memory now and CPU %, updated in place and replaced in place by the
        cell's statistics. Only with show_stats, never under the stable rendering
        (ResultDisplay.stable), which nbval compares, and only for a front end that
        keeps displays current (its requests name their cell, as notebook front ends'
        do); ``jupyter console`` and papermill get the statistics at the end.""",
    )
    interrupt_grace_seconds = Float(
        3.0,
        config=True,
        help="""Seconds an interrupted cell has to stop before its worker is killed
        (the session state is then lost).""",
    )
    orchestrator = Instance(SandboxOrchestrator)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.orchestrator = SandboxOrchestrator(parent=self, native_refusal=NATIVE_HOWTO)
        self.display_options = ResultDisplay.instance()
        if not self.tier and os.environ.get("SYMBI_KERNEL_TIER"):
            self.tier = os.environ["SYMBI_KERNEL_TIER"]
        self.limits = ResourceLimits()
        self.worker: WorkerSession | None = None
        self.history: list[tuple[int, int, str]] = []
        self._cpu_sample: tuple[float, float] | None = None
        #: whether the running cell's front end keeps displays current (live line)
        self.follows_updates = False
        #: agents defined with %%symbi_agent, by name
        self.agents: dict[str, Any] = {}
        #: the handlers of the kernel magics (%symbi_tier, %%symbi, ...)
        self._magics = KernelMagics(self)

    # ------------------------------------------------------------------ helpers
    @property
    def current_tier(self) -> SecurityTier:
        return SecurityTier.parse(self.tier or self.orchestrator.default_sandbox_tier)

    def _stream(self, name: str, text: str) -> None:
        self.send_response(self.iopub_socket, "stream", {"name": name, "text": text})

    def _display(self, obj: Any) -> None:
        if isinstance(obj, ExecutionResult):
            data = obj._repr_mimebundle_()
        else:
            data = {"text/plain": str(obj)}
            if hasattr(obj, "_repr_html_"):
                data["text/html"] = obj._repr_html_()
        self.send_response(
            self.iopub_socket, "display_data", {"data": data, "metadata": {}, "transient": {}}
        )

    def stats_bundle(self, result: ExecutionResult) -> dict[str, Any]:
        """A cell's statistics, one line or the full badge (:attr:`stats_style`)."""
        compact = self.stats_style == "compact"
        if self.stats_style == "auto":
            stable = self.display_options.stable
            compact = uneventful(result, math.inf if stable else self.compact_below_seconds)
        return render_mimebundle(result, self.display_options, compact=compact)

    def _error(self, ename: str, evalue: str, traceback: list[str] | None = None) -> dict[str, Any]:
        content = {
            "ename": ename,
            "evalue": evalue,
            "traceback": traceback if traceback is not None else [f"{ename}: {evalue}"],
        }
        self.send_response(self.iopub_socket, "error", content)
        return {"status": "error", "execution_count": self.execution_count, **content}

    def _ok(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "execution_count": self.execution_count,
            "payload": [],
            "user_expressions": {},
        }

    def _check_allowed(self, tier: SecurityTier | str | None) -> SecurityTier:
        """The tier named (None: the default) as the orchestrator admits it; its
        refusal, an unknown name included, is audited."""
        return self.orchestrator.admit_tier(tier, source="symbi kernel")

    def _open_session(self) -> WorkerSession:
        if self.worker is not None and self.worker.alive:
            return self.worker
        if self.worker is not None:
            # Lost while no cell ran (its idle CPU budget, a protocol violation).
            lost = self.worker.lost or "the worker ended"
            self.worker.close()
            self.worker = None
            self._stream("stderr", f"symbi: {lost}. A new worker starts for this cell.\n")
        tier = self._check_allowed(self.tier or None)
        self.worker = self.orchestrator.open_session(
            tier,
            self.limits,
            interrupt_grace_seconds=self.interrupt_grace_seconds,
        )
        return self.worker

    def _close_session(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None

    # ------------------------------------------------------------------ execute
    def do_execute(  # type: ignore[override]
        self,
        code: str,
        silent: bool,
        store_history: bool = True,
        user_expressions: dict | None = None,
        allow_stdin: bool = False,
        *,
        cell_meta: dict | None = None,
        cell_id: str | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        self.follows_updates = follows_display_updates(self.get_parent().get("metadata"))
        if store_history:
            self.history.append((0, self.execution_count, code))
        leaving = EXIT_CELL.fullmatch(code)
        if leaving:
            return self._ask_exit(keep_kernel=leaving.group(4) == "True")
        try:
            if code.lstrip().startswith("%%symbi"):
                return self._magics.cell_magic(code.lstrip())
            code = self._magics.line_magics(code)
            if not code.strip():
                return self._ok()
            return self._run_cell(code, silent)
        except (SymbiError, UsageError) as exc:
            return self._error(type(exc).__name__, str(exc))
        except Exception as exc:  # a bug of ours must not take the kernel down
            self.log.exception("symbi kernel: the cell failed in the kernel itself")
            self._close_session()
            return self._error("SymbiKernelError", f"{exc!r}; the worker was stopped")

    def _ask_exit(self, keep_kernel: bool) -> dict[str, Any]:
        """``exit``, ``quit``, ``exit()``: as ipykernel's ask_exit, the ``ask_exit``
        payload (a console then quits) and, unless ``keep_kernel=True``, the kernel
        ends: its worker and sandboxes first, then its loop."""
        if not keep_kernel:
            self._close_session()
            self.orchestrator.close()
            loop = self.io_loop
            loop.add_callback(lambda: loop.call_later(0.1, loop.stop))
        reply = self._ok()
        reply["payload"] = [{"source": "ask_exit", "keepkernel": keep_kernel}]
        return reply

    def _run_cell(self, code: str, silent: bool) -> dict[str, Any]:
        fresh = self.session_mode == "fresh"
        if fresh:
            self._close_session()
        session = self._open_session()
        count = self.execution_count

        def relay(message: dict[str, Any]) -> None:
            kind = message.get("type")
            if silent and kind != "error":
                return
            content = {k: v for k, v in message.items() if k not in ("id", "type")}
            if kind == "execute_result":
                content["execution_count"] = count
            if kind in (
                "stream",
                "display_data",
                "update_display_data",
                "clear_output",
                "execute_result",
                "error",
            ):
                self.send_response(self.iopub_socket, kind, content)

        # Samples for the badge's sparkline whenever there is a badge; the live line
        # from them only where a front end may show it.
        live = None
        interval = self.orchestrator.sample_interval_seconds
        if self.show_stats and not silent and interval > 0:
            show = self.live_stats and self.follows_updates and not self.display_options.stable
            live = KernelLiveLine(self, session.tier, session.limits, interval, show)
            live.start(session.handle.usage)
        samples = None
        runs = transform_cell(code)  # IPython's syntax, as plain Python for the sandbox
        try:
            outcome = session.execute(
                runs,
                relay,
                cell_name=f"<cell-{count}>",
                silent=silent,
                source=None if runs == code else code,
            )
        finally:
            if live is not None:
                samples = live.stop()
            if fresh:
                self._close_session()
        if outcome.result.memory_samples is None:
            outcome.result.memory_samples = samples
        return self._reply(outcome, silent, live)

    def _reply(
        self, outcome: CellOutcome, silent: bool, live: KernelLiveLine | None = None
    ) -> dict[str, Any]:
        if outcome.session_lost:
            self._stream(
                "stderr", f"symbi: {outcome.session_lost}. The next cell starts a new worker.\n"
            )
            self.worker = None
        if self.show_stats and not silent:
            bundle = self.stats_bundle(outcome.result)
            if live is None or not live.finish(outcome.result, bundle):
                self.send_response(
                    self.iopub_socket,
                    "display_data",
                    {"data": bundle, "metadata": {}, "transient": {}},
                )
        reply = outcome.reply
        if outcome.status == "ok":
            return {**self._ok(), "payload": _pager_payload(reply.get("payload"))}
        return {
            "status": "error",
            "execution_count": self.execution_count,
            "ename": reply.get("ename", "Error"),
            "evalue": reply.get("evalue", ""),
            "traceback": reply.get("traceback", []),
        }

    # ------------------------------------------------------------------ introspection
    def do_complete(self, code: str, cursor_pos: int) -> dict[str, Any]:  # type: ignore[override]
        """Completion from the sandboxed namespace, as ipykernel replies: the matches,
        the span they replace, and ``_jupyter_types_experimental`` (JupyterLab's
        completer reads the reply through it; without it, Tab opened a popup of the
        editor's own words instead of completing). The worker's reply is checked, not
        passed on: it is as untrusted as the cells."""
        cursor_pos = len(code) if cursor_pos is None else min(max(cursor_pos, 0), len(code))
        session = self._introspection_session()
        reply = session.request("complete", code=code, cursor_pos=cursor_pos) if session else {}
        matches, types = [], []
        if reply.get("status") == "ok" and isinstance(reply.get("matches"), list):
            found = (reply.get("metadata") or {}).get("symbi_types")
            for i, match in enumerate(reply["matches"][:MAX_MATCHES]):
                if isinstance(match, str) and 0 < len(match) <= 1000:
                    matches.append(match)
                    kind = found[i] if isinstance(found, list) and i < len(found) else None
                    types.append(kind if isinstance(kind, str) and len(kind) <= 20 else "<unknown>")
        start, end = reply.get("cursor_start"), reply.get("cursor_end")
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= len(code)):
            start = end = cursor_pos
        return {
            "status": "ok",
            "matches": matches,
            "cursor_start": start,
            "cursor_end": end,
            "metadata": {
                "_jupyter_types_experimental": [
                    {"start": start, "end": end, "text": m, "type": t, "signature": ""}
                    for m, t in zip(matches, types, strict=True)
                ]
            },
        }

    def do_inspect(  # type: ignore[override]
        self, code: str, cursor_pos: int, detail_level: int = 0, omit_sections: Any = ()
    ) -> dict[str, Any]:
        session = self._introspection_session()
        if session is None:
            return {"status": "ok", "found": False, "data": {}, "metadata": {}}
        reply = session.request(
            "inspect", code=code, cursor_pos=cursor_pos, detail_level=detail_level
        )
        if reply.get("status") != "ok":
            return {"status": "ok", "found": False, "data": {}, "metadata": {}}
        return reply

    def _introspection_session(self) -> WorkerSession | None:
        """The live namespace to answer from; in persistent mode one is started."""
        if self.worker is not None and self.worker.alive:
            return self.worker
        if self.session_mode == "fresh":
            return None
        try:
            return self._open_session()
        except SymbiError:
            return None

    def do_is_complete(self, code: str) -> dict[str, Any]:  # type: ignore[override]
        # Answered here, from the code alone, with IPython's rules (as ipykernel does):
        # no sandbox needs to start for it.
        if code.lstrip().startswith(("%%", "%symbi")):
            return {"status": "complete"}
        status, indent = TransformerManager().check_complete(code)
        reply: dict[str, Any] = {"status": status}
        if status == "incomplete":
            reply["indent"] = " " * (indent or 0)
        return reply

    def do_history(  # type: ignore[override]
        self,
        hist_access_type: str,
        output: bool,
        raw: bool,
        session: Any = None,
        start: Any = None,
        stop: Any = None,
        n: Any = None,
        pattern: Any = None,
        unique: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        entries = list(self.history)
        if hist_access_type == "tail":
            entries = entries[-(n or 10) :]
        elif hist_access_type == "range":
            entries = [
                e
                for e in entries
                if (start is None or e[1] >= start) and (stop is None or e[1] < stop)
            ]
        elif hist_access_type == "search":
            import fnmatch

            entries = [e for e in entries if fnmatch.fnmatch(e[2], pattern or "*")]
            if unique:
                first: dict[str, tuple[int, int, str]] = {}  # each code's first entry
                for entry in entries:
                    first.setdefault(entry[2], entry)
                entries = list(first.values())
            if n:
                entries = entries[-n:]
        if output:
            return {"status": "ok", "history": [(s, c, (i, None)) for s, c, i in entries]}
        return {"status": "ok", "history": entries}

    # ------------------------------------------------------------------ lifecycle
    def do_shutdown(self, restart: bool) -> dict[str, Any]:  # type: ignore[override]
        self._close_session()
        self.orchestrator.close()
        return {"status": "ok", "restart": restart}

    async def usage_request(self, stream: Any, ident: Any, parent: Any) -> None:
        """Report the sandbox's figures, not this relay's (jupyter-resource-usage)."""
        if not self.worker:
            return await super().usage_request(stream, ident, parent)
        usage = self.worker.usage() if self.worker.alive else {}
        content: dict[str, Any] = {
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "cpu_count": os.cpu_count(),
            "kernel_memory": usage.get("memory_bytes") or 0,
            "kernel_cpu": self._cpu_percent(usage.get("cpu_seconds")),
            "sandbox": {"tier": self.current_tier.value, **usage},
        }
        if self.session:  # jupyter_client's Session; the worker's is self.worker
            self.session.send(stream, "usage_reply", content, parent, ident)

    def _cpu_percent(self, cpu_seconds: float | None) -> float:
        if cpu_seconds is None:
            return 0.0
        now = time.monotonic()
        previous, self._cpu_sample = self._cpu_sample, (now, cpu_seconds)
        if previous is None or now <= previous[0]:
            return 0.0
        return max(0.0, 100.0 * (cpu_seconds - previous[1]) / (now - previous[0]))


#: The most pages one cell's reply passes to the pager, and the most text of each.
PAGER_PAGES, PAGER_TEXT = 10, 1 << 20


def _pager_payload(payload: Any) -> list[dict[str, Any]]:
    """The worker's help for the pager (``len?``), as ipykernel sends it: only plain
    text pages pass, and only so many, the worker being as untrusted as its cells."""
    pages = []
    for item in payload[:PAGER_PAGES] if isinstance(payload, list) else ():
        data = item.get("data") if isinstance(item, dict) else None
        if isinstance(data, dict) and item.get("source") == "page":
            text = data.get("text/plain")
            if isinstance(text, str):
                pages.append(
                    {"source": "page", "data": {"text/plain": text[:PAGER_TEXT]}, "start": 0}
                )
    return pages

"""IPython magics for agents: ``%%symbi_agent`` defines agents in Symbiont's DSL,
``%symbi_trigger`` runs one of their triggers."""

from __future__ import annotations

import json
import os
import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display
from traitlets import Bool, Instance, Unicode

from .agents import Agent, Emitted, SandboxModeLimits, load
from .agents.runner import ActionResult
from .errors import ConfigError, Interrupted, SymbiError
from .limit_flags import limit_arguments, limits_from_args
from .magics import (
    LiveOutput,
    no_raise_error_argument,
    print_output,
    print_truncation_markers,
    show_refusal,
    user_ns,
)
from .orchestrator import SandboxOrchestrator, default_orchestrator
from .result import ExecutionResult


@magics_class
class AgentMagics(Magics):
    """Define agents and run their triggers through a :class:`SandboxOrchestrator`
    (the one ``%%symbi`` uses, when loaded with ``%load_ext symbi_jupyter``)."""

    show_cards = Bool(
        True, config=True, help="Display a summary card for each agent %%symbi_agent defines."
    )
    show_stats = Bool(
        True, config=True, help="Display each action's result statistics in %symbi_trigger."
    )
    stream_output = Bool(
        True, config=True, help="Show each action's output while it runs (else when it ends)."
    )
    notebook_directory = Unicode(
        "",
        config=True,
        help="""The directory agents with the local_filesystem capability get (read-only
        in Moderate mode, read-write in Permissive mode). '' is the kernel's working
        directory when the agent is defined, which Jupyter sets to the notebook's.""",
    )
    orchestrator = Instance(SandboxOrchestrator)

    def __init__(
        self,
        shell: Any = None,
        orchestrator: SandboxOrchestrator | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(shell=shell, **kwargs)
        self.orchestrator = orchestrator or default_orchestrator()
        #: agents defined so far, by name; a later definition replaces an earlier one
        self.agents: dict[str, Agent] = {}
        # Agents read their modes' limits from the orchestrator's config when they
        # run; an instance here lets %config SandboxModeLimits... reach that config.
        self.mode_limits = SandboxModeLimits(parent=self.orchestrator)
        if shell is not None:
            for obj in (self, self.mode_limits):
                if all(obj is not c for c in shell.configurables):
                    shell.configurables.append(obj)

    @magic_arguments()
    @argument("-o", "--out", metavar="NAME", help="Store the list of agents in NAME.")
    @argument("--quiet", action="store_true", help="Do not display the summary cards.")
    @cell_magic
    def symbi_agent(self, line: str, cell: str) -> None:
        """Define agents (any number) in Symbiont's DSL, e.g.::

            agent NativeWorker {
              metadata { name: "Local Development Agent" version: "1.0.0" }
              security { tier: None sandbox: Permissive capabilities: ["local_filesystem"] }
              on trigger "local_processing" { execute_native("python3 process.py") }
            }

        Each agent's card shows its tier, sandbox mode and limits, capabilities and
        triggers, and what the orchestrator's policy will and will not permit it.
        Run a trigger with ``%symbi_trigger AGENT TRIGGER``.
        """
        args = parse_magic_line(self.symbi_agent, line)
        directory = self.notebook_directory or os.getcwd()
        agents = load(cell, orchestrator=self.orchestrator, directory=directory)
        for agent in agents:
            self.agents[agent.name] = agent
        if args.out:
            user_ns(self)[args.out] = agents
        if self.show_cards and not args.quiet:
            for agent in agents:
                display(agent)

    @magic_arguments()
    @argument("agent", help="The agent's name (from %%symbi_agent).")
    @argument("trigger", help="The trigger to run.")
    @argument(
        "--payload",
        metavar="JSON",
        help="The trigger's payload, as JSON; the code reads it from $SYMBI_PAYLOAD.",
    )
    @limit_arguments
    @argument("-o", "--out", metavar="NAME", help="Store the list of results in NAME.")
    @argument("--quiet", action="store_true", help="Do not display the statistics.")
    @no_raise_error_argument
    @line_magic
    def symbi_trigger(self, line: str = "") -> None:
        """Run a trigger of an agent defined with %%symbi_agent: each action at the
        agent's tier through the orchestrator, its output streamed, then its
        statistics; emitted values follow as they are recorded.

        The limit flags (those of ``%%symbi``) lower the limits of the agent's sandbox
        mode for this run, never raise them; above the operator's ceiling they are
        refused."""
        args = parse_magic_line(self.symbi_trigger, line)
        try:
            self._trigger(args)
        except SymbiError as exc:
            if not args.no_raise_error:
                raise
            show_refusal(exc)

    def _trigger(self, args: Any) -> None:
        agent = find_agent(self.agents, args.agent)
        payload = parse_payload(args.payload)
        writers = LiveOutput() if self.stream_output else None

        def shown(item: ActionResult) -> None:
            if writers:
                writers.flush()
            if isinstance(item, ExecutionResult):
                if writers is None:
                    print_output(item)
                else:
                    print_truncation_markers(item)
                if self.show_stats and not args.quiet:
                    display(item)
            elif isinstance(item, Emitted):
                display(item)

        try:
            results = agent.trigger(
                args.trigger,
                payload,
                on_output=writers.write if writers else None,
                on_result=shown,
                limits=limits_from_args(args),
            )
        except KeyboardInterrupt:
            raise Interrupted("the sandboxed run was stopped") from None
        finally:
            if writers:
                writers.flush()
        if args.out:
            user_ns(self)[args.out] = results


def find_agent(agents: dict[str, Agent], name: str) -> Agent:
    agent = agents.get(name)
    if agent is None:
        defined = ", ".join(agents) or "none yet"
        raise ConfigError(f"no agent named {name!r}; defined with %%symbi_agent: {defined}")
    return agent


def parse_payload(text: str | None) -> Any:
    """A ``--payload`` argument: JSON, or None when not given."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--payload is not JSON: {exc}") from None


def parse_magic_line(magic: Any, line: str) -> Any:
    """Flags with shell quoting, so --payload '{"a": "x y"}' is one argument."""
    try:
        argv = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"{magic.__name__}: {exc}") from None
    return magic.parser.parse_args(argv)

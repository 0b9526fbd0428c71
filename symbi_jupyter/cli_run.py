"""``symbi-jupyter run AGENT_FILE``: run one trigger of an agent file from the shell,
as Symbiont's ``symbiont run agent.dsl --native --max-memory=1024 ...`` does.

Each action goes through a :class:`SandboxOrchestrator` configured as the magics' is
(``--config`` adds a ``config.toml``), under the agent's sandbox mode lowered by the
limit flags, the very flags of ``%%symbi`` and ``%symbi_trigger``. Its output streams
to this process's stdout and stderr; its statistics line follows on stderr.

Exit status: 0 every action succeeded, 1 an action failed or a limit stopped it,
2 a usage or configuration error, 3 refused (policy, or a tier that cannot run here),
130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, PolicyViolation, SymbiError
from .limit_flags import add_limit_arguments, limits_from_args
from .tiers import SecurityTier

if TYPE_CHECKING:
    from .agents import Agent
    from .orchestrator import SandboxOrchestrator
    from .result import ExecutionResult

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def add_run(subparsers: argparse._SubParsersAction) -> None:
    """Register ``run`` and its flags."""
    cmd = subparsers.add_parser(
        "run",
        help="run a trigger of an agent file (Symbiont's DSL) through the orchestrator",
        description="Load the agents of AGENT_FILE and run one trigger: the only one, "
        "or the one --trigger (and --agent) name. Each action's output streams; its "
        "statistics line follows on stderr. The limit flags lower the agent's sandbox "
        "mode limits, never raise them; above the operator's ceiling they are refused. "
        "Exit 0 if every action succeeded, 1 if one failed or a limit stopped it, "
        "2 on a usage or configuration error, 3 if refused.",
    )
    cmd.add_argument("agent_file", metavar="AGENT_FILE", help="agents in Symbiont's DSL")
    cmd.add_argument("--trigger", metavar="NAME", help="the trigger to run")
    cmd.add_argument("--agent", metavar="NAME", help="the agent, where the file has several")
    cmd.add_argument(
        "--payload",
        metavar="JSON",
        help="the trigger's payload, as JSON; the code reads it from $SYMBI_PAYLOAD",
    )
    tier = cmd.add_mutually_exclusive_group()
    tier.add_argument(
        "--native", action="store_true", help="tier None (same as --sandbox-tier none)"
    )
    tier.add_argument(
        "--sandbox-tier",
        "--tier",
        "-t",
        dest="tier",
        metavar="TIER",
        help="run at TIER, the agent's own tier or a stronger one, never a weaker one "
        "(none/native, tier1/docker, tier2/gvisor, tier3/microvm)",
    )
    limits = cmd.add_argument_group("limits", "lower the agent's sandbox mode limits")
    add_limit_arguments(limits)
    add_config_argument(cmd)
    cmd.set_defaults(func=run)


def add_config_argument(cmd: argparse.ArgumentParser) -> None:
    """``--config config.toml``, as the commands that run code take it."""
    cmd.add_argument(
        "--config",
        metavar="config.toml",
        help="a Symbiont config.toml, over $SYMBIONT_CONFIG and the Jupyter config "
        "files; SYMBIONT_* variables still win",
    )


def run(args: argparse.Namespace) -> int:
    """The ``run`` command: the exit status of the trigger's run."""
    orch = None
    try:
        orch = configured_orchestrator(args.config)
        return _run(args, orch)
    except PolicyViolation as exc:
        return _said(exc, EXIT_REFUSED)
    except ConfigError as exc:
        return _said(exc, EXIT_USAGE)
    except SymbiError as exc:  # TierUnavailable
        return _said(exc, EXIT_REFUSED)
    except KeyboardInterrupt:
        print("symbi-jupyter run: interrupted; the sandboxed code was killed", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if orch is not None:
            orch.close()


def _run(args: argparse.Namespace, orch: SandboxOrchestrator) -> int:
    from .agent_magics import parse_payload
    from .agents import load
    from .magics import LiveOutput, print_truncation_markers
    from .result import ExecutionResult

    agents = load(_read(args.agent_file), orchestrator=orch)
    agent, trigger = _choose(agents, args.agent, args.trigger, args.agent_file)
    agent = _at_tier(agent, _tier_flag(args), trigger)
    payload = parse_payload(args.payload)
    writers = LiveOutput()

    def shown(item: Any) -> None:
        writers.flush()
        if isinstance(item, ExecutionResult):
            print_truncation_markers(item)
            print(item, file=sys.stderr, flush=True)
        else:
            print(item, flush=True)

    try:
        results = agent.trigger(
            trigger,
            payload,
            on_output=writers.write,
            on_result=shown,
            limits=limits_from_args(args),
        )
    finally:
        writers.flush()
    ran = [r for r in results if isinstance(r, ExecutionResult)]
    failed = next((r for r in ran if not r.success), None)
    if failed is None:
        return EXIT_OK
    action = agent.triggers[trigger].actions[len(results) - 1]
    print(
        f"symbi-jupyter run: {agent.name}.{trigger}: {action.summary} {_outcome(failed)}",
        file=sys.stderr,
    )
    return EXIT_FAILED


def configured_orchestrator(config: str | None) -> SandboxOrchestrator:
    """An orchestrator configured as the magics' is, with ``config`` (a config.toml)
    over it where given."""
    from .config import load_symbiont_config
    from .orchestrator import SandboxOrchestrator

    return SandboxOrchestrator(config=load_symbiont_config(config) if config else None)


def _read(path: str) -> str:
    from .agents.parser import MAX_AGENT_BYTES

    try:
        with open(path, encoding="utf-8") as f:
            # One character past the limit is enough for load() to refuse it.
            return f.read(MAX_AGENT_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _choose(
    agents: list[Agent], agent_name: str | None, trigger_name: str | None, path: str
) -> tuple[Agent, str]:
    """The one (agent, trigger) the flags leave; a :class:`ConfigError` listing the
    candidates when they leave none or several."""
    if not agents:
        raise ConfigError(f"{path} defines no agent")
    if agent_name is not None and all(a.name != agent_name for a in agents):
        names = ", ".join(a.name for a in agents)
        raise ConfigError(f"{path} has no agent named {agent_name!r}; its agents: {names}")
    every = [(a, t) for a in agents for t in a.triggers]
    left = [(a, t) for a, t in every if agent_name in (None, a.name) and trigger_name in (None, t)]
    listed = ", ".join(f"{a.name} {t!r}" for a, t in (left or every)) or "none"
    if not left:
        where = f"agent {agent_name}" if agent_name else path
        if trigger_name is None:
            raise ConfigError(f"{where} has no trigger")
        raise ConfigError(f"{where} has no trigger {trigger_name!r}; its triggers: {listed}")
    if len(left) > 1:
        how = "--trigger NAME" if len({t for _, t in left}) > 1 else "--agent NAME"
        raise ConfigError(f"{path} has several triggers: {listed}; choose one with {how}")
    return left[0]


def _tier_flag(args: argparse.Namespace) -> SecurityTier | None:
    if args.native:
        return SecurityTier.NONE
    return SecurityTier.parse(args.tier) if args.tier else None


def _at_tier(agent: Agent, asked: SecurityTier | None, trigger: str) -> Agent:
    """``agent`` at the tier asked for: its own or a stronger one; a weaker one is
    refused (audited), since a flag may add isolation, never take it away."""
    import dataclasses

    from .agents import Run

    if asked is None or asked is agent.tier:
        return agent
    if asked < agent.tier:
        error = PolicyViolation(
            f"agent {agent.name} runs at {agent.tier.display_name} (its security block); "
            f"{asked.display_name} isolates less, and a flag may raise the isolation, "
            "never lower it: change the agent's tier instead"
        )
    elif any(isinstance(a, Run) and a.native for a in agent.triggers[trigger].actions):
        error = PolicyViolation(
            f"trigger {trigger!r} of agent {agent.name} uses execute_native, which runs at "
            f"tier None only, not at {asked.display_name}"
        )
    else:
        return dataclasses.replace(agent, tier=asked)
    assert agent.orchestrator is not None
    agent.orchestrator.audit_refusal(asked, error, agent=agent.name, trigger=trigger)
    raise error


def _outcome(result: ExecutionResult) -> str:
    """What ended an action that did not succeed, in words."""
    from .render import KILL_REASON_WORDS, say_limit

    words = KILL_REASON_WORDS.get(result.killed_by or "")
    if words is None:
        if result.killed_by:
            return f"was stopped: {result.killed_by}"
        return f"failed with exit status {result.exit_code}"
    limit = getattr(result.limits, words.limit, None) if words.limit else None
    said = f" ({say_limit(words.limit, limit, 'value')})" if words.limit and limit else ""
    return f"was stopped by {words.phrase}{said}"


def _said(error: SymbiError, status: int) -> int:
    print(f"symbi-jupyter run: {type(error).__name__}: {error}", file=sys.stderr)
    return status

"""The traits of :class:`~.orchestrator.SandboxOrchestrator`: the operator's policy
(native gate, ceilings, allowlists, audit, the worker protocol's bounds), each with its
help, its default and its check. Configured as ``c.SandboxOrchestrator.<name>``."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from traitlets import Bool, Float, Int, List, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from . import policy
from .errors import ConfigError
from .limits import ResourceLimits, host_cores
from .sandboxes.base import RunPolicy
from .tiers import SecurityTier

#: Symbiont's native working directory (its config.toml default).
SHARED_WORKING_DIRECTORY = "/tmp/symbiont-native"


def _default_audit_path() -> str:
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(state, "symbi-jupyter", "audit.jsonl")


class OrchestratorSettings(LoggingConfigurable):
    """What :class:`~.orchestrator.SandboxOrchestrator` is configured with; it holds
    no state of its own."""

    allow_native_execution = Bool(
        False,
        config=True,
        help="""Allow tier None: code runs on this host with OS limits only, no isolation.
        Off by default. Also set by [native_execution] enabled in Symbiont's config.toml
        and SYMBIONT_ALLOW_NATIVE_EXECUTION.""",
    )
    native_refusal = Unicode(
        policy.NATIVE_HOWTO,
        help="""What a refusal of tier None says about switching it on. A host where the
        notebook cannot change the policy (the symbi kernel) says how its operator can.""",
    )
    default_sandbox_tier = Unicode(
        "Tier1",
        config=True,
        help="Tier used when a request names none: None, Tier1, Tier2 or Tier3 (any alias).",
    )
    max_memory_mb = Float(2048, config=True, help="Ceiling on memory per execution, in MB.")
    max_cpu_seconds = Float(300, config=True, help="Ceiling on CPU time per execution.")
    max_cpu_cores = Float(
        config=True,
        help="""Ceiling on CPU cores per execution (default: this host's cores). A run
        never gets more than the machine that runs its sandbox has: above that, it gets
        that machine's cores, and its enforcement says so.""",
    )
    max_execution_time_seconds = Float(
        300, config=True, help="Ceiling on wall-clock time per execution, in seconds."
    )
    max_processes = Int(256, config=True, help="Ceiling on processes per execution.")
    max_file_size_mb = Float(100, config=True, help="Ceiling on the size of any file written.")
    max_open_files = Int(1024, config=True, help="Ceiling on open files per process.")
    max_disk_mb = Float(
        1024,
        config=True,
        help="""Ceiling on what one execution may write, in MB: its directory, /tmp,
        /var/tmp and /dev/shm (size-limited tmpfs at every tier; their pages count as
        the run's memory too).""",
    )
    max_output_bytes = Int(
        10 * 1024 * 1024,
        config=True,
        help="Bytes kept per output stream; the rest is drained, discarded and marked.",
    )
    allow_network = Bool(
        False,
        config=True,
        help="""Whether executions may reach the network. Off by default; a request may
        ask for the network only when this is on.""",
    )
    enforce_resource_limits = Bool(
        True,
        config=True,
        help="Apply OS limits at tier None (Symbiont's enforce_resource_limits).",
    )
    working_directory = Unicode(
        config=True,
        help="""Where code runs (Symbiont's working_directory): its files are shown to
        every run, at every tier (read-only in containers, copied into a microVM), and
        tier None's private per-run directories are made in it. Default: Symbiont's
        /tmp/symbiont-native; for a user other than root where another user made that
        first, ~/.cache/symbi-jupyter/native ($XDG_CACHE_HOME).""",
    )
    allowed_executables = List(
        Unicode(),
        list(policy.DEFAULT_ALLOWED_EXECUTABLES),
        config=True,
        help="""Interpreters tier None may run, as names (looked up on PATH, this
        Python's own directory first) or paths; compared by resolved real path.""",
    )
    default_language = Unicode(
        "python3",
        config=True,
        help="Language of a request that names none: python3, python, bash, sh or node.",
    )
    default_executable = Unicode(
        "",
        config=True,
        help="""Tier None: the interpreter, by absolute path, of a request that names
        neither a language nor an executable (so in default_language, which its file
        name must name: /usr/bin/python3 for python3); it must be on
        allowed_executables. '': the default language's interpreter found on PATH.
        Symbiont's [native_execution] default_executable sets it and default_language.""",
    )
    env_passthrough = List(
        Unicode(),
        [],
        config=True,
        help="""Names of host environment variables copied into executions. Nothing else
        from the host environment reaches the code.""",
    )
    audit_log_path = Unicode(
        config=True,
        help="""Hash-chained JSON-lines log of every execution and refusal
        ('' switches auditing off). Check it with `symbi-jupyter audit verify PATH`.""",
    )
    audit_fsync = Bool(
        True,
        config=True,
        help="""fsync each audit record before the execution returns, so a power loss
        cannot drop it (costs a disk flush per execution).""",
    )
    sample_interval_seconds = Float(
        0.25,
        config=True,
        help="""Seconds between looks at a running sandbox's memory and CPU, from outside
        it (its cgroup, else /proc): they draw the live line of %%symbi and the memory
        sparkline of the result. 0 turns sampling off.""",
    )
    worker_idle_cpu_seconds = Float(
        None,
        allow_none=True,
        config=True,
        help="""CPU seconds a kernel's worker may use between two cells (a thread a
        cell left running); past it the worker is stopped and its state lost. None:
        the per-cell CPU limit (max_cpu_seconds). Measured from outside (the sandbox's
        cgroup); where that cannot be seen (Tier3), the result says so.""",
    )
    worker_max_message_mb = Float(
        16,
        config=True,
        help="""The largest protocol message (one line: a stream chunk, a rich output
        such as a plot) a kernel's worker may send, in MB, from 1 to 256; a longer
        one ends the worker.""",
    )

    map_concurrency = Int(
        0,
        config=True,
        help="""How many items of a map (:meth:`map`) run at once on this host when
        the call names no number. 0: decided per map: one per core (one per two cores
        at Tier3, where each item boots a VM), and no more than the host's memory
        holds at the items' memory limit.""",
    )

    cluster_address = Unicode(
        "",
        config=True,
        help="""The head of a Ray cluster (HOST:PORT) that runs the executions: each goes
        to a node whose agent advertises its tier, chosen by Ray's scheduler; its output
        streams back, and its result says the node (ExecutionResult.node). This
        orchestrator's policy applies first, the node's own after it: the stricter of
        the two holds. '' (default): everything runs on this host. Also set by
        [cluster] address in Symbiont's config.toml and SYMBIONT_CLUSTER_ADDRESS.
        Needs Ray: pip install 'symbi-jupyter[cluster]'.""",
    )

    worker_max_depth = Int(
        64,
        config=True,
        help="""How deeply the JSON of one protocol message from a kernel's worker may
        nest, from 8 to 512; a deeper one ends the worker.""",
    )

    @validate("map_concurrency")
    def _valid_map_concurrency(self, proposal: Any) -> int:
        value = proposal["value"]
        if value < 0:
            raise ConfigError(f"map_concurrency must be 0 (decided per host) or more, not {value}")
        return int(value)

    @validate("worker_max_depth")
    def _valid_depth(self, proposal: Any) -> int:
        value = proposal["value"]
        if not 8 <= value <= 512:
            raise ConfigError(f"worker_max_depth must be from 8 to 512, not {value}")
        return int(value)

    @validate("cluster_address")
    def _valid_cluster_address(self, proposal: Any) -> str:
        from .cluster import check_address

        return check_address(proposal["value"]) if proposal["value"] else ""

    @validate("worker_max_message_mb")
    def _valid_message_size(self, proposal: Any) -> float:
        value = proposal["value"]
        if not 1 <= value <= 256:
            raise ConfigError(f"worker_max_message_mb must be from 1 to 256, not {value:g}")
        return value

    @default("max_cpu_cores")
    def _default_cores(self) -> float:
        return float(host_cores())

    @default("audit_log_path")
    def _default_audit(self) -> str:
        return _default_audit_path()

    @default("working_directory")
    def _default_working_directory(self) -> str:
        # The shared default belongs to whoever made it first; a second user could
        # only be refused there.
        try:
            owner = os.lstat(SHARED_WORKING_DIRECTORY).st_uid
        except OSError:
            return SHARED_WORKING_DIRECTORY
        if os.geteuid() == 0 or owner == os.geteuid():
            return SHARED_WORKING_DIRECTORY
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        return os.path.join(cache, "symbi-jupyter", "native")

    @validate("default_sandbox_tier")
    def _valid_tier(self, proposal: Any) -> str:
        return SecurityTier.parse(proposal["value"]).value

    @validate("default_language")
    def _valid_language(self, proposal: Any) -> str:
        policy.language_spec(proposal["value"])
        return proposal["value"]

    @validate("default_executable")
    def _valid_default_executable(self, proposal: Any) -> str:
        value = proposal["value"]
        if value:
            try:
                policy.interpreter_language(value)
            except ConfigError as exc:
                raise ConfigError(f"SandboxOrchestrator.default_executable: {exc}") from None
        return value

    def ceilings(self) -> ResourceLimits:
        """The operator's limits; a request may lower them, never raise them."""
        return ResourceLimits(
            max_memory_mb=self.max_memory_mb,
            max_cpu_seconds=self.max_cpu_seconds,
            max_cpu_cores=self.max_cpu_cores,
            timeout_seconds=self.max_execution_time_seconds,
            max_processes=self.max_processes,
            max_file_size_mb=self.max_file_size_mb,
            max_open_files=self.max_open_files,
            max_output_bytes=self.max_output_bytes,
            max_disk_mb=self.max_disk_mb,
            network=self.allow_network,
        )

    def _run_policy(
        self,
        tier: SecurityTier,
        language: str,
        executable: str | None,
        argv: list[str] | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
    ) -> RunPolicy:
        """What the sandbox of ``tier`` is to read, decided and checked here once."""
        decided = RunPolicy(
            *(policy.language_spec(language) if argv is None else (argv[0], "")),
            env_passthrough=tuple(self.env_passthrough),
            enforce_resource_limits=self.enforce_resource_limits,
        )
        if tier is not SecurityTier.NONE:
            if executable:
                raise ConfigError(
                    "an explicit executable applies to tier None only; at "
                    f"{tier.display_name} choose the interpreter with the language "
                    "(python3, bash, sh, node)"
                )
            if argv is not None or cwd is not None:
                raise ConfigError(
                    f"argv and cwd apply to tier None only; at {tier.display_name} run "
                    "a command as code in the language sh"
                )
            # Its files are shown read-only at every tier; one that does not exist
            # has none, and is not made for a container's sake.
            shared = self.working_directory
            if os.path.isabs(shared) and not os.path.lexists(shared):
                return decided
            return dataclasses.replace(
                decided, working_directory=policy.validate_working_directory(shared)
            )
        workdir = policy.validate_working_directory(self.working_directory)
        if cwd is not None and not (os.path.isabs(cwd) and os.path.isdir(cwd)):
            raise ConfigError(f"cwd {cwd!r} must be the absolute path of a directory")
        if argv is not None:
            real, found = self.command_program(argv[0], env, cwd)
            return dataclasses.replace(
                decided,
                working_directory=workdir,
                executable=real,
                argv0=found,
                arguments=tuple(argv[1:]),
                start_directory=cwd,
            )
        real, found = self.interpreter(executable or decided.interpreter)
        # argv[0] keeps the path as found (a virtualenv's bin/python3) so the interpreter
        # finds its environment; what is executed is the checked real path.
        return dataclasses.replace(
            decided, working_directory=workdir, executable=real, argv0=found, start_directory=cwd
        )

    def _default_executable(self) -> str | None:
        """``default_executable`` where set; :class:`ConfigError` if its language is
        not ``default_language``."""
        if not self.default_executable:
            return None
        language = policy.interpreter_language(self.default_executable)
        if policy.language_spec(language)[0] != policy.language_spec(self.default_language)[0]:
            raise ConfigError(
                f"SandboxOrchestrator.default_executable = {self.default_executable!r} is "
                f"a {language} interpreter, but default_language is "
                f"{self.default_language!r}; set them to agree"
            )
        return self.default_executable

    def interpreter(self, name: str) -> tuple[str, str]:
        """Tier None: the interpreter or executable ``name`` as a run gets it, (its real
        path, its path as found on :func:`policy.executable_search_path`);
        :class:`PolicyViolation` unless ``allowed_executables`` has it."""
        search_path = policy.executable_search_path()
        real = policy.check_executable(name, self.allowed_executables, search_path)
        return real, policy.find_executable(name, search_path) or real

    def command_program(
        self, name: str, env: Mapping[str, str] | None = None, cwd: str | None = None
    ) -> tuple[str, str]:
        """Tier None: the program a command run without a shell starts, as it is found
        (see :func:`policy.command_program`); :class:`PolicyViolation` unless
        ``allowed_executables`` has it."""
        return policy.command_program(name, self.allowed_executables, env or {}, cwd)

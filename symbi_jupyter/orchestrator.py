"""SandboxOrchestrator: the one entry point. Policy and dispatch only; the sandboxes
run code, the renderers show results."""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from traitlets import Bool, Float, Int, List, Unicode, default, validate
from traitlets.config import Config, LoggingConfigurable

from . import policy
from .audit import AuditLog
from .errors import ConfigError, PolicyViolation, SymbiError, TierUnavailable
from .limits import ResourceLimits, host_cores
from .result import ExecutionResult
from .sampling import UsageSample, UsageSampler
from .sandboxes import ENTRY_POINT_GROUP, Availability, ExecutionRequest, Sandbox
from .sandboxes.base import OutputCallback, RunPolicy, WorkerHandle
from .sandboxes.worker import WorkerSession, worker_source
from .tiers import SecurityTier

if TYPE_CHECKING:
    from . import fanout


def _default_audit_path() -> str:
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(state, "symbi-jupyter", "audit.jsonl")


#: The language of a run of ``argv``: a command, no interpreter in between.
COMMAND = "command"

#: Symbiont's native working directory (its config.toml default).
SHARED_WORKING_DIRECTORY = "/tmp/symbiont-native"


class SandboxOrchestrator(LoggingConfigurable):
    """Apply policy to an execution request, dispatch it to the sandbox of its tier,
    and audit it. Never runs code at a tier other than the one asked for."""

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

    def __init__(self, config: Config | None = None, **kwargs: Any) -> None:
        from .config import load_config

        parent = kwargs.get("parent")
        if config is None and parent is not None:
            config = parent.config
        super().__init__(config=load_config(config), **kwargs)
        self._sandboxes: dict[SecurityTier, Sandbox] = {}
        self._lock = threading.Lock()
        self._audited = threading.local()
        self._cluster: Any = None  # cluster.client.ClusterClient, made on first use
        # Pooled containers and helper processes go with the interpreter, whether or
        # not anyone calls close() (a kernel shutting down does not).
        atexit.register(_close_at_exit, weakref.ref(self))

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

    # ------------------------------------------------------------------ policy
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

    def sandbox(self, tier: SecurityTier | str) -> Sandbox:
        """The (lazily created) sandbox of ``tier``; :class:`TierUnavailable` if this
        installation has none."""
        tier = SecurityTier.parse(tier)
        with self._lock:
            if tier not in self._sandboxes:
                self._sandboxes[tier] = _sandbox_class(tier)(parent=self)
            return self._sandboxes[tier]

    def active_sandboxes(self) -> list[Sandbox]:
        """The sandboxes created so far (each tier's is made on first use)."""
        with self._lock:
            return list(self._sandboxes.values())

    def availability(self) -> dict[SecurityTier, Availability]:
        """What this host can run, tier by tier, and why not."""
        report: dict[SecurityTier, Availability] = {}
        for tier in SecurityTier:
            try:
                report[tier] = self.sandbox(tier).availability()
            except TierUnavailable as exc:
                report[tier] = Availability(False, str(exc))
        return report

    # ------------------------------------------------------------------ execution
    def execute_code(
        self,
        tier: SecurityTier | str | None,
        code: str | bytes,
        env: dict[str, str] | None = None,
        language: str | None = None,
        limits: ResourceLimits | None = None,
        *,
        executable: str | None = None,
        keep_workdir: bool = False,
        on_output: OutputCallback | None = None,
        on_sample: Callable[[UsageSample], None] | None = None,
        on_admitted: Callable[[SecurityTier, ResourceLimits], None] | None = None,
        volumes: tuple[str, ...] | list[str] = (),
        argv: Sequence[str] | None = None,
        cwd: str | None = None,
        first_line: int = 1,
    ) -> ExecutionResult:
        """Run ``code`` at ``tier`` (``None``: the default tier) and return its result.
        ``on_output`` gets the output as it comes, ``on_sample`` each look at the
        running sandbox's memory and CPU (every ``sample_interval_seconds``),
        ``on_admitted`` the tier and effective limits once the request is admitted.
        ``volumes`` mounts host directories for this run only (HOST:CONTAINER[:ro|rw],
        read-only by default; container tiers only, validated like
        ``DockerSandbox.volumes``). ``first_line`` is the line ``code`` starts on in
        what the user typed (2 for the body of a ``%%symbi`` cell): the sandbox's
        messages (tracebacks, warnings) then give its line numbers as typed.

        Tier None only: ``argv`` runs a command without a shell instead of code in a
        language (``code`` is then the command as written, for the audit); its
        program ``argv[0]`` is found on the run's ``PATH`` and checked against
        ``allowed_executables`` by real path (see :func:`policy.command_argv` for
        splitting a command line). ``cwd`` is where the run starts, an absolute
        directory (default: its own run directory).

        Raises :class:`PolicyViolation`, :class:`TierUnavailable` or
        :class:`ConfigError` when the code cannot run as asked; a limit that stops the
        code is reported in the result instead.
        """
        data = code.encode("utf-8", "surrogateescape") if isinstance(code, str) else code
        digest = hashlib.sha256(data).hexdigest()
        started = time.monotonic()
        record: dict[str, Any] = {"code_sha256": digest, "tier": str(tier)}
        samples = None
        dispatched = False
        try:
            if type(first_line) is not int or first_line < 1:
                raise ConfigError(f"first_line={first_line!r}: give a line number, 1 or more")
            chosen = self._admit_tier(tier, record)
            if argv is None:
                if not language and not executable and chosen is SecurityTier.NONE:
                    # On a cluster, the interpreter is the node's to choose.
                    executable = None if self.cluster_address else self._default_executable()
                language = language or self.default_language
                policy.language_spec(language)
            else:
                argv = _checked_argv(argv, language, executable)
                record["argv"] = argv
                language = COMMAND
            if cwd is not None:
                record["cwd"] = cwd
            effective = self._admit_limits(limits, record)
            clean_env = policy.check_env(env or {})
            if self.cluster_address:
                # This side's policy has been applied above; the node applies its own.
                from .cluster.client import check_portable

                check_portable(executable, keep_workdir, volumes, argv, cwd)
                dispatched = True
                result = self._cluster_client().execute(
                    chosen,
                    data,
                    env=clean_env,
                    language=language,
                    limits=limits,
                    ceilings=self.ceilings(),
                    record=record,
                    first_line=first_line,
                    on_output=on_output,
                    on_sample=on_sample,
                    on_admitted=on_admitted,
                )
                samples = result.memory_samples
            else:
                sandbox = self.sandbox(chosen)
                if volumes:
                    record["volumes"] = list(volumes)
                    if not sandbox.supports_volumes:
                        raise TierUnavailable(
                            f"{chosen.display_name} cannot mount host directories"
                        )
                request = ExecutionRequest(
                    tier=chosen,
                    # The lines before it, blank: the code's own line numbers as typed.
                    code=b"\n" * (first_line - 1) + data,
                    language=language,
                    limits=effective,
                    env=clean_env,
                    executable=executable,
                    keep_workdir=keep_workdir,
                    on_output=on_output,
                    volumes=tuple(volumes),
                    code_sha256=digest,
                    policy=self._run_policy(chosen, language, executable, argv, cwd, clean_env),
                )
                if on_admitted is not None:
                    on_admitted(chosen, effective)
                sampler = None
                if self.sample_interval_seconds > 0:
                    sampler = UsageSampler(self.sample_interval_seconds, on_sample)
                    request.on_started = sampler.started
                try:
                    result = sandbox.run(request)
                finally:
                    samples = sampler.stop() if sampler else None
        except SymbiError as exc:
            if self.cluster_address and not dispatched and isinstance(exc, PolicyViolation):
                # Said apart from the node's refusals: this side refused.
                exc = PolicyViolation(
                    f"refused by this client's policy, before dispatch to the cluster at "
                    f"{self.cluster_address}: {exc}"
                )
                self._audit_refused(record, exc, duration_seconds=time.monotonic() - started)
                raise exc from None
            self._audit_refused(record, exc, duration_seconds=time.monotonic() - started)
            raise
        except KeyboardInterrupt as exc:
            interrupted = exc.args[0] if exc.args else None
            extra = {}
            if isinstance(interrupted, ExecutionResult):
                # The run so far, as a finished run's result (its badge shows it).
                interrupted.interrupted = "ended"
                interrupted.code_sha256 = digest
                if not dispatched:  # a node's result carries its own
                    interrupted.memory_samples = samples
                extra = _result_record(interrupted)
            self._audit(
                record, outcome="interrupted", **extra, duration_seconds=time.monotonic() - started
            )
            raise
        result.code_sha256 = digest
        result.memory_samples = samples
        outcome = "success" if result.success else ("stopped" if result.killed_by else "failed")
        self._audit(
            record,
            outcome=outcome,
            **_result_record(result),
            duration_seconds=time.monotonic() - started,
        )
        return result

    def map(
        self,
        items: Iterable[fanout.Item],
        tier: SecurityTier | str | None = None,
        limits: ResourceLimits | None = None,
        env: Mapping[str, str] | None = None,
        language: str | None = None,
        *,
        progress: bool | None = None,
        concurrency: int | None = None,
    ) -> list[ExecutionResult]:
        """Run many snippets at ``tier`` and return their results in input order.

        ``items``: code strings, or ``(code, env)`` pairs whose ``env`` is added to
        the shared ``env``. At most ``concurrency`` run at once (default:
        ``map_concurrency``, else decided from this host). ``progress``: a tqdm bar
        (a widget in a notebook, text on stderr elsewhere); default on, off under
        the stable rendering.

        A refusal that holds for every item (the tier, limits above a ceiling, the
        language, a tier this host cannot run, a bad argument) is raised once,
        audited, before anything runs. Otherwise each item is a run of
        :meth:`execute_code`, audited as such, and fails alone: a limit that stops
        it is in its result, and an error that kept it from running (a refusal of
        its own env, a backend failure) gives a result with ``success`` False and the
        reason in ``error``. The stop button stops every running item and starts no
        other, then raises :class:`~.errors.MapInterrupted` with the results so far.
        """
        from .fanout import run_map

        return run_map(
            self._fanout_executor(),
            items,
            tier,
            limits,
            env,
            language,
            progress=progress,
            concurrency=concurrency,
        )

    def _fanout_executor(self) -> fanout.Executor:
        """Where :meth:`map` runs its items: here, on this host."""
        from .fanout import Executor

        return Executor(self)

    def open_session(
        self,
        tier: SecurityTier | str | None = None,
        limits: ResourceLimits | None = None,
        env: dict[str, str] | None = None,
        *,
        interrupt_grace_seconds: float = 3.0,
    ) -> WorkerSession:
        """Start a persistent sandboxed Python namespace at ``tier`` (what the kernel
        runs its cells in), under the same policy as :meth:`execute_code`. Each
        cell's wall clock and CPU seconds come from ``limits`` and are kept per cell;
        memory, processes, cores and network hold for the whole session."""
        source = worker_source()
        digest = hashlib.sha256(source).hexdigest()
        record: dict[str, Any] = {
            "event": "session-start",
            "code_sha256": digest,
            "tier": str(tier),
        }
        started = time.monotonic()
        try:
            if self.cluster_address:
                # Not run here in its place: that would leave the cluster's policy.
                raise ConfigError(
                    f"SandboxOrchestrator.cluster_address is {self.cluster_address!r}, and "
                    "kernel sessions do not run on a cluster in this version; unset it "
                    "(SYMBIONT_CLUSTER_ADDRESS, [cluster] address) for this kernel"
                )
            chosen = self._admit_tier(tier, record)
            effective = self._admit_limits(limits, record)
            sandbox = self.sandbox(chosen)
            clean_env = policy.check_env(env or {})
            decided = self._run_policy(chosen, "python3", None)

            def start(on_output: OutputCallback) -> WorkerHandle:
                return sandbox.start_worker(
                    ExecutionRequest(
                        tier=chosen,
                        code=source,
                        language="python3",
                        limits=effective,
                        env=clean_env,
                        on_output=on_output,
                        code_sha256=digest,
                        policy=decided,
                    )
                )

            session = WorkerSession(
                start,
                chosen,
                effective,
                interrupt_grace_seconds=interrupt_grace_seconds,
                audit=lambda fields: self._audit({}, **fields),
                max_message_bytes=int(self.worker_max_message_mb * 1024 * 1024),
                max_depth=self.worker_max_depth,
                idle_cpu_seconds=self.worker_idle_cpu_seconds,
            )
        except SymbiError as exc:
            self._audit_refused(record, exc, duration_seconds=time.monotonic() - started)
            raise
        self._audit(record, outcome="started", duration_seconds=time.monotonic() - started)
        return session

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

    def audit_refusal(
        self, tier: SecurityTier | str | None, error: SymbiError, **fields: Any
    ) -> None:
        """Record a refusal decided before this orchestrator was asked to run anything
        (an agent's own definition, a kernel's policy), so every refusal is audited."""
        self._audit_refused(
            {"tier": str(tier.value if isinstance(tier, SecurityTier) else tier)}, error, **fields
        )

    def _audit_refused(self, record: dict[str, Any], error: SymbiError, **fields: Any) -> None:
        self._audit(record, outcome="refused", error=f"{type(error).__name__}: {error}", **fields)

    def admit_tier(self, tier: SecurityTier | str | None, **audit_fields: Any) -> SecurityTier:
        """The tier asked for (None: the default) if the policy allows it, for a host
        that refuses before it runs anything; a refusal is audited, with
        ``audit_fields``, and raised."""
        record: dict[str, Any] = {"tier": str(tier)}
        try:
            return self._admit_tier(tier, record)
        except SymbiError as exc:
            self._audit_refused(record, exc, **audit_fields)
            raise

    def admit_limits(
        self,
        limits: ResourceLimits | None,
        tier: SecurityTier | str | None = None,
        **audit_fields: Any,
    ) -> ResourceLimits:
        """The effective limits of ``limits`` (unset ones: the ceilings), for a host that
        decides limits before it runs anything (flags that lower an agent's limits, the
        symbi kernel's ``%symbi_limits``); a limit above its ceiling is refused, audited
        (at ``tier``, with ``audit_fields``) and raised."""
        record: dict[str, Any] = {"event": "set-limits"}
        if tier is not None:
            record["tier"] = str(tier.value if isinstance(tier, SecurityTier) else tier)
        try:
            return self._admit_limits(limits, record)
        except SymbiError as exc:
            self._audit_refused(record, exc, **audit_fields)
            raise

    def _admit_tier(self, tier: SecurityTier | str | None, record: dict[str, Any]) -> SecurityTier:
        """The tier asked for (None: the default), if the policy allows it."""
        chosen = SecurityTier.parse(tier if tier is not None else self.default_sandbox_tier)
        record["tier"] = chosen.value
        policy.check_tier_allowed(chosen, self.allow_native_execution, howto=self.native_refusal)
        return chosen

    def _admit_limits(
        self, limits: ResourceLimits | None, record: dict[str, Any]
    ) -> ResourceLimits:
        """The limits asked for, within the ceilings (PolicyViolation above them)."""
        effective = (limits or ResourceLimits()).within(self.ceilings())
        record["limits"] = effective.to_dict()
        return effective

    def _audit(self, record: dict[str, Any], **fields: Any) -> None:
        self._audited.record = None
        if not self.audit_log_path:
            return
        written = AuditLog(self.audit_log_path, fsync=self.audit_fsync).append({**record, **fields})
        self._audited.record = written

    def last_audit_record(self) -> dict[str, Any] | None:
        """The audit record this thread's last execution, refusal or session start
        wrote, as written (with its ``hash``); None if auditing is off. A cluster
        node's agent returns its hash to the client, whose own record names it."""
        return getattr(self._audited, "record", None)

    def _cluster_client(self) -> Any:
        """The dispatch to :attr:`cluster_address` (made on first use; Ray is
        imported then, and only then)."""
        from .cluster.client import ClusterClient

        with self._lock:
            if self._cluster is None or self._cluster.address != self.cluster_address:
                self._cluster = ClusterClient(self.cluster_address)
            return self._cluster

    def close(self) -> None:
        """Stop the sandboxes' helper processes."""
        with self._lock:
            for sandbox in self._sandboxes.values():
                sandbox.close()
            self._sandboxes.clear()


def _checked_argv(argv: Sequence[str], language: str | None, executable: str | None) -> list[str]:
    """``argv`` as a list of strings, each without NUL, the first not empty."""
    if language or executable:
        raise ConfigError(
            "argv runs a command, not code: give no language or executable with it "
            "(argv[0] is the program)"
        )
    if isinstance(argv, str | bytes) or not argv:
        raise ConfigError(f"argv must be a non-empty list of strings, not {argv!r}")
    for arg in argv:
        if not isinstance(arg, str) or "\0" in arg:
            raise ConfigError(f"argv holds {arg!r}: every argument must be a string without NUL")
    if not argv[0]:
        raise ConfigError("argv[0], the program to run, is empty")
    return list(argv)


def _close_at_exit(ref: weakref.ref) -> None:
    orchestrator = ref()
    if orchestrator is not None:
        orchestrator.close()


_default: SandboxOrchestrator | None = None
_default_lock = threading.Lock()


def default_orchestrator() -> SandboxOrchestrator:
    """The orchestrator of code that names none: the magics of ``%load_ext
    symbi_jupyter`` and agents loaded without one (``agents.load(text)``).

    One per process, made on first use and closed at exit (as every orchestrator is),
    configured as :func:`~.config.load_config` layers it: Symbiont's ``config.toml``
    from ``$SYMBIONT_CONFIG``, ``jupyter_symbi_config`` files, ``SYMBIONT_*``, and in
    an IPython session the shell's own configuration beneath them (so the magics and
    the agents of a notebook share one orchestrator, and ``%config`` reaches both).
    """
    global _default
    with _default_lock:
        if _default is None:
            _default = SandboxOrchestrator(parent=_ipython_shell())
        return _default


def forget_default_orchestrator() -> None:
    """Close the default orchestrator and forget it, so the next use makes a new one
    from the configuration as it is then (``%unload_ext symbi_jupyter``)."""
    global _default
    with _default_lock:
        orchestrator, _default = _default, None
    if orchestrator is not None:
        orchestrator.close()


def _ipython_shell() -> Any:
    """The running IPython shell, if any; IPython is not imported for it."""
    ipython = sys.modules.get("IPython")
    return ipython.get_ipython() if ipython is not None else None


def _result_record(result: ExecutionResult) -> dict[str, Any]:
    return {
        "exit_code": result.exit_code,
        "killed_by": result.killed_by,
        "timed_out": result.timed_out,
        "wall_seconds": result.wall_seconds,
        "cpu_user_seconds": result.cpu_user_seconds,
        "cpu_system_seconds": result.cpu_system_seconds,
        "peak_memory_bytes": result.peak_memory_bytes,
        "memory_method": result.memory_method,
        "language": result.language,
    }


def _sandbox_class(tier: SecurityTier) -> type[Sandbox]:
    """The backend of ``tier``, imported only now, through its entry point (named
    after the tier: none, tier1, ...), as jupyter_client finds its provisioners."""
    name = tier.value.lower()
    found = entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        raise TierUnavailable(
            f"{tier.display_name} is not implemented in this installation of symbi-jupyter "
            f"(no entry point {name!r} in the group {ENTRY_POINT_GROUP}; reinstall it); "
            "nothing runs at a weaker tier in its place"
        )
    point = next(iter(found))
    try:
        cls = point.load()
    except (ImportError, AttributeError) as exc:
        raise TierUnavailable(
            f"{tier.display_name}: its sandbox {point.value} cannot be loaded ({exc})"
        ) from None
    # A backend registered under another tier's name would run code at the wrong tier.
    if getattr(cls, "tier", None) is not tier:
        raise TierUnavailable(
            f"{tier.display_name}: the entry point {name} = {point.value} is not the "
            "sandbox of this tier; nothing runs in its place"
        )
    return cls

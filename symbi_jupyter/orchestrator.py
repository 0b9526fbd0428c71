"""SandboxOrchestrator: the one entry point. Policy and dispatch only; the sandboxes
run code, the renderers show results."""

from __future__ import annotations

import atexit
import hashlib
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from traitlets.config import Config

from . import policy
from .audit import AuditLog, result_record
from .errors import ConfigError, PolicyViolation, SymbiError, TierUnavailable
from .limits import ResourceLimits
from .result import ExecutionResult
from .sampling import UsageSample, UsageSampler
from .sandboxes import Availability, ExecutionRequest, Sandbox, sandbox_class
from .sandboxes.base import OutputCallback, WorkerHandle
from .sandboxes.worker import WorkerSession, worker_source
from .settings import OrchestratorSettings
from .tiers import SecurityTier

if TYPE_CHECKING:
    from . import fanout


#: The language of a run of ``argv``: a command, no interpreter in between.
COMMAND = "command"


class SandboxOrchestrator(OrchestratorSettings):
    """Apply policy to an execution request, dispatch it to the sandbox of its tier,
    and audit it. Never runs code at a tier other than the one asked for. Its traits
    (the operator's policy) are :class:`~.settings.OrchestratorSettings`'."""

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

    # ------------------------------------------------------------------ policy
    def sandbox(self, tier: SecurityTier | str) -> Sandbox:
        """The (lazily created) sandbox of ``tier``; :class:`TierUnavailable` if this
        installation has none."""
        tier = SecurityTier.parse(tier)
        with self._lock:
            if tier not in self._sandboxes:
                self._sandboxes[tier] = sandbox_class(tier)(parent=self)
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
                argv = policy.checked_argv(argv, language, executable)
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
                extra = result_record(interrupted)
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
            **result_record(result),
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
        retry_lost: bool = False,
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

        With :attr:`cluster_address` set, the items go to the cluster: by default as
        many at once as its nodes have free slots of the tier when the map starts, each
        placed by Ray. An item whose node the cluster loses mid-run is a failed result
        whose ``node`` is that node; ``retry_lost=True`` runs it once more, on another
        node that offers the tier (the code then may run twice: use it for code that
        can be repeated).
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
            retry_lost=retry_lost,
        )

    def _fanout_executor(self) -> fanout.Executor:
        """Where :meth:`map` runs its items: the cluster at :attr:`cluster_address`,
        else this host."""
        if self.cluster_address:
            from .cluster.fanout import ClusterExecutor

            return ClusterExecutor(self)
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
            chosen = self._admit_tier(tier, record)
            effective = self._admit_limits(limits, record)
            clean_env = policy.check_env(env or {})
            if self.cluster_address:
                # This side's policy has been applied; the node applies its own, and
                # the session lives there (never here in its place).
                return self._remote_session(
                    chosen, limits, clean_env, interrupt_grace_seconds, record, started
                )
            sandbox = self.sandbox(chosen)
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

    def _remote_session(
        self,
        tier: SecurityTier,
        limits: ResourceLimits | None,
        env: dict[str, str],
        interrupt_grace_seconds: float,
        record: dict[str, Any],
        started: float,
    ) -> WorkerSession:
        """:meth:`open_session` on a node of the cluster (see :mod:`.cluster.remote`)."""
        from .cluster.remote import RemoteSession

        session = RemoteSession(
            self._cluster_client(),
            tier,
            limits=limits,
            ceilings=self.ceilings(),
            env=env,
            interrupt_grace_seconds=interrupt_grace_seconds,
            record=record,
            audit=lambda fields: self._audit({}, **fields),
        )
        self._audit(record, outcome="started", duration_seconds=time.monotonic() - started)
        return session

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

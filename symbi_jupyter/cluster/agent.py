"""The node agent: a long-lived Ray actor on each node, pinned there, holding the
node's own :class:`SandboxOrchestrator` (configured by the node's operator files, as
``symbi-jupyter run`` configures one), and :func:`run_on_node`, the task a client's
request becomes.

A client never picks a node: :func:`run_on_node` needs one unit of the tier's
resource, so Ray's scheduler starts it on a node that advertises the tier and has a
slot free; there it hands the request to that node's agent. The agent runs it under
the stricter of both policies (the client's ceilings came with the request; the
node's orchestrator applies its own, audits the run in the node's chain, and refuses
what its operator does not allow), and streams the output, the usage samples and the
result back as they come. A client's kernel session lives in the agent too
(:mod:`.sessions`).

A run outlives neither its client nor an interrupt: Ray's cancellation of the task,
the death of the client's job (checked in Ray's job table every second) or the
client's stop button stop the sandbox through the orchestrator's own stop path, the
one SIGINT takes (:class:`~symbi_jupyter.sandboxes._sigint.StopButton`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..errors import PolicyViolation, SymbiError, TierUnavailable
from ..limits import CEILING_TRAITS, ResourceLimits
from ..result import ExecutionResult
from ..sandboxes._sigint import StopButton
from ..tiers import SecurityTier
from . import NAMESPACE, agent_name, rayctl
from .sessions import SessionHost

logger = logging.getLogger(__name__)

#: Seconds between two looks at whether a run's client is still there.
WATCH_SECONDS = 1.0

#: Seconds the agent goes on without an answer from Ray's job table before it takes
#: the client (and the head) for gone.
LOST_SECONDS = 30.0

#: One streamed item: (kind, ...); see NodeAgent.execute.
Event = tuple[Any, ...]

#: The kinds of event that end a run's stream.
FINAL = frozenset({"done", "interrupted", "refused", "failed", "lost"})

#: Why :meth:`NodeAgent.shutdown` stops a run: the node leaves the cluster, and its
#: client is told the node was lost, not that it interrupted the run.
SHUTTING_DOWN = "the node is shutting down"

#: Why a run stops when Ray's GCS (the head) has not answered for LOST_SECONDS: the
#: cluster is gone, and Ray ends this node's processes, and its clients', soon after.
HEAD_LOST = "the head of the cluster does not answer"


def watched(
    run: _Run, final: Iterable[str], gone: Callable[[], str | None]
) -> Iterator[list[Event]]:
    """``run``'s events in batches as they come, until one of the kinds in ``final``;
    the run is stopped if Ray cancels the stream or ``gone`` says why its client is
    gone (:meth:`NodeAgent.client_gone`)."""
    import ray

    context = ray.get_runtime_context()
    while True:
        batch = run.take(timeout=WATCH_SECONDS)
        if batch:
            yield batch
            if batch[-1][0] in final:  # the last event of a run is its last
                return
        if context.is_canceled():
            run.stop("the client cancelled it")
        elif (why := gone()) is not None:
            run.stop(why)


def stricter(
    asked: ResourceLimits | None, client: ResourceLimits, node: ResourceLimits
) -> ResourceLimits:
    """The limits a node runs a request with: what the client asked for as it is (the
    node's orchestrator refuses an ask above the node's ceiling), every limit it left
    unset the lower of the client's and the node's ceilings."""
    asked = asked or ResourceLimits()
    limits: dict[str, Any] = {}
    for name in CEILING_TRAITS:
        value = getattr(asked, name)
        if value is None and name != "network":  # the network stays opt-in
            ceilings = [c for c in (getattr(client, name), getattr(node, name)) if c is not None]
            value = min(ceilings) if ceilings else None
        limits[name] = value
    return ResourceLimits(**limits)


def network_refusal(tier: SecurityTier, node_address: str) -> str | None:
    """Why a run of ``tier`` on the node at ``node_address`` may not have the network,
    or None where it may: whatever the node's operator allows, a run's network must
    not reach Ray's ports. Tier None with the network runs in the node's own network
    namespace, where every port of Ray's is; a container's bridge network (Tier1, and
    Tier2 where the engine's runsc is not ``--network=none``) reaches the node's own
    addresses, where Ray listens unless it listens on loopback only (a trial
    cluster). Tier3's guest has no network device."""
    if tier is SecurityTier.NONE:
        return (
            "tier None with the network would run in this node's own network namespace, "
            "where Ray's ports are; on a cluster, ask for the network in a container "
            "tier, or run without it"
        )
    if tier in (SecurityTier.TIER1, SecurityTier.TIER2) and not _loopback(node_address):
        return (
            f"a container's bridge network reaches this node's address {node_address}, "
            "where Ray listens; on this cluster, run without the network"
        )
    return None


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return address == "localhost"


class _Run:
    """One request on this node: its events on their way out, and its stop button."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.button = StopButton()
        self.finished = threading.Event()
        self.stopped_because: str | None = None

    def put(self, event: Event) -> None:
        self.events.put(event)

    def put_output(self, stream: str, chunk: bytes) -> None:
        self.events.put(("output", stream, chunk))

    def put_sample(self, sample: Any) -> None:
        self.events.put(("sample", sample))

    def end(self, event: Event) -> None:
        self.finished.set()
        self.events.put(event)

    def take(self, timeout: float) -> list[Event]:
        """What has come, at least one event unless ``timeout`` passes first."""
        try:
            batch = [self.events.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:  # batched: a flood of output is a few messages, not one per chunk
            try:
                batch.append(self.events.get_nowait())
            except queue.Empty:
                return batch

    def stop(self, why: str) -> None:
        if self.stopped_because is None and not self.finished.is_set():
            self.stopped_because = why
            logger.info("stopping run %s: %s", self.run_id, why)
            self.button.press()


class NodeAgent:
    """The agent of one node (made a Ray actor by :func:`start_agent`)."""

    def __init__(
        self,
        config: str | None,
        node_id: str,
        address: str,
        tiers: dict[str, int],
    ) -> None:
        from ..cli_run import configured_orchestrator

        self.orchestrator = configured_orchestrator(config)
        # This orchestrator runs here: a node that dispatched to a cluster itself
        # (SYMBIONT_CLUSTER_ADDRESS inherited by the node) would loop.
        self.orchestrator.cluster_address = ""
        self.node_id = node_id
        self.address = address
        self.label = f"{address}/{node_id}"
        self.tiers = {SecurityTier.parse(name): slots for name, slots in tiers.items()}
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._jobs: dict[str, tuple[float, bool]] = {}  # job -> (when looked, alive)
        self._unanswered_since: float | None = None
        self.sessions = SessionHost(self)

    def info(self) -> dict[str, Any]:
        """What this node offers and under which policy."""
        orch = self.orchestrator
        return {
            "node_id": self.node_id,
            "address": self.address,
            "label": self.label,
            "tiers": {tier.value: slots for tier, slots in self.tiers.items()},
            "ceilings": orch.ceilings(),
            "allow_native_execution": orch.allow_native_execution,
            "audit_log_path": orch.audit_log_path,
            "pid": os.getpid(),
            "runs": len(self._runs),
            "sessions": len(self.sessions),
        }

    def execute(self, request: dict[str, Any]) -> Iterator[list[Event]]:
        """Run ``request`` and stream its events, in batches, as they come:
        ``("admitted", tier, limits, node)``, ``("output", stream, bytes)``,
        ``("sample", UsageSample)``, and last one of ``("done", result, node,
        hash)``, ``("interrupted", result | None, node, hash)``, ``("refused", error
        class, message, node, hash)``, ``("lost", message, node)`` (the node is
        leaving the cluster) or ``("failed", message)``; ``node`` is this
        node (ADDRESS/NODE_ID), ``hash`` the hash of the node's audit record of the
        run (None if the node audits nothing). Output and samples come only where the
        request's ``follow`` asks for them (the result has them all)."""

        run = _Run(request["run_id"])
        with self._lock:
            self._runs[run.run_id] = run
        worker = threading.Thread(
            target=self._work, args=(run, request), name=f"symbi-run-{run.run_id}", daemon=True
        )
        worker.start()
        try:
            yield from watched(run, FINAL, lambda: self.client_gone(request["job_id"]))
        finally:
            # However the stream ends (even closed unread), nothing of the run stays.
            run.stop("its stream ended")
            worker.join()
            with self._lock:
                self._runs.pop(run.run_id, None)

    def interrupt(self, run_id: str) -> bool:
        """The client's stop button: stop the run as SIGINT would; False if it is not
        (or no longer) running here."""
        with self._lock:
            run = self._runs.get(run_id)
        if run is None:
            return False
        run.stop("interrupted by its client")
        return True

    # A client's kernel session (see .sessions): each call takes the session's id.
    def open_session(self, request: dict[str, Any]) -> tuple[Any, ...]:
        return self.sessions.open(request)

    def session_execute(self, session_id: str, cell: dict[str, Any]) -> Iterator[list[Event]]:
        yield from self.sessions.execute(session_id, cell)

    def session_interrupt(self, session_id: str) -> bool:
        return self.sessions.interrupt(session_id)

    def session_request(
        self, session_id: str, kind: str, timeout: float, fields: dict[str, Any]
    ) -> dict[str, Any]:
        return self.sessions.request(session_id, kind, timeout, fields)

    def session_usage(self, session_id: str) -> dict[str, Any]:
        return self.sessions.usage(session_id)

    def session_lost(self, session_id: str) -> str | None:
        return self.sessions.lost(session_id)

    def session_close(self, session_id: str) -> bool:
        return self.sessions.close(session_id)

    def shutdown(self) -> int:
        """Stop every run and the orchestrator's helpers (pooled containers, the
        native supervisor): what ``cluster down`` asks before it stops Ray. Returns
        the number of runs stopped."""
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            run.stop(SHUTTING_DOWN)
        for run in runs:
            run.finished.wait(timeout=30)
        self.sessions.close_all(SHUTTING_DOWN)
        self.orchestrator.close()
        return len(runs)

    # ------------------------------------------------------------------ internals
    def _work(self, run: _Run, request: dict[str, Any]) -> None:
        """Run the request through this node's orchestrator, in this thread, whose
        stop button is the run's."""
        orch = self.orchestrator
        with run.button.applied():
            try:
                tier = self.offered_tier(request)
                limits = stricter(request["limits"], request["ceilings"], orch.ceilings())
                if limits.network:
                    why = network_refusal(tier, self.address)
                    if why is not None:
                        denied = PolicyViolation(why)
                        orch.audit_refusal(tier, denied, client_job=request["job_id"])
                        raise denied
                follow = request.get("follow", {"output": True, "samples": True})
                result = orch.execute_code(
                    tier,
                    request["code"],
                    env=request["env"],
                    language=request["language"],
                    limits=limits,
                    first_line=request["first_line"],
                    on_output=run.put_output if follow["output"] else None,
                    on_sample=run.put_sample if follow["samples"] else None,
                    on_admitted=lambda chosen, limits: run.put(
                        ("admitted", chosen.value, limits, self.label)
                    ),
                )
                result.node = self.label
                run.end(("done", result, self.label, _hash(orch.last_audit_record())))
            except KeyboardInterrupt as exc:
                why = self.lost_because(run)
                if why is not None:
                    run.end(("lost", why, self.label))
                    return
                partial = exc.args[0] if exc.args else None
                if isinstance(partial, ExecutionResult):
                    partial.node = self.label
                else:
                    partial = None
                run.end(("interrupted", partial, self.label, _hash(orch.last_audit_record())))
            except SymbiError as exc:
                side = "policy" if isinstance(exc, PolicyViolation) else "host"
                message = f"node {self.label} refused it ({side} of the node): {exc}"
                record = orch.last_audit_record()
                run.end(("refused", type(exc).__name__, message, self.label, _hash(record)))
            except BaseException as exc:
                run.end(("failed", f"node {self.label}: {type(exc).__name__}: {exc}"))

    def offered_tier(self, request: dict[str, Any]) -> SecurityTier:
        """The tier ``request`` asks for, if this node offers it; else the refusal,
        audited in the node's chain, is raised (:class:`TierUnavailable`)."""
        tier = SecurityTier.parse(request["tier"])
        if tier not in self.tiers:
            error = TierUnavailable(f"this node does not offer {tier.display_name}")
            self.orchestrator.audit_refusal(tier, error, client_job=request["job_id"])
            raise error
        return tier

    def lost_because(self, run: _Run) -> str | None:
        """Why ``run`` was stopped, if the node or the cluster went (the client is told
        it lost the run, not that it interrupted it); None otherwise."""
        if run.stopped_because == SHUTTING_DOWN:
            return f"node {self.label} left the cluster mid-run (node stop, cluster down)"
        if run.stopped_because == HEAD_LOST:
            return (
                f"the cluster's head ({self._gcs_address()}) was lost: node {self.label} "
                f"had no answer from it for {LOST_SECONDS:g} s and stopped it"
            )
        return None

    def client_gone(self, job_id: str) -> str | None:
        """None while the client's job is alive (:meth:`_client_alive`); why it is
        taken for gone otherwise: it went away, or the head no longer answers."""
        if self._client_alive(job_id):
            return None
        return HEAD_LOST if self._unanswered_since is not None else "its client went away"

    def _client_alive(self, job_id: str) -> bool:
        """Whether the client's job is alive, by Ray's job table (looked at most once
        per WATCH_SECONDS per job); after LOST_SECONDS without an answer, no."""
        now = time.monotonic()
        looked = self._jobs.get(job_id)
        if looked is not None and now - looked[0] < WATCH_SECONDS:
            return looked[1]
        import ray

        try:
            # Ray has no public way to learn that a caller died; its job table has.
            worker: Any = ray._private.worker.global_worker
            gcs = worker.gcs_client
            jobs = gcs.get_all_job_info(
                job_or_submission_id=job_id,
                skip_submission_job_info_field=True,
                skip_is_running_tasks_field=True,
                timeout=5,
            )
        except Exception:
            self._unanswered_since = self._unanswered_since or now
            return now - self._unanswered_since < LOST_SECONDS
        self._unanswered_since = None
        alive = any(key.hex() == job_id and not data.is_dead for key, data in jobs.items())
        self._jobs[job_id] = (now, alive)
        return alive

    @staticmethod
    def _gcs_address() -> str:
        import ray

        worker: Any = ray._private.worker.global_worker
        with contextlib.suppress(Exception):
            return str(worker.gcs_client.address)
        return "its GCS"


def _hash(record: dict[str, Any] | None) -> str | None:
    return None if record is None else record.get("hash")


_agents: dict[str, Any] = {}


def run_on_node(request: dict[str, Any]) -> Iterator[list[Event]]:
    """The task a request becomes: started by Ray on a node with a free slot of the
    tier, it hands the request to that node's agent and relays its events."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    agent = _agents.get(node_id)
    if agent is None:
        try:
            agent = ray.get_actor(agent_name(node_id), namespace=NAMESPACE)
        except ValueError:
            yield [("failed", f"node {node_id} advertises the tier but its agent is not running")]
            return
        _agents[node_id] = agent
    stream = agent.execute.options(num_returns="streaming").remote(request)
    for ref in stream:
        yield ray.get(ref)


def start_agent(
    node_id: str,
    address: str,
    tiers: dict[str, int],
    config: str | None,
) -> Any:
    """Start the detached agent of node ``node_id`` there (hard node affinity), under
    its name in the project's namespace, and return its handle once it answers."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    slots = sum(tiers.values())
    actor = ray.remote(NodeAgent).options(
        name=agent_name(node_id),
        namespace=NAMESPACE,
        lifetime="detached",
        num_cpus=0,
        # Every slot's run or session cell, its relay's interrupt and usage probes,
        # and the odd info() or shutdown().
        max_concurrency=3 * slots + 4,
        max_restarts=-1,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
    )
    agent: Any = actor.remote(config, node_id, address, tiers)
    ray.get(agent.info.remote(), timeout=120)
    return agent


def shut_down_agents(address: str, node_ids: Iterable[str]) -> set[int]:
    """Ask the agents of ``node_ids`` on the cluster at ``address`` to stop their runs,
    sessions and pooled containers (:meth:`NodeAgent.shutdown`), then end them for
    good (a detached agent is otherwise restarted); their pids, for the containers
    they may have left. A cluster or an agent that does not answer is passed over:
    the processes of its node are stopped after this anyway."""
    pids: set[int] = set()
    with contextlib.suppress(Exception):  # a dead head: no agent answers
        ray = rayctl.connect(address)
        try:
            for node_id in node_ids:
                with contextlib.suppress(Exception):
                    agent = ray.get_actor(agent_name(node_id), namespace=NAMESPACE)
                    pids.add(ray.get(agent.info.remote(), timeout=30)["pid"])
                    ray.get(agent.shutdown.remote(), timeout=60)
                    ray.kill(agent, no_restart=True)
        finally:
            rayctl.disconnect()
    return pids


def describe(info: dict[str, Any]) -> str:
    """One line about a node's agent, for ``node start`` and ``cluster status``."""
    tiers = ", ".join(f"{name} x{slots}" for name, slots in info["tiers"].items()) or "no tier"
    ceilings = dataclasses.asdict(info["ceilings"])
    return (
        f"node {info['label']}: {tiers}; memory ceiling {ceilings['max_memory_mb']:g} MB, "
        f"time ceiling {ceilings['timeout_seconds']:g} s; agent pid {info['pid']}"
    )

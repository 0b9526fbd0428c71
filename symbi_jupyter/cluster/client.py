"""A client's dispatch: ``execute_code`` of an orchestrator whose ``cluster_address``
is set, after its own policy has admitted the request.

The request becomes one :func:`~.agent.run_on_node` task that needs one unit of the
tier's resource: Ray's scheduler, not this module, chooses the node. Its events
stream back (a Ray streaming generator) into the caller's callbacks as they come, so
``%%symbi`` shows live output as it does locally. The stop button (SIGINT here) asks
the node's agent to stop the run, which then ends as an interrupted run does
locally: its output so far and its statistics.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..errors import ConfigError, NodeLost, PolicyViolation, SymbiError, TierUnavailable
from ..limits import ResourceLimits
from ..result import ExecutionResult
from ..sampling import UsageSample
from ..sandboxes.base import OutputCallback
from ..tiers import SecurityTier
from . import NAMESPACE, agent_name, rayctl, resource_name, tier_of_resource
from .agent import Event, run_on_node

_ERRORS: dict[str, type[SymbiError]] = {
    cls.__name__: cls for cls in (PolicyViolation, TierUnavailable, ConfigError)
}

#: Seconds :meth:`ClusterClient.free` waits for Ray's view of held slots to settle.
SETTLE_SECONDS = 0.3

_task: Any = None  # run_on_node as a Ray remote function, exported once per process


def check_portable(
    executable: str | None,
    keep_workdir: bool,
    volumes: Sequence[str],
    argv: Sequence[str] | None,
    cwd: str | None,
) -> None:
    """:class:`ConfigError` for what names this host's paths, which a node does not
    have: an interpreter, a command, a start directory, volumes, a kept directory."""
    given = [
        name
        for name, value in (
            ("executable", executable),
            ("argv", argv),
            ("cwd", cwd),
            ("volumes", volumes),
            ("keep_workdir", keep_workdir),
        )
        if value
    ]
    if given:
        raise ConfigError(
            f"{', '.join(given)} name paths of one host, and a run on a cluster goes to a "
            "node chosen by the scheduler; run it without them, or on this host "
            "(SandboxOrchestrator.cluster_address = '')"
        )


class ClusterClient:
    """Dispatches to the cluster at ``address`` (connecting on first use)."""

    def __init__(self, address: str) -> None:
        self.address = address
        # Per calling thread: the node its next dispatch must not go to (a retry).
        self._avoiding = threading.local()

    def ray(self) -> Any:
        return rayctl.connect(self.address)

    def offered(self) -> dict[SecurityTier, float]:
        """The tiers the cluster's nodes advertise, with their slots in all."""
        return _tiers(self.ray().cluster_resources())

    def free(self, tier: SecurityTier, settle: float = SETTLE_SECONDS) -> float:
        """The slots of ``tier`` no run holds now, in all. Ray's view of them follows
        the nodes' reports (every 100 ms): a run that has just ended may still hold
        its slot there. While some look held, look again for ``settle`` seconds and
        take the most seen free."""
        ray = self.ray()
        free = _tiers(ray.available_resources()).get(tier, 0.0)
        deadline = time.monotonic() + settle
        while free < self.offered().get(tier, 0.0) and time.monotonic() < deadline:
            time.sleep(0.05)
            free = max(free, _tiers(ray.available_resources()).get(tier, 0.0))
        return free

    def require(self, tier: SecurityTier) -> None:
        """:class:`TierUnavailable` naming what the cluster offers, if no node offers
        ``tier``."""
        offered = self.offered()
        if tier not in offered:
            which = ", ".join(f"{t.display_name} ({n:g} slots)" for t, n in sorted(offered.items()))
            raise TierUnavailable(
                f"no node of the cluster at {self.address} offers {tier.display_name}; it "
                f"offers {which or 'no tier (no node agent is running)'}; nothing runs at "
                "another tier in its place"
            )

    def offered_elsewhere(self, tier: SecurityTier, node: str | None) -> bool:
        """Whether a live node other than ``node`` (``ADDRESS/NODE_ID``) offers ``tier``."""
        skip = node.rpartition("/")[2] if node else None
        wanted = resource_name(tier)
        return any(
            n.get("Alive") and n.get("NodeID") != skip and n.get("Resources", {}).get(wanted)
            for n in self.ray().nodes()
        )

    @contextlib.contextmanager
    def avoiding(self, node: str | None) -> Iterator[None]:
        """Within this block, this thread's dispatches go to any node but ``node``
        (``ADDRESS/NODE_ID``; None: any node), chosen by Ray's label selector."""
        self._avoiding.node_id = node.rpartition("/")[2] if node else None
        try:
            yield
        finally:
            self._avoiding.node_id = None

    def execute(
        self,
        tier: SecurityTier,
        code: bytes,
        *,
        env: dict[str, str],
        language: str,
        limits: ResourceLimits | None,
        ceilings: ResourceLimits,
        record: dict[str, Any],
        first_line: int = 1,
        on_output: OutputCallback | None = None,
        on_sample: Callable[[UsageSample], None] | None = None,
        on_admitted: Callable[[SecurityTier, ResourceLimits], None] | None = None,
    ) -> ExecutionResult:
        """Run ``code`` on a node that offers ``tier``; the node's result (``node``
        set). Its refusals are raised as this side's would be, naming the node;
        ``record`` (the client's audit record) gets the node and the hash of the
        node's own record."""
        global _task
        ray = self.ray()
        record["cluster"] = self.address
        self.require(tier)
        request = {
            "run_id": uuid.uuid4().hex,
            "job_id": ray.get_runtime_context().get_job_id(),
            "tier": tier.value,
            "code": code,
            "env": env,
            "language": language,
            "limits": limits,
            "ceilings": ceilings,
            "first_line": first_line,
            # What this side follows as it comes; the rest is only in the result, so
            # that a map's runs do not send four samples a second each for nothing.
            "follow": {"output": on_output is not None, "samples": on_sample is not None},
        }
        if _task is None:
            _task = ray.remote(run_on_node)
        follow = _Follower(self.address, record, on_output, on_sample, on_admitted)
        options: dict[str, Any] = {}
        avoid = getattr(self._avoiding, "node_id", None)
        if avoid:
            options["label_selector"] = {"ray.io/node-id": f"!{avoid}"}
        stream = None
        try:
            stream = _task.options(
                num_returns="streaming",
                num_cpus=0,
                resources={resource_name(tier): 1},
                # A run is never repeated behind its caller's back.
                max_retries=0,
                **options,
            ).remote(request)
            return follow.events(ray, stream)
        except KeyboardInterrupt:
            if stream is None:
                raise
            return follow.interrupted(ray, stream, request["run_id"])


def _tiers(resources: dict[str, float]) -> dict[SecurityTier, float]:
    found = {tier_of_resource(name): amount for name, amount in resources.items()}
    return {tier: amount for tier, amount in found.items() if tier is not None}


class _Follower:
    """Hands one run's events to the caller's callbacks until the final one."""

    def __init__(
        self,
        address: str,
        record: dict[str, Any],
        on_output: OutputCallback | None,
        on_sample: Callable[[UsageSample], None] | None,
        on_admitted: Callable[[SecurityTier, ResourceLimits], None] | None,
    ) -> None:
        self.address = address
        self.record = record
        self.on_output = on_output
        self.on_sample = on_sample
        self.on_admitted = on_admitted
        self.node: str | None = None

    def events(self, ray: Any, stream: Any) -> ExecutionResult:
        for event in self._received(ray, stream):
            kind = event[0]
            if kind == "output" and self.on_output is not None:
                self.on_output(event[1], event[2])
            elif kind == "sample" and self.on_sample is not None:
                self.on_sample(event[1])
            elif kind == "admitted":
                self.node = self.record["node"] = event[3]
                if self.on_admitted is not None:
                    self.on_admitted(SecurityTier.parse(event[1]), event[2])
            elif kind in ("done", "interrupted", "refused"):
                return self._final(event)
            elif kind == "lost":
                raise NodeLost(
                    f"the cluster at {self.address} lost the run on node {event[2]}: {event[1]}",
                    event[2],
                )
            elif kind == "failed":
                raise TierUnavailable(f"the cluster at {self.address} could not run it: {event[1]}")
        raise TierUnavailable(f"the cluster at {self.address} ended the run without a result")

    def interrupted(self, ray: Any, stream: Any, run_id: str) -> ExecutionResult:
        """The stop button: the node stops the run, whose end still comes this way (a
        second press gives up on it, and Ray cancels the task)."""
        try:
            if self.node is None:  # not started yet: nothing of it to show
                raise KeyboardInterrupt
            node_id = self.node.rpartition("/")[2]
            try:
                agent = ray.get_actor(agent_name(node_id), namespace=NAMESPACE)
            except ValueError:  # the agent is gone: its runs are too
                raise KeyboardInterrupt from None
            agent.interrupt.remote(run_id)
            return self.events(ray, stream)
        except KeyboardInterrupt as exc:
            if not exc.args:
                ray.cancel(stream)
            raise

    def _received(self, ray: Any, stream: Any) -> Iterator[Event]:
        from ray.exceptions import RayError

        try:
            for ref in stream:
                yield from ray.get(ref)
        except RayError as exc:
            where = f" on node {self.node}" if self.node else ""
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise NodeLost(
                f"the cluster at {self.address} lost the run{where}: {type(exc).__name__}: {first}",
                self.node,
            ) from None

    def _final(self, event: Event) -> ExecutionResult:
        kind = event[0]
        self.node = self.record["node"] = event[-2]
        self.record["node_audit_hash"] = event[-1]
        if kind == "refused":
            raise _ERRORS.get(event[1], SymbiError)(event[2])
        result: ExecutionResult | None = event[1]
        if kind == "interrupted":
            raise KeyboardInterrupt(*([result] if result is not None else []))
        assert result is not None  # a finished run has its result
        return result

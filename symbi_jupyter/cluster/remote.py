"""A client's kernel session on a cluster node: :class:`RemoteSession`, what
``open_session`` returns when ``cluster_address`` is set.

Ray's scheduler places it: a placement group of one bundle, one unit of the tier's
resource, is reserved on a node that offers the tier and has a slot free (no worker
process of Ray's is needed for it), and holds that slot while the session lives. The
node's agent then starts the worker there (:mod:`.sessions`) under the stricter of
both policies. Every call of the kernel goes to that node: cells, with their messages
streamed back as they come; interrupts; completion, inspection and usage requests.

Nothing runs here in its place. A node lost mid-cell (its raylet or its agent gone)
ends the cell with ``session_lost`` naming the node: the kernel says so and stays
alive, and its next session is placed anew, on a node that is still there. The slot
and the worker go with the client: the placement group is the client job's (Ray
removes it when the job ends) and the agent closes the sessions of a dead job.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from ..audit import CHAIN_FIELDS
from ..errors import ConfigError, PolicyViolation, SymbiError, TierUnavailable
from ..limits import ResourceLimits
from ..result import ExecutionResult
from ..sandboxes.worker import CellOutcome, WorkerSession
from ..sandboxes.worker.intake import MessageCallback
from ..sandboxes.worker.session import SessionLost
from ..tiers import SecurityTier
from . import NAMESPACE, agent_name, resource_name

_ERRORS: dict[str, type[SymbiError]] = {
    cls.__name__: cls for cls in (PolicyViolation, TierUnavailable, ConfigError)
}

#: Seconds a new session waits for a free slot of its tier.
SLOT_WAIT_SECONDS = 120.0
#: Seconds a request to the node (completion, usage, close) may take.
CALL_SECONDS = 30.0


class _Probe:
    """What the kernel's live line samples: the node's view of the sandbox."""

    def __init__(self, session: RemoteSession) -> None:
        self.usage = session.usage


class RemoteSession(WorkerSession):
    """A :class:`WorkerSession` whose worker lives on a cluster node. Same interface,
    the kernel uses it unchanged; its state is the node's (mirrored after each cell)."""

    def __init__(
        self,
        client: Any,
        tier: SecurityTier,
        *,
        limits: ResourceLimits | None,
        ceilings: ResourceLimits,
        env: dict[str, str],
        interrupt_grace_seconds: float,
        record: dict[str, Any],
        audit: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        # Not WorkerSession.__init__: there is no worker here, only its node's.
        self._audit = audit or (lambda record: None)
        ray = client.ray()
        self.ray = ray
        self.tier = tier
        self.id = uuid.uuid4().hex
        self.address = client.address
        self.lost: str | None = None
        self.cells = 0
        self.totals = {"cpu_seconds": 0.0, "wall_seconds": 0.0, "peak_memory_bytes": 0}
        self.handle = _Probe(self)  # type: ignore[assignment]
        record["cluster"] = self.address
        started = time.monotonic()
        self._group = self._reserve(ray, client, tier)
        try:
            from ray.util import placement_group_table

            node_id = placement_group_table(self._group)["bundles_to_node_id"][0]
            try:
                self.agent = ray.get_actor(agent_name(node_id), namespace=NAMESPACE)
            except ValueError:
                raise TierUnavailable(
                    f"node {node_id} of the cluster at {self.address} advertises "
                    f"{tier.display_name} but its agent is not running"
                ) from None
            request = {
                "session_id": self.id,
                "job_id": ray.get_runtime_context().get_job_id(),
                "tier": tier.value,
                "limits": limits,
                "ceilings": ceilings,
                "env": env,
                "interrupt_grace_seconds": interrupt_grace_seconds,
            }
            reply = self._call("open_session", request, timeout=SLOT_WAIT_SECONDS)
            if reply[0] == "refused":
                record["node"], record["node_audit_hash"] = reply[3], reply[4]
                raise _ERRORS.get(reply[1], SymbiError)(reply[2])
        except BaseException:
            self._release()
            raise
        opened = reply[1]
        self.node: str = opened["node"]
        self.limits = opened["limits"]
        self.info = opened["info"]
        self.startup_seconds = time.monotonic() - started
        record["node"], record["node_audit_hash"] = self.node, opened["audit_hash"]

    # ------------------------------------------------------------------ placement
    def _reserve(self, ray: Any, client: Any, tier: SecurityTier) -> Any:
        """A slot of ``tier`` on a node of Ray's choice: a placement group."""
        from ray.util.placement_group import placement_group, remove_placement_group

        client.require(tier)
        group = placement_group([{resource_name(tier): 1}], strategy="STRICT_PACK")
        if not group.wait(timeout_seconds=SLOT_WAIT_SECONDS):
            remove_placement_group(group)
            raise TierUnavailable(
                f"no slot of {tier.display_name} came free on the cluster at {self.address} "
                f"within {SLOT_WAIT_SECONDS:g} s (its sessions and runs hold them all)"
            )
        return group

    def _release(self, wait: bool = True) -> None:
        """Free the session's slot; ``wait`` False: in a thread of its own (a lost
        head does not answer, and Ray retries the removal until it ends this process:
        the lost cell's reply must not wait for it)."""
        group, self._group = getattr(self, "_group", None), None
        if group is not None:
            from ray.util.placement_group import remove_placement_group

            def remove() -> None:
                with contextlib.suppress(Exception):
                    remove_placement_group(group)

            if wait:
                remove()
            else:
                threading.Thread(target=remove, name="symbi-release", daemon=True).start()

    def _call(self, method: str, *args: Any, timeout: float = CALL_SECONDS) -> Any:
        """A call to the node's agent; a RayError says the node or its agent is gone."""
        return self.ray.get(getattr(self.agent, method).remote(*args), timeout=timeout)

    def _lose(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
        self._release(wait=False)

    def _node_lost(self, exc: BaseException) -> str:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        self._lose(
            f"node {self.node} of the cluster at {self.address} was lost "
            f"({type(exc).__name__}: {first[:200]}); the session's state went with it"
        )
        assert self.lost is not None
        return self.lost

    # ------------------------------------------------------------------ the session
    @property
    def alive(self) -> bool:
        from ray.exceptions import GetTimeoutError, RayError

        if self.lost is not None:
            return False
        try:
            lost = self._call("session_lost", self.id)
        except (RayError, GetTimeoutError) as exc:
            self._node_lost(exc)
            return False
        if lost is not None:
            self._lose(lost)
        return self.lost is None

    def request(self, kind: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        from ray.exceptions import GetTimeoutError, RayError

        if self.lost is not None:
            return {"status": "error", "ename": "SessionLost", "evalue": self.lost}
        try:
            return self._call(
                "session_request", self.id, kind, timeout, fields, timeout=timeout + 5
            )
        except GetTimeoutError:
            return {"status": "error", "ename": "Timeout", "evalue": f"no {kind} reply"}
        except RayError as exc:
            return {"status": "error", "ename": "SessionLost", "evalue": self._node_lost(exc)}

    def interrupt(self) -> None:
        if self.lost is None:
            with contextlib.suppress(Exception):
                self.agent.session_interrupt.remote(self.id)

    def usage(self) -> dict[str, Any]:
        if self.lost is not None:
            return {}
        try:
            return self._call("session_usage", self.id, timeout=5)
        except Exception:
            return {}

    def execute(
        self,
        code: str,
        on_message: MessageCallback,
        *,
        limits: ResourceLimits | None = None,
        silent: bool = False,
        cell_name: str | None = None,
        source: str | None = None,
    ) -> CellOutcome:
        """Run one cell on the node; its messages go to ``on_message`` as they come.
        The stop button (SIGINT here) interrupts it there."""
        from ray.exceptions import RayError

        if self.lost is not None:
            raise SessionLost(self.lost)
        self.cells += 1
        cell = {
            "code": code,
            "limits": limits or self.limits,
            "silent": silent,
            "cell_name": cell_name or f"<cell-{self.cells}>",
            "source": source,
        }
        started = time.monotonic()
        stream = self.agent.session_execute.options(num_returns="streaming").remote(self.id, cell)
        ref, pending = None, collections.deque[Any]()
        while True:
            # SIGINT may land anywhere in here (ipykernel raises it during a request):
            # wherever it does, the node is asked to interrupt and the stream goes on.
            try:
                while pending:
                    ended = self._handle(pending.popleft(), on_message, started)
                    if ended is not None:
                        return ended
                if ref is None:
                    ref = next(stream)
                pending.extend(self.ray.get(ref))
                ref = None
            except StopIteration:
                break
            except KeyboardInterrupt:
                self.interrupt()  # the node interrupts it, then stops it past its grace
            except RayError as exc:
                return self._lost_cell(self._node_lost(exc), time.monotonic() - started)
        return self._lost_cell(
            self._lose_with(f"node {self.node} ended the cell without a result"),
            time.monotonic() - started,
        )

    def _handle(
        self, event: tuple[Any, ...], on_message: MessageCallback, started: float
    ) -> CellOutcome | None:
        """One event of a cell's stream; the cell's outcome with the last one."""
        if event[0] == "message":
            on_message(event[1])
            return None
        if event[0] == "outcome":
            state = event[2]
            self.cells, self.totals = state["cells"], state["totals"]
            if state["lost"] is not None:
                self._lose(state["lost"])
            outcome: CellOutcome = event[1]
            self._audit_cell(outcome.status, state.get("audit"))
            return outcome
        return self._lost_cell(self._lose_with(event[1]), time.monotonic() - started)

    def _lose_with(self, why: str) -> str:
        self._lose(f"{why}; the session's state went with it")
        assert self.lost is not None
        return self.lost

    def _audit_cell(self, outcome: str, node_record: dict[str, Any] | None) -> None:
        """This side's record of a cell: the node's own record of it (its figures,
        how it ended), with the cluster, the node and that record's hash."""
        fields: dict[str, Any] = {
            "tier": self.tier.value,
            "event": "session-cell",
            "cell": self.cells,
        }
        if node_record is not None:
            fields.update({k: v for k, v in node_record.items() if k not in CHAIN_FIELDS})
        else:
            fields["outcome"] = outcome
        fields.update(
            cluster=self.address,
            node=self.node,
            node_audit_hash=node_record.get("hash") if node_record else None,
        )
        self._audit(fields)

    def _lost_cell(self, why: str, wall: float) -> CellOutcome:
        self._audit_cell("lost", None)
        result = ExecutionResult(
            tier=self.tier,
            exit_code=-1,
            execution_time_ms=round(wall * 1000),
            wall_seconds=wall,
            limits=self.limits,
            language="python3",
            node=self.node,
        )
        reply = {"status": "error", "ename": "NodeLost", "evalue": why, "traceback": []}
        return CellOutcome("error", result, reply, session_lost=why)

    def close(self) -> None:
        """End the worker on its node and free its slot."""
        if self._group is not None:
            with contextlib.suppress(Exception):
                self._call("session_close", self.id)
        self._release()
        self.lost = self.lost or "the session was closed"

"""``orch.map`` over a cluster: the :class:`~symbi_jupyter.fanout.Executor` of an
orchestrator whose ``cluster_address`` is set.

Each item is an ordinary ``execute_code`` through the cluster, so Ray places it (one
unit of the tier's resource) and the node runs it under both policies. The map runs
as many at once as the cluster's nodes have free slots of the tier as it starts (Ray's
available resources, not its totals: slots other clients hold are not counted twice).
A node lost mid-item is that item's failed result, ``node`` naming it; asked
(``retry_lost``), the item runs once more, on a node other than the lost one (Ray's
label selector keeps it off, in case Ray has not yet seen the node die).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import NodeLost
from ..fanout import Executor, Plan, failed_result
from ..result import ExecutionResult

if TYPE_CHECKING:
    from .client import ClusterClient


class ClusterExecutor(Executor):
    """Runs a map's items on the cluster at the orchestrator's ``cluster_address``."""

    def client(self) -> ClusterClient:
        client: ClusterClient = self.orchestrator._cluster_client()
        return client

    def check(self, plan: Plan) -> None:
        """No node offers the tier: :class:`TierUnavailable` naming what the cluster
        offers. The rest (interpreters, the node's ceilings) is each node's to decide,
        item by item."""
        self.client().require(plan.tier)

    def slots(self, plan: Plan) -> int:
        """The slots of the tier free on the cluster now (at least one: the items then
        wait for Ray to free one)."""
        return max(1, int(self.client().free(plan.tier)))

    def run(self, code: str | bytes, env: dict[str, str], plan: Plan) -> ExecutionResult:
        try:
            return self._once(code, env, plan)
        except NodeLost as lost:
            client = self.client()
            if not plan.retry_lost:
                return self._lost(code, plan, lost, "not retried (retry_lost=False)")
            if not client.offered_elsewhere(plan.tier, lost.node):
                return self._lost(
                    code, plan, lost, f"not retried: no other node offers {plan.tier.display_name}"
                )
            self.orchestrator.log.warning("%s; running it once more elsewhere", lost)
            with client.avoiding(lost.node):
                try:
                    return self._once(code, env, plan)
                except NodeLost as again:
                    return self._lost(code, plan, again, f"its first try was lost too: {lost}")

    def _once(self, code: str | bytes, env: dict[str, str], plan: Plan) -> ExecutionResult:
        return self.orchestrator.execute_code(
            plan.tier, code, env=env, language=plan.language, limits=plan.limits
        )

    @staticmethod
    def _lost(code: str | bytes, plan: Plan, lost: NodeLost, note: str) -> ExecutionResult:
        """The failed result of an item whose node was lost: ``node`` is that node."""
        result = failed_result(code, plan, lost)
        result.error = f"{result.error}; {note}"
        result.node = lost.node
        return result

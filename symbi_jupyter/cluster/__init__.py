"""Sandboxes on a Ray cluster: nodes that advertise the tiers they can run, and clients
whose ``execute_code`` goes to one of them through Ray's own scheduling.

Ray (the optional extra ``symbi-jupyter[cluster]``) is imported only here, and only
when a cluster is used. The modules:

``auth``     the token every cluster the project starts requires (Ray's token
             authentication)
``tls``      TLS through Ray's own ``RAY_USE_TLS``/``RAY_TLS_*``: their key checked,
             a trial cluster's certificates made, a mismatch said at once
``rayctl``   importing Ray, running its CLI and connecting to a cluster
``node``     ``symbi-jupyter node start``: advertise the tiers that work here, start
             or join Ray, start this node's agent; ``node stop``: leave the cluster
``agent``    the node agent (a Ray actor): a local orchestrator configured by the
             node's operator files; runs requests under the stricter of both policies
``client``   a client's dispatch: the task that needs the tier's resource, the
             streamed output, the result
``remote``   a client's kernel session on a node (what ``open_session`` returns)
``sessions`` the node side of those sessions, held by the agent
``local``    ``symbi-jupyter cluster up|down|status``: a trial cluster on 127.0.0.1
``commands`` the command-line glue of ``node`` and ``cluster``
"""

from __future__ import annotations

import re

from ..errors import ConfigError
from ..tiers import SecurityTier

#: The Ray namespace of everything the project names (the node agents).
NAMESPACE = "symbi-jupyter"

#: How to get Ray, said by every error about its absence.
INSTALL_HINT = "pip install 'symbi-jupyter[cluster]'"

#: The oldest Ray with token authentication as this package uses it.
MIN_RAY_VERSION = (2, 59)

_ADDRESS = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):(?P<port>\d{1,5})$")


def resource_name(tier: SecurityTier) -> str:
    """The Ray custom resource a node advertises for ``tier``: ``symbi_tier1``, ..."""
    return f"symbi_{tier.value.lower()}"


def tier_of_resource(name: str) -> SecurityTier | None:
    """The tier a resource name advertises, or None for any other resource."""
    for tier in SecurityTier:
        if resource_name(tier) == name:
            return tier
    return None


def agent_name(node_id: str) -> str:
    """The name of a node's agent actor (in :data:`NAMESPACE`): one per node."""
    return f"symbi-node-agent-{node_id}"


def check_address(value: str) -> str:
    """``value`` if it is a cluster address, ``HOST:PORT`` (the head's GCS, as
    ``ray start`` prints it); :class:`ConfigError` saying what is accepted otherwise."""
    text = value.strip()
    if text.startswith("ray://"):
        raise ConfigError(
            f"cluster address {value!r}: Ray Client addresses (ray://) are not supported; "
            "give the head's HOST:PORT and run the client on a machine of the cluster"
        )
    match = _ADDRESS.match(text)
    if match is None or not 0 < int(match["port"]) < 65536:
        raise ConfigError(
            f"cluster address {value!r} is not HOST:PORT (the head's address, as "
            "`symbi-jupyter cluster up` or `node start` prints it, e.g. 127.0.0.1:6379)"
        )
    return text

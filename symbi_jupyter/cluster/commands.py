"""``symbi-jupyter node`` and ``symbi-jupyter cluster``: the command-line glue.

Exit status: 0 success, 1 failed, 2 a usage or configuration error, 3 refused (a
tier that cannot run here, Ray missing).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ..errors import ConfigError, SymbiError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3

_TIERS_HELP = "none, tier1/docker, tier2/gvisor, tier3/microvm"


def add_node(subparsers: argparse._SubParsersAction) -> None:
    """Register ``node start|stop``."""
    from ..cli import needs_subcommand

    node = subparsers.add_parser("node", help="make this machine a node of a Ray cluster")
    node.set_defaults(func=needs_subcommand(node))
    actions = node.add_subparsers(title="actions", metavar="ACTION")
    start = actions.add_parser(
        "start",
        help="start Ray here, advertising the tiers that work here, and this node's agent",
        description="Check which tiers work on this machine (its own operator files: "
        "$SYMBIONT_CONFIG, --config, SYMBIONT_*), start Ray with token authentication "
        "as the head of a new cluster or as a node of the cluster at --address, "
        "advertising one resource per tier (symbi_tier1: SLOTS, ...), and start the "
        "node's agent, which runs the cluster's requests under this machine's policy. "
        "A head makes the cluster's token (0600); another node needs a copy of it. "
        "Exit 0 on success, 2 on a usage or configuration error, 3 if a tier asked for "
        "cannot run here or Ray is missing.",
    )
    start.add_argument(
        "--address", metavar="HEAD", help="join the cluster whose head is HEAD (HOST:PORT)"
    )
    start.add_argument(
        "--tiers",
        metavar="LIST",
        help=f"comma-separated tiers to offer ({_TIERS_HELP}); default: every tier that "
        "works here (tier None only where native execution is allowed)",
    )
    start.add_argument(
        "--slots", type=int, metavar="N", help="runs at once per tier (default: this host's cores)"
    )
    start.add_argument("--config", metavar="config.toml", help="this node's Symbiont config.toml")
    start.add_argument("--num-cpus", type=int, metavar="N", help="CPUs Ray counts on this node")
    start.add_argument("--node-ip-address", metavar="IP", help="this node's address (Ray's)")
    start.add_argument(
        "--port", type=int, default=6379, help="the head's port (default 6379; 0: any free)"
    )
    start.add_argument(
        "--temp-dir", metavar="DIR", help="Ray's directory for this node (default: a new one)"
    )
    start.set_defaults(func=_node_start)
    stop = actions.add_parser(
        "stop",
        help="stop the node this machine started, and nothing else",
        description="Stop a node that `node start` (or `cluster up`) started on this "
        "machine: its agent (its runs, sessions, pooled containers), then every process "
        "of its Ray directory, then any container its agent left. Its clients' runs end "
        "with NodeLost. Ray processes of other nodes are left alone. Without --temp-dir, "
        "the one node `node start` recorded here. Exit 0 if nothing of it is left, 1 if "
        "a process could not be stopped, 2 if no such node is known.",
    )
    stop.add_argument(
        "--temp-dir", metavar="DIR", help="Ray's directory of the node (as `node start` printed)"
    )
    stop.set_defaults(func=_node_stop)


def add_cluster(subparsers: argparse._SubParsersAction) -> None:
    """Register ``cluster up|down|status``."""
    from ..cli import needs_subcommand

    cluster = subparsers.add_parser("cluster", help="a trial Ray cluster on this machine")
    cluster.set_defaults(func=needs_subcommand(cluster))
    actions = cluster.add_subparsers(title="actions", metavar="ACTION")
    up = actions.add_parser(
        "up",
        help="start a trial cluster on 127.0.0.1 and print its address",
        description="Start a head and NODES-1 more nodes on this machine, reachable on "
        "127.0.0.1 only, each a `node start` of its own with token authentication, and "
        "print the cluster's address (for SYMBIONT_CLUSTER_ADDRESS); --tls: with TLS "
        "on Ray's channels too. --tiers and "
        "--config are given once for every node, or once per node, the head first. "
        "Exit 0 on success, 2 on a usage or configuration error, 3 if a tier cannot run.",
    )
    up.add_argument("--nodes", type=int, default=2, metavar="N", help="nodes (default 2)")
    up.add_argument(
        "--tiers",
        action="append",
        metavar="LIST",
        help=f"comma-separated tiers a node offers ({_TIERS_HELP}); default: all that work",
    )
    up.add_argument(
        "--config", action="append", metavar="config.toml", help="a node's Symbiont config.toml"
    )
    up.add_argument("--slots", type=int, metavar="N", help="runs at once per tier and node")
    up.add_argument(
        "--num-cpus", type=int, default=1, metavar="N", help="CPUs Ray counts per node (1)"
    )
    up.add_argument(
        "--tls",
        action="store_true",
        help="TLS on Ray's gRPC channels: make a private CA and a certificate for "
        "127.0.0.1 (openssl) next to the token, start every node with them, and print "
        "the RAY_USE_TLS/RAY_TLS_* variables a client needs",
    )
    up.set_defaults(func=_cluster_up)
    down = actions.add_parser(
        "down",
        help="stop what `cluster up` started, and nothing else",
        description="Stop each node's agent (its runs, pooled containers), then every "
        "process of the trial cluster's nodes, then any container an agent left, and "
        "remove its TLS files, if any. Ray "
        "processes that `cluster up` did not start are left alone. Exit 0 if nothing "
        "is left, 1 if a process could not be stopped.",
    )
    down.set_defaults(func=_cluster_down)
    status = actions.add_parser(
        "status",
        help="the trial cluster's nodes, their tiers and ceilings",
        description="Ask each node's agent what it offers. Exit 0 if the cluster is up, 1 if not.",
    )
    status.set_defaults(func=_cluster_status)


def _node_start(args: argparse.Namespace) -> int:
    from . import check_address
    from .node import record_node, start_node

    def start() -> None:
        started = start_node(
            check_address(args.address) if args.address else None,
            tiers=args.tiers.split(",") if args.tiers else None,
            slots=args.slots,
            config=args.config,
            temp_dir=args.temp_dir,
            num_cpus=args.num_cpus,
            node_ip=args.node_ip_address,
            port=args.port,
        )
        record_node(started)
        print(f"node {started.node_id} is up in the cluster at {started.address}")
        print(f"Ray's directory of this node (its logs, closed to others): {started.temp_dir}")
        if not args.address:
            print(f"join it: symbi-jupyter node start --address {started.address}")
        print(f"stop it: symbi-jupyter node stop --temp-dir {started.temp_dir}")

    return _run("node start", start)


def _node_stop(args: argparse.Namespace) -> int:
    from .node import stop_node

    status = EXIT_OK

    def stop() -> None:
        nonlocal status
        if not stop_node(args.temp_dir):
            status = EXIT_FAILED

    return _run("node stop", stop) or status


def _cluster_up(args: argparse.Namespace) -> int:
    from .local import up

    return _run(
        "cluster up",
        lambda: up(
            args.nodes,
            tiers=args.tiers,
            configs=args.config,
            slots=args.slots,
            num_cpus=args.num_cpus,
            use_tls=args.tls,
        ),
    )


def _cluster_down(args: argparse.Namespace) -> int:
    from .local import down

    status = EXIT_OK

    def stop() -> None:
        nonlocal status
        if not down():
            status = EXIT_FAILED

    return _run("cluster down", stop) or status


def _cluster_status(args: argparse.Namespace) -> int:
    from .local import status

    found = EXIT_OK

    def show() -> None:
        nonlocal found
        if not status():
            found = EXIT_FAILED

    return _run("cluster status", show) or found


def _run(command: str, body: Callable[[], object]) -> int:
    """``body``'s exit status: its errors said in one line."""
    try:
        body()
    except ConfigError as exc:
        print(f"symbi-jupyter {command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SymbiError as exc:
        print(f"symbi-jupyter {command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    return EXIT_OK

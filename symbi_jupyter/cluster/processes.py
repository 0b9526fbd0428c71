"""The processes of the Ray nodes this machine started, found by their directory.

``ray stop`` stops every Ray process of the machine, whoever started it; a node the
project starts has a directory of its own (Ray's ``--temp-dir``), which the command
line of each of its daemons names, and its workers and their sandboxes are their
descendants. Those, and only those, are stopped; then the containers their agent
left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from ..sandboxes.supervisor.proctree import descendants, pid_alive


def processes_of(directory: str) -> set[int]:
    """The live processes whose command line names ``directory`` (a node's Ray
    directory), with all their descendants; never this process or its ancestors."""
    marker = os.fsencode(os.path.realpath(directory))
    roots: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker in f.read():
                    roots.add(int(entry))
        except OSError:
            continue
    found = set(roots)
    for pid in roots:
        found |= descendants(pid)
    return {pid for pid in found if pid_alive(pid)} - _ancestry()


def stop(pids: set[int], grace: float = 2.0) -> set[int]:
    """SIGTERM ``pids``, then SIGKILL what is left after ``grace`` seconds; returns
    those still alive after that (none, unless they are beyond this user's reach)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            pids = {pid for pid in pids if pid_alive(pid)}
            if not pids:
                return set()
            time.sleep(0.05)
    return {pid for pid in pids if pid_alive(pid)}


def stop_all(directory: str, rounds: int = 5) -> set[int]:
    """Stop every process of ``directory`` (:func:`processes_of`), again while new ones
    appear (a worker a dying daemon was starting); returns those left, if any."""
    for _ in range(rounds):
        found = processes_of(directory)
        if not found:
            return set()
        left = stop(found)
        if left:
            return left
    return processes_of(directory)


def remove_containers(agent_pids: set[int]) -> list[str]:
    """Remove the project's containers whose owner is one of ``agent_pids`` (a node's
    agents, whose reaper may not have come round yet); their short ids."""
    if not agent_pids:
        return []
    from ..sandboxes.docker.options import HOST_LABEL, LABEL
    from ..sandboxes.supervisor.proctree import host_tag

    try:
        import docker

        client = docker.from_env()
        found = client.containers.list(all=True, filters={"label": LABEL}, ignore_removed=True)
    except Exception:
        return []  # no engine: no container either
    owners = {host_tag(pid) for pid in agent_pids}
    removed = []
    for container in found:
        if container.labels.get(HOST_LABEL) in owners:
            with contextlib.suppress(Exception):
                container.remove(force=True)
                removed.append(container.short_id)
    return removed


def _ancestry() -> set[int]:
    """This process and its ancestors (a test runner's command line may name the
    directory too)."""
    found, pid = set(), os.getpid()
    while pid > 1:
        found.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return found

"""Removal of the containers, and their cgroup parents, that dead kernels left."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

from ..supervisor.cgroups import DOCKER_PARENT, stale_groups
from ..supervisor.proctree import host_tag, pid_alive
from .options import HOST_LABEL, LABEL


def reap(client: Any, *, log: Callable[[str], object] = print) -> list[str]:
    """Remove our containers, and their cgroup parents, whose kernel (of this pid
    namespace) is gone. Returns the short ids of the containers removed."""
    namespace = host_tag().split("-")[0]
    removed = []
    # ignore_removed: a container being removed right now (ours, after its run) is
    # listed, then gone when the SDK looks it up.
    for container in client.containers.list(
        all=True, filters={"label": LABEL}, ignore_removed=True
    ):
        owner = container.labels.get(HOST_LABEL, "")
        ns, _, pid = owner.partition("-")
        if ns != namespace or not pid.isdigit() or pid_alive(int(pid)):
            continue
        with contextlib.suppress(Exception):
            container.remove(force=True)
            removed.append(container.short_id)
    for path in stale_groups(DOCKER_PARENT):
        with contextlib.suppress(OSError):
            os.rmdir(path)
    if removed:
        log(f"reaped containers left by dead kernels: {', '.join(removed)}")
    return removed

"""A prepared container: created, attached to and started, its launcher waiting for
the code on stdin; what the ready pool keeps, by configuration."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import socket
from typing import Any

from ..supervisor.cgroups import RunCgroup
from ..supervisor.identity import Lease


@dataclasses.dataclass
class Prepared:
    """A started container whose launcher waits for its code on stdin."""

    container: Any
    raw: socket.socket
    parent: str | None
    startup_seconds: float
    #: the container's own host uid, held until it is removed
    lease: Lease | None = None
    #: host directories the container may write (read-write volumes)
    writable: tuple[str, ...] = ()

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.raw.close()
        with contextlib.suppress(Exception):
            self.container.remove(force=True)
        if self.group:
            self.group.remove()
        if self.lease:
            # Its processes are gone with it: what its uid left in the volumes goes
            # to their owners before another container may be leased that uid.
            self.lease.hand_back(self.writable)
            self.lease.release()

    @functools.cached_property
    def group(self) -> RunCgroup | None:
        """The container's cgroup parent, where its figures are read."""
        return RunCgroup.v1_parent(self.parent) if self.parent else None


def pool_key(image: str, options: dict[str, Any]) -> str:
    """The ready pool's key: containers of one image and configuration are
    interchangeable."""
    return json.dumps([image, options], sort_keys=True, default=str)

"""The block of host ids that sandboxes run as: one uid per live sandbox, at every
tier (see :mod:`.supervisor.identity` for the leases themselves)."""

from __future__ import annotations

import functools
import os
from typing import Any

from traitlets import Int, Unicode
from traitlets.config import Configurable

from ..errors import TierUnavailable
from .supervisor import identity


class RunIdentities(Configurable):
    """Where sandboxes get their host uid: a block of ids no account uses, each leased
    to one live sandbox (a native run, a container, a VMM) and freed when it ends, so
    that no two sandboxes can signal, trace or write to each other."""

    first_uid = Int(
        identity.DEFAULT_FIRST,
        config=True,
        help="""First uid (and gid) of the block. The block must hold no account, no group
        and no subordinate range of /etc/subuid or /etc/subgid.""",
    )
    count = Int(
        identity.DEFAULT_COUNT,
        min=1,
        config=True,
        help="How many ids the block holds: at most this many sandboxes at once.",
    )
    lease_dir = Unicode(
        "",
        config=True,
        help="""Directory of the lease files, shared by every kernel of this host ('' :
        /run/symbi-jupyter/uids as root).""",
    )

    def block(self) -> dict[str, Any]:
        """What a lease needs, as plain data (the supervisor leases too)."""
        return {
            "first": self.first_uid,
            "count": self.count,
            "dir": self.lease_dir or identity.default_lease_dir(),
        }

    def check(self) -> dict[str, Any]:
        """The block's config, or TierUnavailable saying why it cannot be used."""
        reason = _overlaps(self.first_uid, self.count, _account_files_stamp())
        if reason:
            raise TierUnavailable(
                f"RunIdentities: {reason}; choose another block with "
                "c.RunIdentities.first_uid and c.RunIdentities.count"
            )
        return self.block()

    def lease(self) -> identity.Lease:
        """A uid for one sandbox of this process; TierUnavailable if none is free."""
        try:
            return identity.lease(self.check())
        except OSError as exc:
            raise TierUnavailable(f"no host id for the sandbox: {exc}") from None

    @staticmethod
    def available() -> bool:
        """Whether this process may give a sandbox another uid (root)."""
        return os.geteuid() == 0


_ACCOUNT_FILES = ("/etc/passwd", "/etc/group", "/etc/subuid", "/etc/subgid")


def _account_files_stamp() -> tuple[int, ...]:
    """When the account files last changed: the check is read again only then (a run
    should not pay for reading four files)."""
    stamp = []
    for path in _ACCOUNT_FILES:
        try:
            stamp.append(os.stat(path).st_mtime_ns)
        except OSError:
            stamp.append(0)
    return tuple(stamp)


@functools.lru_cache(maxsize=8)
def _overlaps(first: int, count: int, stamp: tuple[int, ...]) -> str | None:
    return identity.overlaps(first, count)

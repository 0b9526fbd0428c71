"""One host identity per sandbox: a uid (and the gid of the same number) leased from a
block that no account uses, held for the sandbox's life and released with it.

A lease is an exclusive ``flock`` on ``<lease dir>/<uid>``, held through a descriptor
of the process that owns the sandbox (a native run's monitor, the host for a
container or a VMM): the kernel releases it when that process ends, however it ends.
A uid whose lock is free but that some process still runs as (the leftover of an owner
killed mid-run) is skipped. Stdlib only: the supervisor leases too.
"""

from __future__ import annotations

import fcntl
import os
import stat
from typing import Any

#: The default block: 65536 ids at 1 900 000 000, above the ranges systemd gives to
#: accounts, dynamic users and containers (up to 1 879 048 191) and below 2^31,
#: which some tools read as negative.
DEFAULT_FIRST = 1_900_000_000
DEFAULT_COUNT = 65536
ROOT_LEASE_DIR = "/run/symbi-jupyter/uids"


class Lease:
    """A leased uid; ``release()`` (or the holder's exit) frees it."""

    def __init__(self, uid: int, fd: int) -> None:
        self.uid = self.gid = uid
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __repr__(self) -> str:
        return f"Lease(uid={self.uid})"


def default_lease_dir() -> str:
    if os.geteuid() == 0:
        return ROOT_LEASE_DIR
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/symbi-jupyter-{os.geteuid()}"
    return os.path.join(base, "symbi-jupyter", "uids")


def overlaps(first: int, count: int) -> str | None:
    """Why the block ``first .. first+count-1`` may not be used, or None: an account,
    a group, or a subordinate range of /etc/subuid or /etc/subgid lies in it."""
    last = first + count - 1
    if first < 1000 or last >= 2**32 - 1 or count < 1:
        return f"{first}+{count} is not a block of unprivileged ids"
    for path in ("/etc/passwd", "/etc/group"):
        for line in _lines(path):
            fields = line.split(":")
            if len(fields) > 2 and fields[2].isdigit() and first <= int(fields[2]) <= last:
                return f"{path} has {fields[0]!r} with id {fields[2]} in the block"
    for path in ("/etc/subuid", "/etc/subgid"):
        for line in _lines(path):
            fields = line.split(":")
            if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                start, size = int(fields[1]), int(fields[2])
                if start <= last and first <= start + size - 1:
                    return f"{path} gives {fields[0]!r} ids {start}+{size}, which overlap the block"
    return None


def _lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip() and not line.startswith("#")]
    except OSError:
        return []


def lease(config: dict[str, Any]) -> Lease:
    """Lease a free uid of the block ``config`` names (``first``, ``count``, ``dir``).
    Starts at a random place, so that concurrent hosts rarely contend."""
    first, count = int(config["first"]), int(config["count"])
    lease_dir = config.get("dir") or default_lease_dir()
    _private_dir(lease_dir)
    dirfd = os.open(lease_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    in_use = ids_in_use()
    try:
        start = int.from_bytes(os.urandom(4), "little") % count
        for i in range(count):
            uid = first + (start + i) % count
            fd = os.open(
                str(uid), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dirfd
            )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            if uid in in_use:
                os.close(fd)
                continue
            return Lease(uid, fd)
    finally:
        os.close(dirfd)
    raise OSError(f"all {count} ids of the block at {first} are in use")


def ids_in_use() -> set[int]:
    """Every uid some process runs as (real, effective, saved or filesystem)."""
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        found.update(int(v) for v in line.split()[1:])
                        break
        except OSError:
            continue
    return found


def _private_dir(path: str) -> None:
    """Make ``path`` (and its parents) if missing; refuse one that another user could
    write to, where leases could be stolen or faked."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise PermissionError(f"{path} is not a private directory of this user")

"""One host identity per sandbox: a uid (and the gid of the same number) leased from a
block that no account uses, held for the sandbox's life and released with it.

A lease is an exclusive ``flock`` on ``<lease dir>/<uid>``, held through a descriptor
of the process that owns the sandbox (a native run's monitor, the host for a
container or a VMM): the kernel releases it when that process ends, however it ends.
A uid whose lock is free but that some process still runs as (the leftover of an owner
killed mid-run) is skipped. Before its owner releases a uid, :func:`hand_back` gives
what the uid left in the host directories it could write (read-write volumes) to
their owners, so that the next sandbox leased the same uid finds none of it; a uid
whose files could not all be handed back is retired (:meth:`Lease.retire`).
Stdlib only: the supervisor leases too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from typing import Any

from . import rundir

#: The default block: 65536 ids at 1 900 000 000, above the ranges systemd gives to
#: accounts, dynamic users and containers (up to 1 879 048 191) and below 2^31,
#: which some tools read as negative.
DEFAULT_FIRST = 1_900_000_000
DEFAULT_COUNT = 65536
ROOT_LEASE_DIR = "/run/symbi-jupyter/uids"


#: a lease file's sibling that keeps its uid from being leased again
RETIRED = ".retired"
#: how deep :func:`hand_back` descends (one descriptor per level)
MAX_DEPTH = 128
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Lease:
    """A leased uid; ``release()`` (or the holder's exit) frees it."""

    def __init__(self, uid: int, fd: int, lease_dir: str = "") -> None:
        self.uid = self.gid = uid
        self._fd = fd
        self._dir = lease_dir

    def hand_back(self, volumes: list[str] | tuple[str, ...]) -> None:
        """Hand what this uid owns in ``volumes`` (host directories the sandbox could
        write, its processes all gone) to their owners; retire the uid if that fails."""
        if not all([hand_back(path, self.uid, self.gid) for path in volumes]):
            self.retire()

    def retire(self) -> None:
        """Never lease this uid again: it still owns files where a later sandbox of
        the same uid could read them."""
        with contextlib.suppress(OSError):
            os.close(os.open(os.path.join(self._dir, f"{self.uid}{RETIRED}"), _NEW_FILE, 0o600))

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
            if uid in in_use or _retired(dirfd, uid):
                os.close(fd)
                continue
            return Lease(uid, fd, lease_dir)
    finally:
        os.close(dirfd)
    raise OSError(
        f"all {count} ids of the block at {first} are in use or retired "
        f"(a retired one has a *{RETIRED} file in {lease_dir})"
    )


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


def _retired(dirfd: int, uid: int) -> bool:
    try:
        os.stat(f"{uid}{RETIRED}", dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def hand_back(top: str, uid: int, gid: int) -> bool:
    """Give every entry under the directory ``top`` that ``uid`` (or ``gid``) owns to
    ``top``'s owner (or group; root's where ``top`` is the uid's own). Walks by
    descriptors and follows no link, as other sandboxes may be changing the tree.
    Returns whether the whole tree was seen (False past :data:`MAX_DEPTH` levels or on
    an error), so that the caller can retire the uid otherwise."""
    try:
        # The volume's path as checked: a link a sandbox put in it leads nowhere.
        path_fd = rundir.open_no_links(top)
    except FileNotFoundError:
        return True  # nothing left of it, nothing owned in it
    except (OSError, ValueError):
        return False
    try:
        top_fd = os.open(".", _DIR_FLAGS, dir_fd=path_fd)
    except OSError:
        return False
    finally:
        os.close(path_fd)
    st = os.fstat(top_fd)
    owner = st.st_uid if st.st_uid != uid else 0
    group = st.st_gid if st.st_gid != gid else 0
    complete = True
    try:
        # (directory descriptor, its entries still to see): one level per item.
        stack = [(top_fd, iter(sorted(os.listdir(top_fd))))]
    except OSError:
        os.close(top_fd)
        return False
    try:
        while stack:
            dirfd, names = stack[-1]
            name = next(names, None)
            if name is None:
                os.close(stack.pop()[0])
                continue
            try:
                # Through a descriptor of the entry itself: a name another sandbox
                # swaps meanwhile cannot turn root's chown onto another file.
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
            except FileNotFoundError:
                continue  # removed meanwhile by another sandbox of the volume
            except OSError:
                complete = False
                continue
            try:
                entry = os.fstat(fd)
                if stat.S_ISLNK(entry.st_mode):
                    continue  # a link holds no data; its text is anyone's to read
                if entry.st_uid == uid or entry.st_gid == gid:
                    # Root's chown also clears set-user-id and set-group-id bits.
                    os.chown(
                        f"/proc/self/fd/{fd}",
                        owner if entry.st_uid == uid else -1,
                        group if entry.st_gid == gid else -1,
                    )
                if stat.S_ISDIR(entry.st_mode):
                    if len(stack) >= MAX_DEPTH:
                        complete = False
                        continue
                    sub = os.open(".", _DIR_FLAGS, dir_fd=fd)
                    stack.append((sub, iter(sorted(os.listdir(sub)))))
            except OSError:
                complete = False
            finally:
                os.close(fd)
    finally:
        for fd, _ in stack:
            os.close(fd)
    return complete


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

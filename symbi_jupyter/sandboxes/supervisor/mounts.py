"""A native run's own mount namespace (as root): a /proc that shows the run only its
own processes, and a private /dev/shm and /var/tmp (size-limited tmpfs, gone with
the run, their pages counted in the run's memory cgroup).

Made by each monitor for its one run, so nothing here is shared between runs. /tmp
is still the host's: the run's directory, a notebook directory granted to an agent
and data a cell reads may live there.
"""

from __future__ import annotations

import ctypes

from .proctree import libc

CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_REC, MS_PRIVATE = 16384, 1 << 18
PRIVATE_DIRS = ("/dev/shm", "/var/tmp")


def _mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    def c(text: str | None) -> bytes | None:
        return text.encode() if text is not None else None

    if libc.mount(c(source), c(target), c(fstype), ctypes.c_ulong(flags), c(data)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {fstype or source} on {target}")


def rejoin(namespace_fd: int) -> None:
    """Go back to the mount namespace ``namespace_fd`` (the host's), to make a fresh
    private one from it."""
    if libc.setns(namespace_fd, CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "setns(CLONE_NEWNS)")


def make_private(tmpfs_bytes: int) -> dict[str, str]:
    """Enter a mount namespace of this process's own and mount the run's /proc,
    /dev/shm and /var/tmp in it; returns how each was enforced, for the result.
    Raises OSError where the host does not allow a mount namespace."""
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    # Nothing mounted here may reach the host's namespace.
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=invisible")
    size = max(1, tmpfs_bytes // 1024)
    for path in PRIVATE_DIRS:
        _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size}k,mode=1777")
    mib = tmpfs_bytes / (1 << 20)
    return {
        "process_view": "its own processes only (/proc hidepid=invisible)",
        "private_tmp": f"/dev/shm and /var/tmp private (tmpfs, {mib:g} MiB each, gone with "
        "the run); /tmp is the host's",
    }

"""A native run's own mount and IPC namespaces (as root): a /proc that shows the run
only its own processes, System V and POSIX IPC objects that go with the run, and one
size-limited tmpfs, gone with the run, that holds everything the run can write outside
the host's own directories: its run directory, /tmp's changes, /var/tmp, /dev/shm and
/run/lock. Its size is the run's disk limit; its pages also count in the run's memory
cgroup.

/tmp is an overlay: the run reads the host's /tmp (a notebook's data, a project
directory granted to an agent) and what it writes there stays in its tmpfs. Host
directories a request names (``binds``) are bound over it and reach the host.

Made by each monitor for its one run, so nothing here is shared between runs.
"""

from __future__ import annotations

import ctypes
import os
import tempfile

from . import rundir
from .proctree import libc

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
#: where the tmpfs is mounted first; a bind of one of its directories covers it later
SCRATCH = "/var/tmp"
#: the tmpfs's directories: private dirs mounted over their host paths, /tmp's overlay
#: layers, and the run directory
_LAYOUT = {
    "var": 0o1777,
    "shm": 0o1777,
    "lock": 0o1777,
    "upper": 0o1777,
    "work": 0o700,
    "run": 0o700,
}
#: the host's directories hidden by private ones -> where the staging directory keeps
#: a view of them (a bind from another namespace's mount is refused, so it is made
#: before they are covered)
HIDDEN = {
    "/tmp": "host-tmp",
    "/var/tmp": "host-var-tmp",
    "/dev/shm": "host-dev-shm",
    "/run/lock": "host-run-lock",  # where the host has it (/var/lock links to it)
}
#: the private directories bound over their host paths (/tmp is an overlay)
_PRIVATE = {"/dev/shm": "shm", "/run/lock": "lock"}


def _mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    def c(text: str | None) -> bytes | None:
        return text.encode() if text is not None else None

    if libc.mount(c(source), c(target), c(fstype), ctypes.c_ulong(flags), c(data)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {fstype or source} on {target}")


def _detach(target: str) -> None:
    if libc.umount2(target.encode(), MNT_DETACH) != 0:
        raise OSError(ctypes.get_errno(), f"umount {target}")


def rejoin(namespace_fd: int) -> None:
    """Go back to the mount namespace ``namespace_fd`` (the host's), to make a fresh
    private one from it."""
    if libc.setns(namespace_fd, CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "setns(CLONE_NEWNS)")


def make_private(size_bytes: int) -> str:
    """Enter mount and IPC namespaces of this process's own, mount the run's /proc and
    its tmpfs (``size_bytes``; :func:`resize` sets the run's own) with /tmp, /var/tmp,
    /dev/shm and /run/lock on it. Returns the tmpfs's staging directory, where
    :func:`bind_run_dir` finds the run directory. Raises OSError where the host does
    not allow it."""
    # A shared-memory segment or message queue would otherwise outlive the run (its
    # RAM then charged to no one); a namespace's objects go with its last process.
    if libc.unshare(CLONE_NEWNS | CLONE_NEWIPC) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS|CLONE_NEWIPC)")
    # Nothing mounted here may reach the host's namespace.
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=invisible")
    if os.path.ismount("/dev/mqueue"):
        # The host's queues are files there; this one shows the run's own.
        _mount("mqueue", "/dev/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    hidden = {
        name: os.open(path, _PATH_FLAGS) for path, name in HIDDEN.items() if os.path.isdir(path)
    }
    _mount("tmpfs", SCRATCH, "tmpfs", MS_NOSUID | MS_NODEV, f"size={_kib(size_bytes)}k,mode=700")
    for name, mode in _LAYOUT.items():
        os.mkdir(os.path.join(SCRATCH, name))
        os.chmod(os.path.join(SCRATCH, name), mode)  # past the umask
    for name, fd in hidden.items():
        os.mkdir(os.path.join(SCRATCH, name), 0o700)
        # Through the descriptor: /var/tmp is the tmpfs by now.
        _mount(f"/proc/self/fd/{fd}", os.path.join(SCRATCH, name), None, MS_BIND)
        os.close(fd)
    # The staging directory stays reachable to root alone: a bind over /var/tmp hides
    # it from the run, and this process keeps a descriptor of it.
    staging = os.open(SCRATCH, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    layer = f"/proc/self/fd/{staging}"
    _mount(
        "overlay",
        "/tmp",
        "overlay",
        MS_NOSUID | MS_NODEV,
        f"lowerdir=/tmp,upperdir={layer}/upper,workdir={layer}/work",
    )
    for path, name in _PRIVATE.items():
        if HIDDEN[path] in hidden:
            _mount(f"{layer}/{name}", path, None, MS_BIND)
    _mount(f"{layer}/var", SCRATCH, None, MS_BIND)
    return layer


def resize(size_bytes: int | None) -> None:
    """Set the run's tmpfs to ``size_bytes`` (its disk limit); None: no size of its
    own (the run's memory limit still holds its pages)."""
    size = f"{_kib(size_bytes)}k" if size_bytes else "0"
    _mount(None, SCRATCH, None, MS_REMOUNT | MS_NOSUID | MS_NODEV, f"size={size}")


def usage() -> tuple[int, int] | None:
    """(bytes written, bytes still free) on the run's tmpfs; None where it has no size
    (statvfs then says nothing of it)."""
    st = os.statvfs(SCRATCH)
    if not st.f_blocks:
        return None
    return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_bavail * st.f_frsize


def bind_run_dir(staging: str, run_dir: str) -> None:
    """Put a new directory of the tmpfs (root's, 0700) over ``run_dir``."""
    source = tempfile.mkdtemp(dir=os.path.join(staging, "run"))
    _mount(source, run_dir, None, MS_BIND)


def host_view(staging: str, path: str) -> str:
    """Where the host's ``path`` is seen here: in the staging directory if a private
    directory covers it, else where it is."""
    for hidden, name in HIDDEN.items():
        if path == hidden or path.startswith(hidden + "/"):
            return os.path.join(staging, name) + path[len(hidden) :]
    return path


def _trusted_prefix(path: str) -> str:
    """The part of a :func:`host_view` path that is root's own: the staging
    directory's view of a hidden host directory, else ``/``."""
    if path.startswith("/proc/self/fd/"):
        return "/".join(path.split("/")[:6])  # /proc/self/fd/N/<view>
    return "/"


def bind_host(host_path: str, path: str, read_only: bool) -> None:
    """Bind ``host_path`` (a :func:`host_view`) over ``path``, so that what the run
    writes there reaches the host. Both are reached through descriptors that follow
    no link (:func:`.rundir.open_no_links`): the host checked them before, and a run
    that may write a parent could have swapped one for a link since."""
    source = rundir.open_no_links(host_path, _trusted_prefix(host_path))
    try:
        target = rundir.open_no_links(path)
        try:
            _mount(f"/proc/self/fd/{source}", f"/proc/self/fd/{target}", None, MS_BIND)
        finally:
            os.close(target)
    finally:
        os.close(source)
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | (MS_RDONLY if read_only else 0)
    # The new mount, as the path now leads to it (a link there fails, as above).
    bound = rundir.open_no_links(path)
    try:
        _mount(None, f"/proc/self/fd/{bound}", None, flags)
    finally:
        os.close(bound)


def unbind(path: str) -> None:
    """Remove a bind made by :func:`bind_run_dir` or :func:`bind_host`."""
    _detach(path)


def _kib(size_bytes: int) -> int:
    return max(1, size_bytes // 1024)

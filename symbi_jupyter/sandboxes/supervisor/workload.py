"""The workload process: confined, then exec'd. Either forked in advance to wait for
its request (:func:`await_request`), or a Python interpreter started in advance on the
bootstrap ``prestarted.py`` (:func:`start_prestarted`)."""

from __future__ import annotations

import gc
import os
import resource
import select
import socket
from typing import TYPE_CHECKING, Any

from . import channel, seccomp
from .proctree import (
    CLONE_NEWNET,
    PR_SET_NO_NEW_PRIVS,
    RLIMITS,
    default_signals,
    libc,
    prctl,
    soft_hard,
)

if TYPE_CHECKING:
    from .cgroups import RunCgroup

# Stands for the run's directory in a request's environment: the monitor makes the
# directory. NUL cannot occur in a real environment value.
RUN_DIR = "\0run_dir\0"
PRESTARTED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prestarted.py")
CELL_RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cellrun.py")
# A started interpreter takes a request only if these are what it was started with.
PROFILE_KEYS = (
    "executable",
    "argv0",
    "filename",
    "cell",
    "workdir",
    "env",
    "uid",
    "gid",
    "identity",
    "new_netns",
    "use_cgroup",
)


def profile_of(req: dict[str, Any]) -> dict[str, Any]:
    """What a started interpreter must have been made for to take ``req``."""
    return {key: req.get(key) for key in PROFILE_KEYS}


def cell_runner() -> str:
    """The cell runner's ``-c`` program (``cellrun.py``, then the call that runs the
    cell whose path follows it on the command line)."""
    with open(CELL_RUNNER) as f:
        return f.read() + "\n_symbi_cell()\n"


def code_arguments(path: str) -> list[str]:
    """The interpreter's arguments that run the code file at ``path``, in its working
    directory, at every tier: Python (``.py``) through the cell runner, which names
    the cell's frames by the file's name (``cell.py``); another interpreter on the
    file's name. Either way no directory shows in the code's messages."""
    if path.endswith(".py"):
        return ["-c", cell_runner(), path]
    return [os.path.basename(path)]


def run_environment(template: dict[str, str], run_dir: str) -> dict[str, str]:
    return {key: value.replace(RUN_DIR, run_dir) for key, value in template.items()}


def await_request(sock: socket.socket, cgroup: RunCgroup | None, home_netns: int | None) -> None:
    """In the pre-forked workload process: wait for the run's request, then confine
    this process and exec the code. Exits quietly if the monitor is discarded."""
    try:
        gc.disable()
        # Joining a v1 memory cgroup costs a quarter of a millisecond: pay it now.
        early = cgroup is not None and cgroup.joins_early
        if early and cgroup is not None:
            cgroup.join(os.getpid())
        received = channel.receive(sock, 2)
    except BaseException:  # nothing to report to: the monitor is gone
        os._exit(1)
    if received is None:
        os._exit(0)
    req, fds = received
    if early and cgroup is not None and not req.get("join_cgroup"):
        cgroup.leave(os.getpid())
    if home_netns is not None and not req.get("new_netns"):
        # Allowed the network: leave the empty namespace prepared for us, or fail
        # closed, visibly.
        if libc.setns(home_netns, CLONE_NEWNET) != 0:
            os.write(fds[1], b"symbi-jupyter: could not rejoin the host network namespace\n")
            os._exit(126)
    exec_workload(req, cgroup if req.get("join_cgroup") else None, *fds)


def exec_workload(
    req: dict[str, Any],
    cgroup: RunCgroup | None,
    out_fd: int,
    err_fd: int,
    in_fd: int | None = None,
) -> None:
    """In the workload process: confine, then exec. Never returns."""
    # A failure is the run's to report, on its stderr (fd 2 is the supervisor's
    # until the dup2 below).
    report_fd = err_fd
    try:
        os.setsid()
        if cgroup is not None:
            if cgroup.joins_early:
                # Pages this process touched while it waited are not the run's.
                cgroup.reset_peak()
            else:
                cgroup.join(os.getpid())
        for name, value in req.get("rlimits", {}).items():
            soft, hard = soft_hard(value)
            try:
                resource.setrlimit(RLIMITS[name], (soft, hard))
            except (OSError, ValueError) as exc:
                raise OSError(f"RLIMIT_{name.upper()} = {hard}: {exc}") from None
        os.chdir(req["cwd"])
        uid, gid = req.get("uid"), req.get("gid")
        if gid is not None:
            os.setgroups([])
            os.setgid(gid)
        if uid is not None:
            os.setuid(uid)
        if req.get("start_dir"):
            # As the run's user: a directory closed to it stays closed.
            os.chdir(req["start_dir"])
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        if seccomp.supported():
            seccomp.install()
        # A kernel's worker reads its requests on stdin; a run has none.
        os.dup2(in_fd if in_fd is not None else os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        report_fd = 2
        os.closerange(3, 65536)
        default_signals()
        os.execve(req["executable"], req["argv"], req["env"])
    except BaseException as exc:  # report anything, then die
        try:
            os.write(report_fd, f"symbi-jupyter: cannot start {req['argv'][0]}: {exc}\n".encode())
        finally:
            os._exit(127)


def start_prestarted(
    profile: dict[str, Any],
    run_dir: str,
    path: str,
    cgroup: RunCgroup | None,
    home_netns: int | None,
) -> tuple[int, socket.socket, tuple[int, int]]:
    """Start Python on the bootstrap at ``path``, in ``run_dir``, confined as the run
    will be except for its user and limits. Returns its pid, the monitor's end of its
    channel, and the read ends of the pipes it writes while starting."""
    env = run_environment(profile["env"], run_dir)
    argv = [profile["argv0"], path]
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            if cgroup is not None and profile.get("use_cgroup", True):
                cgroup.join(os.getpid())
            os.chdir(run_dir)
            if home_netns is not None and not profile["new_netns"]:
                # Made for runs allowed the network: out of the empty namespace.
                if libc.setns(home_netns, CLONE_NEWNET) != 0:
                    os._exit(126)
            prctl(PR_SET_NO_NEW_PRIVS, 1)
            if seccomp.supported():
                seccomp.install()
            # Pipes, as the run's will be: Python chooses its buffering at start.
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.dup2(theirs.fileno(), 3)
            for fd in range(4):
                os.set_inheritable(fd, True)
            os.closerange(4, 65536)
            default_signals()
            os.execve(profile["executable"], argv, env)
        finally:
            os._exit(127)
    for fd in (out_w, err_w):
        os.close(fd)
    theirs.close()
    return pid, ours, (out_r, err_r)


def bootstrap_source(uid: int | None, gid: int | None) -> bytes:
    """The started interpreter's code file until the request: the bootstrap, the cell
    runner it runs the cell with, and the call that makes it wait (then drop to
    ``uid:gid``)."""
    with open(PRESTARTED) as f:
        source = f.read()
    with open(CELL_RUNNER) as f:
        source += "\n\n" + f.read()
    source += f"\n_symbi_prestarted({uid!r}, {gid!r})\n"
    return source.encode()


def prestarted_ready(
    sock: socket.socket, startup_fds: tuple[int, ...], timeout: float = 10.0
) -> bool:
    """Whether the started interpreter is waiting in its bootstrap, silent."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    if not poller.poll(int(timeout * 1000)):
        return False
    try:
        if sock.recv(16) != b"r":
            return False
    except OSError:
        return False
    # Anything it wrote while starting (a warning from a .pth file, say) belongs to
    # the run: a fresh interpreter will write it again where the run sees it.
    return not any(select.select([fd], [], [], 0)[0] for fd in startup_fds)

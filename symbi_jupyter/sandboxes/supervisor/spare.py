"""A spare: a monitor forked before any request, holding what is slow to prepare (a
network namespace, the run's cgroups and private mounts, its uid lease, and for the
usual Python run the run directory and a started interpreter), so a request finds
them ready. :class:`~.monitor.Monitor` adds running the request."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import tempfile
from typing import Any

from . import identity, mounts, rundir
from .cgroups import RunCgroup
from .proctree import CLONE_NEWNET, PR_SET_CHILD_SUBREAPER, host_tag, libc, prctl
from .workload import await_request, bootstrap_source, start_prestarted

#: The run's tmpfs until its request sizes it.
PRESET_TMPFS_BYTES = 64 << 20


class Spare:
    """What one run's monitor prepares before its request arrives, and how it gives
    that up: for another request than it prepared for, or unused."""

    def __init__(
        self,
        probe: dict[str, Any],
        host_pid: int,
        inherited: tuple[int, ...] = (),
        profile: dict[str, Any] | None = None,
        identities: dict[str, Any] | None = None,
        private_mounts: bool = False,
    ) -> None:
        self.probe = probe
        self.host_pid = host_pid
        self.inherited = inherited
        self.cancel = False
        self.cgroup: RunCgroup | None = None
        self.cgroup_error: str | None = None
        self.home_netns: int | None = None
        if os.geteuid() == 0:
            # The workload inherits this empty namespace; the monitor needs no network.
            # Keep a way back for runs that are allowed the network.
            self.home_netns = os.open("/proc/self/ns/net", os.O_RDONLY)
            if libc.unshare(CLONE_NEWNET) != 0:
                os.close(self.home_netns)
                self.home_netns = None
        self.private_mounts = private_mounts
        self.home_mntns: int | None = None
        self.staging: str | None = None  # the run's tmpfs, where runs are private
        if os.geteuid() == 0 and private_mounts:
            # A way back, should the host mount something where runs must see it.
            self.home_mntns = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        self.mount_enforcement = self._private_mounts()
        if probe.get("version"):
            try:
                self.cgroup = RunCgroup.create(probe, f"{host_tag(host_pid)}-{os.getpid()}")
            except OSError as exc:
                self.cgroup_error = str(exc)
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        # Not SIG_IGN (inherited from the supervisor): that would reap the workload
        # behind our back and lose its exit status.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self.run_dir: str | None = None
        self.run_dir_kept = False
        self.workload_pid: int | None = None
        self.channel: socket.socket | None = None
        self.profile: dict[str, Any] | None = None  # what the started interpreter is for
        self.startup_fds: tuple[int, int] | None = None
        # This run's own host uid, leased now while idle (a /proc scan, about 2 ms).
        self.lease: identity.Lease | None = None
        self.lease_from: dict[str, Any] | None = None
        if identities is not None:
            with contextlib.suppress(OSError):
                self._lease(identities)
        if profile is not None:
            try:
                self._prestart(profile)
            except OSError:
                self._drop_prestarted()  # e.g. the working directory is gone
        if self.workload_pid is None:
            # Forked now, while idle, to wait for its request: a fork of a Python
            # process costs about a millisecond we need not spend later.
            self._fork_waiting()

    def _private_mounts(self) -> dict[str, str]:
        """The run's own /proc view and tmpfs (root only): made now, so that the
        workload and a started interpreter are born in them."""
        self.staging = None
        if os.geteuid() != 0:
            why = "not enforced: a mount namespace needs root"
        elif not self.private_mounts:
            why = "not enforced: NativeSandbox.private_mounts is off"
        else:
            try:
                self.staging = mounts.make_private(PRESET_TMPFS_BYTES)
            except OSError as exc:
                why = f"not enforced: {exc}"
        if self.staging is None:
            return {"process_view": why, "private_tmp": why, "disk": why}
        return {
            "process_view": "its own processes only (/proc hidepid=invisible)",
            "private_tmp": "/tmp (an overlay on the host's), /var/tmp, /dev/shm, "
            "/run/lock and IPC objects private, gone with the run",
        }

    def _renew_mounts(self) -> None:
        """Give up what was prepared in a namespace that no longer shows the host's
        working directory, and make a fresh one from the host's."""
        assert self.home_mntns is not None  # only where runs have a namespace of their own
        if self.profile is not None:
            self._drop_prestarted()
        elif self.channel is not None:
            assert self.workload_pid is not None  # forked with its channel
            self.channel.close()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.workload_pid, 0)
        if self.run_dir is not None:
            self._remove_run_dir(self.run_dir)
            self.run_dir = None
        mounts.rejoin(self.home_mntns)
        self.mount_enforcement = self._private_mounts()
        self._fork_waiting()

    # ------------------------------------------------------------------ the workload
    def _fork_waiting(self) -> None:
        self.channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.workload_pid = os.fork()
        if self.workload_pid == 0:
            for fd in self.inherited:
                os.close(fd)
            self.channel.close()
            await_request(theirs, self.cgroup, self.home_netns)
        theirs.close()

    def _make_run_dir(self, workdir: str, keep: bool = False) -> str:
        """A run directory, root's until the request: a run of the same user must not
        plant files (a module on sys.path[0], say) where the next run will look for
        them. Where runs are private it is on the run's tmpfs, unless the host keeps
        it (``keep``): then it is the host's."""
        prefix = f"run-{host_tag(self.host_pid)}-"
        if self.staging is None:
            self.run_dir = rundir.make(workdir, prefix)
            return self.run_dir
        path = tempfile.mkdtemp(prefix=prefix, dir=workdir)
        if keep:
            host = mounts.host_view(self.staging, path)
            if host != path:  # covered by a private directory: make it the host's
                os.mkdir(host, 0o700)
                mounts.bind_host(host, path, read_only=False)
        else:
            mounts.bind_run_dir(self.staging, path)
        os.mkdir(os.path.join(path, rundir.TMP), 0o700)
        self.run_dir, self.run_dir_kept = path, keep
        return path

    def _remove_run_dir(self, path: str) -> None:
        # fd-based, never follows the links the code may have planted
        shutil.rmtree(path, ignore_errors=True)
        if self.staging is not None:
            # What is left is the directory it was bound over.
            with contextlib.suppress(OSError):
                mounts.unbind(path)
            with contextlib.suppress(OSError):
                os.rmdir(path)

    def _lease(self, identities: dict[str, Any]) -> identity.Lease:
        """This run's uid from the block ``identities`` names (kept if it is from there)."""
        if self.lease is None or self.lease_from != identities:
            if self.lease is not None:
                self.lease.release()
            self.lease, self.lease_from = identity.lease(identities), identities
        return self.lease

    def _run_ids(self, spec: dict[str, Any]) -> tuple[int | None, int | None]:
        """The uid and gid a request or profile runs as: its own lease, a named
        user's, or None (no change: the host is not root, or runs as root)."""
        if spec.get("identity"):
            lease = self._lease(spec["identity"])
            return lease.uid, lease.gid
        return spec.get("uid"), spec.get("gid")

    def _prestart(self, profile: dict[str, Any]) -> None:
        """Start Python on the bootstrap in this spare's run directory: it runs as root
        until the request (so no run of another uid can signal or trace it) and gets
        the limits from here when the request comes."""
        uid, gid = self._run_ids(profile)
        run_dir = self._make_run_dir(profile["workdir"])
        path = os.path.join(run_dir, profile["filename"])
        os.close(rundir.write_file(run_dir, profile["filename"], bootstrap_source(uid, gid)))
        self.workload_pid, self.channel, self.startup_fds = start_prestarted(
            profile, run_dir, path, self.cgroup, self.home_netns
        )
        self.profile = profile

    def _drop_prestarted(self) -> None:
        """Kill an interpreter started for a request that cannot use it."""
        if self.workload_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.workload_pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.workload_pid, 0)
        for fd in self.startup_fds or ():
            os.close(fd)
        if self.channel is not None:
            self.channel.close()
        self.workload_pid = self.channel = self.profile = self.startup_fds = None

    def _fresh_instead(self) -> bool:
        """Give up the started interpreter for a waiting process that will exec a
        fresh one (returns False: the run is not served by a started interpreter)."""
        self._drop_prestarted()
        self._fork_waiting()
        return False

    def discard(self) -> None:
        """Release an unused spare: its workload, its run directory, its groups."""
        if self.profile is not None:
            self._drop_prestarted()
        elif self.channel is not None:
            assert self.workload_pid is not None  # forked with its channel
            self.channel.close()  # the waiting workload process sees EOF and exits
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.workload_pid, 0)
        if self.run_dir is not None:
            self._remove_run_dir(self.run_dir)
        if self.cgroup is not None:
            self.cgroup.remove()

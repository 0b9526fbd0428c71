"""Every cgroup the project makes or reads: a native run's groups (v1 or v2), the
parent a container runs under, the memory group of a microVM's VMM.

Stdlib only: the supervisor makes and limits a run's groups; the host reads a running
sandbox's figures from the same :class:`RunCgroup` between a kernel's cells.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any

from .proctree import host_tag, pid_alive, read_text

CGROUP_ROOT = "/sys/fs/cgroup"
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "freezer")
#: The parent of the native tier's run groups, below the supervisor's own group.
NATIVE_PARENT = "symbi-jupyter"
#: The parent of the container tiers' groups (at the root of each v1 hierarchy).
DOCKER_PARENT = "symbi-jupyter-docker"
#: The parent of the VMMs' memory groups.
VM_PARENT = "symbi-jupyter-vm"


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _number(text: str | None) -> int | None:
    text = (text or "").strip()
    return int(text) if text.isdigit() else None


def _keyed(text: str | None) -> dict[str, int]:
    """Parse ``key value`` lines (memory.events, pids.events, oom_control, cpu.stat)."""
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _own_cgroup_paths() -> dict[str, str]:
    """Map controller (or "" for cgroup v2) -> this process's cgroup path."""
    paths: dict[str, str] = {}
    for line in (read_text("/proc/self/cgroup") or "").splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            paths[""] = path
        for name in controllers.split(","):
            if name:
                paths[name] = path
    return paths


def probe_cgroups() -> dict[str, Any]:
    """Find where per-run cgroups can be created. Returns a description used by the
    host to report enforcement, and by monitors to create the run's groups."""
    own = _own_cgroup_paths()
    v1: dict[str, str] = {}
    for ctrl in V1_CONTROLLERS:
        base = os.path.join(CGROUP_ROOT, ctrl)
        if ctrl in own and os.path.isfile(os.path.join(base, "cgroup.procs")):
            parent = os.path.join(base + own[ctrl], NATIVE_PARENT)
            try:
                os.makedirs(parent, exist_ok=True)
                probe = os.path.join(parent, f"probe-{os.getpid()}")
                os.mkdir(probe)
                os.rmdir(probe)
                v1[ctrl] = parent
            except OSError:
                pass
    if v1:
        return {"version": 1, "parents": v1}
    if "" in own:
        for unified in (CGROUP_ROOT, os.path.join(CGROUP_ROOT, "unified")):
            ctl = os.path.join(unified + own[""], "cgroup.subtree_control")
            if not os.path.isfile(os.path.join(unified, "cgroup.controllers")):
                continue
            enabled = set((read_text(ctl) or "").split())
            wanted = [c for c in ("memory", "pids", "cpu") if c in enabled]
            parent = os.path.join(unified + own[""], NATIVE_PARENT)
            try:
                os.makedirs(parent, exist_ok=True)
                sub = os.path.join(parent, "cgroup.subtree_control")
                for c in wanted:
                    _write(sub, f"+{c}")
            except OSError:
                continue
            if wanted:
                return {"version": 2, "parents": {"": parent}, "controllers": wanted}
    return {"version": None, "parents": {}}


class RunCgroup:
    """The cgroups of one sandbox: one directory per v1 controller, or one v2 group."""

    def __init__(self, version: int | None, paths: dict[str, str], controllers: Any = None) -> None:
        self.version = version
        self.paths = dict(paths)
        self.controllers = set(controllers or ()) if version == 2 else set(self.paths)

    @classmethod
    def create(cls, probe: dict[str, Any], name: str) -> RunCgroup:
        """Make the groups ``name`` under the parents the probe found."""
        paths: dict[str, str] = {}
        for ctrl, parent in probe.get("parents", {}).items():
            path = os.path.join(parent, name)
            os.mkdir(path)
            paths[ctrl] = path
        return cls(probe.get("version"), paths, probe.get("controllers", []))

    @classmethod
    def from_report(cls, report: dict[str, Any]) -> RunCgroup:
        """The group a monitor's ``started`` event describes (:meth:`report`)."""
        return cls(report["version"], report["paths"], report.get("controllers"))

    @classmethod
    def v1_parent(cls, parent: str) -> RunCgroup:
        """The v1 group ``parent`` (a path such as ``/symbi-jupyter-docker/x``) in every
        hierarchy, as Docker makes it for a container's ``cgroup_parent``."""
        try:
            controllers = [
                c for c in os.listdir(CGROUP_ROOT) if os.path.isdir(os.path.join(CGROUP_ROOT, c))
            ]
        except OSError:
            controllers = []
        return cls(1, {c: os.path.join(CGROUP_ROOT, c, parent.lstrip("/")) for c in controllers})

    def report(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "paths": self.paths,
            "controllers": sorted(self.controllers),
        }

    def child(self, name: str) -> RunCgroup:
        return RunCgroup(
            self.version,
            {c: os.path.join(p, name) for c, p in self.paths.items()},
            self.controllers,
        )

    def _file(self, ctrl: str, v1_name: str, v2_name: str) -> str | None:
        if self.version == 1 and ctrl in self.paths and v1_name:
            return os.path.join(self.paths[ctrl], v1_name)
        if self.version == 2 and ctrl in self.controllers and v2_name:
            return os.path.join(self.paths[""], v2_name)
        return None

    def _read(self, ctrl: str, v1_name: str, v2_name: str) -> str | None:
        path = self._file(ctrl, v1_name, v2_name)
        return read_text(path) if path else None

    def apply(self, memory_bytes: int | None, pids: int | None, cores: float | None) -> dict:
        """Set limits; return {limit: "cgroup"} for each one applied."""
        done: dict[str, str] = {}
        if memory_bytes:
            path = self._file("memory", "memory.limit_in_bytes", "memory.max")
            if path:
                _write(path, str(memory_bytes))
                # Without swap accounting a v1 group could page out past its limit.
                for extra in ("memory.memsw.limit_in_bytes", "memory.swap.max"):
                    swap = self._file("memory", extra, extra)
                    if swap and os.path.exists(swap):
                        with contextlib.suppress(OSError):
                            _write(swap, str(memory_bytes) if "memsw" in extra else "0")
                done["memory"] = "cgroup"
        if pids:
            path = self._file("pids", "pids.max", "pids.max")
            if path:
                _write(path, str(pids))
                done["processes"] = "cgroup"
        if cores:
            period = 100_000
            quota = max(1000, int(cores * period))
            if self.version == 1 and "cpu" in self.paths:
                _write(os.path.join(self.paths["cpu"], "cpu.cfs_period_us"), str(period))
                _write(os.path.join(self.paths["cpu"], "cpu.cfs_quota_us"), str(quota))
                done["cpu_cores"] = "cgroup"
            elif self.version == 2 and "cpu" in self.controllers:
                _write(os.path.join(self.paths[""], "cpu.max"), f"{quota} {period}")
                done["cpu_cores"] = "cgroup"
        return done

    def join(self, pid: int) -> None:
        for path in self.paths.values():
            _write(os.path.join(path, "cgroup.procs"), str(pid))

    def leave(self, pid: int) -> None:
        """Move ``pid`` back to the cgroups the supervisor runs in."""
        for path in self.paths.values():
            _write(os.path.join(os.path.dirname(os.path.dirname(path)), "cgroup.procs"), str(pid))

    @property
    def joins_early(self) -> bool:
        """Whether the workload may join while it waits: only where the peak can then
        be reset before exec (v1; v2's memory.peak resets per open file only)."""
        return self.version == 1

    def reset_peak(self) -> bool:
        """Start the peak afresh (v1 only); whether it was."""
        path = self._file("memory", "memory.max_usage_in_bytes", "")
        if not path:
            return False
        try:
            _write(path, "0")
            return True
        except OSError:
            return False

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.paths.values():
            for line in (read_text(os.path.join(path, "cgroup.procs")) or "").split():
                found.add(int(line))
        return found

    def freeze(self, frozen: bool) -> bool:
        if self.version == 1 and "freezer" in self.paths:
            path, value = (
                os.path.join(self.paths["freezer"], "freezer.state"),
                ("FROZEN" if frozen else "THAWED"),
            )
        elif self.version == 2:
            path, value = os.path.join(self.paths[""], "cgroup.freeze"), "1" if frozen else "0"
        else:
            return False
        try:
            _write(path, value)
            return True
        except OSError:
            return False

    def kill_all(self) -> None:
        if self.version == 2:
            try:
                _write(os.path.join(self.paths[""], "cgroup.kill"), "1")
                return
            except OSError:
                pass
        for _ in range(100):
            if not self.pids():
                return
            # Frozen, a fork bomb cannot fork between our listing and our kill.
            frozen = self.freeze(True)
            pids = self.pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if frozen:
                self.freeze(False)
            if not pids:
                return
            time.sleep(0.001)

    def memory_usage(self) -> int | None:
        return _number(self._read("memory", "memory.usage_in_bytes", "memory.current"))

    def peak_memory(self) -> int | None:
        return _number(self._read("memory", "memory.max_usage_in_bytes", "memory.peak"))

    def oom_kills(self) -> int:
        if self.version == 1 and "memory" in self.paths:
            control = _keyed(self._read("memory", "memory.oom_control", ""))
            if "oom_kill" in control:
                return control["oom_kill"]
            return _number(self._read("memory", "memory.failcnt", "")) or 0
        return _keyed(self._read("memory", "", "memory.events")).get("oom_kill", 0)

    def pids_limit_hits(self) -> int:
        return _keyed(self._read("pids", "pids.events", "pids.events")).get("max", 0)

    def process_count(self) -> int | None:
        return _number(self._read("pids", "pids.current", "pids.current"))

    def cpu_usage_seconds(self) -> float | None:
        if self.version == 1:
            ns = _number(self._read("cpuacct", "cpuacct.usage", ""))
            return ns / 1e9 if ns is not None else None
        if self.version == 2:
            stat = _keyed(read_text(os.path.join(self.paths[""], "cpu.stat")))
            if "usage_usec" in stat:
                return stat["usage_usec"] / 1e6
        return None

    def cpu_user_system(self) -> tuple[float | None, float | None]:
        """User and system CPU seconds, where the group tells them apart."""
        if self.version == 1:
            user = _number(self._read("cpuacct", "cpuacct.usage_user", ""))
            system = _number(self._read("cpuacct", "cpuacct.usage_sys", ""))
            return (
                user / 1e9 if user is not None else None,
                system / 1e9 if system is not None else None,
            )
        stat = _keyed(self._read("cpu", "", "cpu.stat"))
        return (
            stat["user_usec"] / 1e6 if "user_usec" in stat else None,
            stat["system_usec"] / 1e6 if "system_usec" in stat else None,
        )

    def usage(self) -> dict[str, Any]:
        """memory_bytes, peak_memory_bytes and cpu_seconds now; {} if unreadable or if
        no process is left (the figures of an emptied group describe no run)."""
        if self.process_count() == 0:
            return {}
        current = self.memory_usage()
        if current is None:
            return {}
        return {
            "memory_bytes": current,
            "peak_memory_bytes": self.peak_memory(),
            "cpu_seconds": self.cpu_usage_seconds(),
            "method": "cgroup",
        }

    def subgroups(self) -> set[str]:
        """The names of the groups directly below this one, in any hierarchy."""
        names: set[str] = set()
        for path in self.paths.values():
            with contextlib.suppress(OSError):
                names.update(e.name for e in os.scandir(path) if e.is_dir())
        return names

    def remove(self) -> None:
        for path in self.paths.values():
            remove_cgroup_dir(path)


def remove_cgroup_dir(path: str, attempts: int = 50, pause: float = 0.005) -> None:
    """rmdir a cgroup, retrying while the kernel still holds it (EBUSY just after its
    last task exits); a missing one is fine."""
    for _ in range(attempts):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(pause)


def reap_stale(probe: dict[str, Any]) -> list[str]:
    """Remove native run groups left by a host of this pid namespace that died without
    its monitors cleaning up, killing anything still inside. Groups of other
    namespaces belong to hosts we cannot see and are left alone."""
    namespace = host_tag().split("-")[0]
    stale: dict[str, dict[str, str]] = {}
    for ctrl, parent in probe.get("parents", {}).items():
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for name in names:
            parts = name.split("-")
            path = os.path.join(parent, name)
            if (
                len(parts) == 3
                and parts[0] == namespace
                and parts[1].isdigit()
                and os.path.isdir(path)
                and not pid_alive(int(parts[1]))
            ):
                stale.setdefault(name, {})[ctrl] = path
    for paths in stale.values():
        group = RunCgroup(probe.get("version"), paths, probe.get("controllers"))
        group.kill_all()
        group.remove()
    return sorted(stale)


def v1_memory_group(parent: str, name: str, limit_bytes: int) -> RunCgroup | None:
    """A new v1 memory group ``parent/name`` limited to ``limit_bytes`` (memory and
    swap); None where the memory hierarchy is not writable or the group exists already
    (its figures would not be this run's alone)."""
    base = os.path.join(CGROUP_ROOT, "memory")
    if not os.access(base, os.W_OK):
        return None
    path = os.path.join(base, parent, name)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.mkdir(path)
        _write(os.path.join(path, "memory.limit_in_bytes"), str(limit_bytes))
        with contextlib.suppress(OSError):
            _write(os.path.join(path, "memory.memsw.limit_in_bytes"), str(limit_bytes))
    except OSError:
        return None
    return RunCgroup(1, {"memory": path})


def stale_groups(parent: str) -> list[str]:
    """Groups ``<namespace>-<pid>-...`` under ``parent`` in any v1 hierarchy whose host
    (of this pid namespace) is dead."""
    namespace = host_tag().split("-")[0]
    found = []
    try:
        controllers = os.listdir(CGROUP_ROOT)
    except OSError:
        return []
    for ctrl in controllers:
        base = os.path.join(CGROUP_ROOT, ctrl, parent)
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            ns, _, rest = name.partition("-")
            pid = rest.split("-")[0]
            if ns == namespace and pid.isdigit() and not pid_alive(int(pid)):
                found.append(os.path.join(base, name))
    return found

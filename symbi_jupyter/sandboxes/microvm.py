"""Tier3: a fresh, single-use microVM per run (or per kernel session).

The guest (kernel, read-only root with python3, an init) is built by
``symbi-jupyter image build --tier3``. Its init runs the worker agent
(:mod:`.worker.agent`) as an unprivileged user on a virtio-serial port that QEMU binds to a
unix socket here: the code and its environment travel over that channel, never on the
kernel command line. The VM's memory and vCPUs are the limits; a timeout destroys the
VM. VMM drivers sit behind :class:`VMMDriver`: QEMU ``-M microvm`` (KVM where a probe
boot proves it works, else TCG emulation) and Firecracker (hosts with real KVM).
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import dataclasses
import json
import math
import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from traitlets import Bool, Enum, Float, Int, Unicode

from ..errors import ConfigError, TierUnavailable
from ..limits import ResourceLimits
from ..result import ExecutionResult
from ..tiers import SecurityTier
from ._evidence import Evidence, killed_by, limits_reached
from ._pool import ReadyPool
from ._streams import CappedStream
from .base import Availability, ExecutionRequest, Sandbox, WorkerHandle
from .supervisor.cgroups import VM_PARENT, RunCgroup, stale_groups, v1_memory_group
from .supervisor.identity import Lease
from .supervisor.proctree import PR_SET_NO_NEW_PRIVS, host_tag, pid_alive
from .worker import WorkerSession, worker_source

MiB = 1024 * 1024
#: The smallest guest that boots python3 here.
MIN_GUEST_MIB = 128
PORT_NAME = "symbi.agent"
_PR_SET_PDEATHSIG = 1


def default_artifacts_dir() -> Path:
    """Where ``image build --tier3`` puts the guest unless told otherwise:
    ``/var/lib/symbi-jupyter/microvm`` for root, else under ``$XDG_DATA_HOME``."""
    if os.geteuid() == 0:
        return Path("/var/lib/symbi-jupyter/microvm")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "symbi-jupyter" / "microvm"


@dataclasses.dataclass
class VMSpec:
    """One VM to boot: the guest's files, its size, and where its channel lives."""

    kernel: Path
    initrd: Path | None
    rootfs: Path
    rootfs_read_only: bool
    kernel_args: str
    microvm_acpi: bool
    mem_mib: int
    vcpus: int
    accel: str
    run_dir: Path
    #: descriptors the host opened for the VMM: the agent's listening socket and the
    #: console file (QEMU), so that it never opens a path in the run directory
    agent_fd: int | None = None
    console_fd: int | None = None
    #: and the guest's files ("kernel", "initrd", "rootfs"), which its own uid may not
    #: be able to reach by path
    file_fds: dict[str, int] = dataclasses.field(default_factory=dict)

    def path_of(self, name: str) -> str:
        """How the VMM names a guest file: its descriptor where the host opened it."""
        if name in self.file_fds:
            return f"/proc/self/fd/{self.file_fds[name]}"
        return str(getattr(self, name))

    @property
    def socket(self) -> Path:
        return self.run_dir / "agent.sock"

    @property
    def console(self) -> Path:
        return self.run_dir / "console.log"


class VMMDriver(abc.ABC):
    """One virtual machine monitor: how to find it, start a VM, reach the agent."""

    name: ClassVar[str]

    def __init__(self, binary: str) -> None:
        self.binary = binary

    def path(self) -> str | None:
        return shutil.which(self.binary)

    @abc.abstractmethod
    def command(self, spec: VMSpec) -> list[str]:
        """The argv that boots ``spec``."""

    @abc.abstractmethod
    def label(self, accel: str) -> str:
        """What ran the code, in words (shown in the result)."""


class QEMUDriver(VMMDriver):
    """QEMU's ``microvm`` machine: virtio-mmio devices only, no PCI, no firmware."""

    name = "qemu"

    def command(self, spec: VMSpec) -> list[str]:
        argv = [
            self.path() or self.binary,
            "-M",
            f"microvm,acpi={'on' if spec.microvm_acpi else 'off'}",
            "-cpu",
            "max" if spec.accel == "tcg" else "host",
            "-accel",
            spec.accel,
            "-m",
            str(spec.mem_mib),
            "-smp",
            str(spec.vcpus),
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-kernel",
            spec.path_of("kernel"),
            "-append",
            spec.kernel_args,
            *(
                ["-add-fd", f"fd={spec.file_fds['rootfs']},set=2"]
                if "rootfs" in spec.file_fds
                else []
            ),
            "-drive",
            "id=root,format=raw,if=none,file="
            + ("/dev/fdset/2" if "rootfs" in spec.file_fds else str(spec.rootfs))
            + (",readonly=on" if spec.rootfs_read_only else ""),
            "-device",
            "virtio-blk-device,drive=root",
            "-device",
            "virtio-serial-device",
            # The host's own listening socket and console file, opened before QEMU
            # starts: the VMM needs no access to the run directory.
            "-chardev",
            f"socket,id=agent,fd={spec.agent_fd},server=on,wait=off",
            "-device",
            f"virtserialport,chardev=agent,name={PORT_NAME}",
            "-add-fd",
            f"fd={spec.console_fd},set=1",
            "-serial",
            "file:/dev/fdset/1",
            # No new processes, no privileges, no obsolete or resource-control calls.
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ]
        if spec.initrd:
            argv[argv.index("-append") : argv.index("-append")] = [
                "-initrd",
                spec.path_of("initrd"),
            ]
        return argv

    def label(self, accel: str) -> str:
        return "QEMU microvm · " + ("KVM" if accel == "kvm" else "emulated (TCG)")


class FirecrackerDriver(VMMDriver):
    """Firecracker from a config file (``--no-api``): KVM only. The agent's channel is
    the guest's serial console on Firecracker's own stdio."""

    name = "firecracker"

    def command(self, spec: VMSpec) -> list[str]:
        config = {
            "boot-source": {
                "kernel_image_path": str(spec.kernel),
                "boot_args": spec.kernel_args,
                **({"initrd_path": str(spec.initrd)} if spec.initrd else {}),
            },
            "drives": [
                {
                    "drive_id": "rootfs",
                    "path_on_host": str(spec.rootfs),
                    "is_root_device": True,
                    "is_read_only": spec.rootfs_read_only,
                }
            ],
            "machine-config": {"vcpu_count": spec.vcpus, "mem_size_mib": spec.mem_mib},
        }
        config["boot-source"]["boot_args"] += " symbi.channel=serial"
        path = spec.run_dir / "firecracker.json"
        path.write_text(json.dumps(config))
        return [self.path() or self.binary, "--no-api", "--config-file", str(path)]

    def label(self, accel: str) -> str:
        return "Firecracker · KVM"


class MicroVMSandbox(Sandbox):
    """Runs each request in a fresh microVM that is destroyed afterwards."""

    tier = SecurityTier.TIER3

    artifacts_dir = Unicode(
        "",
        config=True,
        help="""Directory of the guest built by `symbi-jupyter image build --tier3`
        (its manifest.json names the files). '' = the build's default directory
        (/var/lib/symbi-jupyter/microvm as root, else ~/.local/share/symbi-jupyter/microvm).""",
    )
    kernel_image_path = Unicode(
        "",
        config=True,
        help="Guest kernel (uncompressed ELF vmlinux); '' = the artefacts' manifest. "
        "Symbiont: [sandbox.firecracker] kernel_image_path.",
    )
    rootfs_path = Unicode(
        "",
        config=True,
        help="Guest root filesystem image; '' = the artefacts' manifest. "
        "Symbiont: [sandbox.firecracker] rootfs_path.",
    )
    rootfs_read_only = Bool(
        True,
        config=True,
        help="Attach the root filesystem read-only (Symbiont: rootfs_read_only).",
    )
    vcpus = Int(
        0,
        config=True,
        help="""vCPUs of each VM; 0 = the run's max_cpu_cores, rounded up and capped at
        this host's cores (Symbiont: [sandbox.firecracker] vcpus).""",
    )
    mem_mib = Int(
        0,
        config=True,
        help="""Guest memory in MiB; 0 = the run's max_memory_mb, which it enforces
        exactly (Symbiont: [sandbox.firecracker] mem_mib; at least 128).""",
    )
    vmm = Enum(
        ["auto", "qemu", "firecracker"],
        "auto",
        config=True,
        help="""Virtual machine monitor. 'auto': Firecracker where it is installed and KVM
        works, else QEMU's microvm machine.""",
    )
    acceleration = Enum(
        ["auto", "kvm", "tcg"],
        "auto",
        config=True,
        help="""'auto' boots a probe VM under KVM once (the result is cached) and uses KVM
        only if the guest really came up, else TCG software emulation; 'kvm' or 'tcg'
        force one (a forced KVM that cannot boot fails, it does not fall back).""",
    )
    qemu_binary = Unicode("qemu-system-x86_64", config=True, help="The QEMU system emulator.")
    firecracker_binary = Unicode(
        "firecracker",
        config=True,
        help="Firecracker binary (Symbiont: [sandbox.firecracker] firecracker_binary).",
    )
    boot_timeout_seconds = Float(
        60.0,
        config=True,
        help="Seconds a VM has to boot and start its agent (not part of the run's timeout).",
    )
    vmm_memory_overhead_mb = Int(
        512,
        config=True,
        help="""The VMM process's host memory is bounded by a cgroup at guest memory plus
        this much (QEMU under TCG uses about 200-430 MB for a 256 MB guest).""",
    )
    pool_size = Int(
        1,
        config=True,
        help="""VMs booted in advance, per guest size and limits, each waiting with its
        agent ready for exactly one run (never reused), so a cell waits only for the
        agent's round trip. 0 disables the pool. Pooled VMs die with the kernel.""",
    )
    run_root = Unicode(
        "",
        config=True,
        help="Where each VM's socket, console log and config live ('' = the temp dir).",
    )

    _probe_cache: ClassVar[dict[tuple, tuple[str, str]]] = {}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._counter = 0
        self._lock = threading.Lock()
        self._reaped = False
        # A pooled VM may have died while it waited: such a one is closed, not taken.
        self._pool: ReadyPool[Any] = ReadyPool("vm", lambda s: s.close(), lambda s: s.alive)

    # ------------------------------------------------------------------ guest files
    def _artifacts(self) -> Path:
        return Path(self.artifacts_dir) if self.artifacts_dir else default_artifacts_dir()

    def manifest(self) -> dict[str, Any]:
        """The guest's manifest, with the trait overrides applied; TierUnavailable
        (with the command that builds it) when something is missing."""
        base = self._artifacts()
        build = "symbi-jupyter image build --tier3 (as root: symbi-jupyter setup)"
        try:
            manifest = json.loads((base / "manifest.json").read_text())
        except (OSError, ValueError):
            if not (self.kernel_image_path and self.rootfs_path):
                raise TierUnavailable(
                    f"{self.tier.display_name}: no guest at {base} (manifest.json missing); "
                    f"build it with: {build}"
                ) from None
            manifest = {"kernel_args": "root=/dev/vda ro console=ttyS0", "microvm_acpi": False}
        files = {
            "kernel": Path(self.kernel_image_path)
            if self.kernel_image_path
            else base / manifest["kernel"],
            "rootfs": Path(self.rootfs_path) if self.rootfs_path else base / manifest["rootfs"],
            "initrd": base / manifest["initrd"] if manifest.get("initrd") else None,
        }
        for name, path in files.items():
            if path is not None and not path.is_file():
                raise TierUnavailable(
                    f"{self.tier.display_name}: the guest {name} {path} is missing; build it "
                    f"with: {build}"
                )
        return {**manifest, **files}

    # ------------------------------------------------------------------ VMM choice
    def _drivers(self) -> list[VMMDriver]:
        qemu, firecracker = QEMUDriver(self.qemu_binary), FirecrackerDriver(self.firecracker_binary)
        return {"qemu": [qemu], "firecracker": [firecracker]}.get(self.vmm, [firecracker, qemu])

    def _choose(self, manifest: dict[str, Any]) -> tuple[VMMDriver, str, str]:
        """(driver, acceleration, why): a VMM that is installed, and the acceleration
        a probe boot proved (or the configuration forced)."""
        missing = []
        for driver in self._drivers():
            if driver.path() is None:
                missing.append(f"{driver.name} ({driver.binary} not found)")
                continue
            if isinstance(driver, FirecrackerDriver):
                ok, why = self._kvm_works(QEMUDriver(self.qemu_binary), manifest)
                if not ok:
                    missing.append(f"firecracker (needs KVM: {why})")
                    continue
                return driver, "kvm", why
            if self.acceleration == "tcg":
                return driver, "tcg", "TCG forced (MicroVMSandbox.acceleration)"
            ok, why = self._kvm_works(driver, manifest)
            if ok:
                return driver, "kvm", why
            if self.acceleration == "kvm":
                missing.append(f"qemu with KVM (forced, but {why})")
                continue
            return driver, "tcg", why
        fix = (
            "install QEMU (apt-get install qemu-system-x86, or symbi-jupyter setup as root)"
            if self.vmm != "firecracker"
            else "install Firecracker on a host with real KVM (VMX/SVM), or set "
            "MicroVMSandbox.vmm = 'qemu'"
        )
        raise TierUnavailable(
            f"{self.tier.display_name}: no usable VMM: {'; '.join(missing)}; {fix}"
        )

    def _kvm_works(self, qemu: VMMDriver, manifest: dict[str, Any]) -> tuple[bool, str]:
        """Probe, not guess: boot the guest under KVM once and see its agent answer.
        A /dev/kvm that exists may still be unable to run guests (nested setups)."""
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            return False, "/dev/kvm is missing or not accessible"
        if qemu.path() is None:
            return False, "QEMU is needed for the KVM probe boot"
        key = (str(manifest["kernel"]), os.stat(manifest["kernel"]).st_mtime, qemu.path())
        if key not in self._probe_cache:
            request = _probe_request()

            def boot(on_output):
                return self._boot(
                    qemu,
                    "kvm",
                    manifest,
                    dataclasses.replace(request, on_output=on_output),
                    timeout=15,
                )

            try:
                WorkerSession(boot, self.tier, request.limits, start_timeout_seconds=15).close()
                self._probe_cache[key] = ("kvm", "a probe VM booted under KVM")
            except (TierUnavailable, OSError) as exc:
                why = f"/dev/kvm exists but a probe VM did not boot under it ({exc})"
                if os.geteuid() == 0 and not _kvm_groups():
                    why += (
                        "; the VMM runs as a uid of its own, which needs /dev/kvm open "
                        "to a group (e.g. chgrp kvm /dev/kvm && chmod 660 /dev/kvm)"
                    )
                self._probe_cache[key] = ("tcg", why)
        accel, why = self._probe_cache[key]
        return accel == "kvm", why

    # ------------------------------------------------------------------ availability
    def availability(self) -> Availability:
        try:
            manifest = self.manifest()
            driver, accel, why = self._choose(manifest)
        except TierUnavailable as exc:
            return Availability(False, str(exc))
        return Availability(
            True,
            "",
            {
                "vmm": driver.label(accel),
                "acceleration": why,
                "kernel": str(manifest["kernel"]),
                "rootfs": str(manifest["rootfs"]),
            },
        )

    # ------------------------------------------------------------------ running
    def start_worker(self, request: ExecutionRequest) -> WorkerHandle:
        return self._start(request, one_shot=False)

    def _refuse_network(self, request: ExecutionRequest) -> None:
        """Checked before a pooled VM is taken as well as before a boot."""
        if request.limits.network:
            raise TierUnavailable(
                f"{self.tier.display_name} has no network device in this version; "
                "run without --network"
            )

    def _start(self, request: ExecutionRequest, one_shot: bool) -> _VMWorker:
        self._refuse_network(request)
        manifest = self.manifest()
        driver, accel, _ = self._choose(manifest)
        return self._boot(
            driver, accel, manifest, request, timeout=self.boot_timeout_seconds, one_shot=one_shot
        )

    def _boot(
        self,
        driver: VMMDriver,
        accel: str,
        manifest: dict[str, Any],
        request: ExecutionRequest,
        timeout: float,
        one_shot: bool = True,
    ) -> _VMWorker:
        self._reap()
        with self._lock:
            self._counter += 1
            n = self._counter
        root = Path(self.run_root or tempfile.gettempdir())
        run_dir = Path(tempfile.mkdtemp(prefix=f"symbi-vm-{host_tag()}-{n}-", dir=root))
        try:
            spec = self.vm_spec(manifest, request.limits, accel, run_dir, one_shot=one_shot)
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        mem, vcpus = spec.mem_mib, spec.vcpus
        qemu = not isinstance(driver, FirecrackerDriver)
        lease = self.run_identities.lease() if qemu and os.geteuid() == 0 else None
        cgroup = self._vmm_cgroup(n, mem)
        enforcement = {
            "memory": f"guest memory ({mem} MiB)",
            "cpu_cores": f"{vcpus} vCPU" + ("s" if vcpus > 1 else ""),
            "network": "none (no network device)",
            "processes": "RLIMIT_NPROC inside the guest",
            "file_size": "RLIMIT_FSIZE inside the guest",
            "disk": "one tmpfs inside the guest for /workspace, /tmp and /dev/shm"
            + (f" ({request.limits.max_disk_mb:g} MB in all)" if request.limits.max_disk_mb else "")
            + ", the root read-only",
            "open_files": "RLIMIT_NOFILE inside the guest",
            "vmm_memory": f"cgroup ({mem + self.vmm_memory_overhead_mb} MiB)"
            if cgroup
            else "not enforced: no writable memory cgroup",
            "vmm_privileges": "a uid of its own, no capabilities, seccomp (-sandbox on)"
            if lease
            else "seccomp (-sandbox on), as this user"
            if qemu
            else "not deprivileged: Firecracker's jailer is not used yet",
        }
        passed: list[int] = []
        try:
            if qemu:
                passed = _open_for_vmm(spec)
            proc = _launch(
                driver.command(spec),
                cgroup,
                spec.run_dir,
                stdio=not qemu,
                lease=lease,
                pass_fds=passed,
            )
        except OSError as exc:
            shutil.rmtree(run_dir, ignore_errors=True)
            if cgroup is not None:
                cgroup.remove()
            if lease is not None:
                lease.release()
            raise TierUnavailable(
                f"{self.tier.display_name}: cannot start {driver.name}: {exc}"
            ) from None
        finally:
            for fd in passed:
                os.close(fd)  # the VMM has its own copies
        worker = _VMWorker(
            self, proc, spec, cgroup, request, enforcement, driver.label(accel), not qemu, lease
        )
        try:
            worker.connect(deadline=time.monotonic() + timeout)
            try:
                worker.send(f"{len(request.code)}\n".encode() + request.code)
            except OSError as exc:
                # The VMM can die between opening the socket and the guest's agent
                # reading it (a KVM that cannot run this guest does just that).
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.proc.wait(timeout=5)
                raise TierUnavailable(
                    f"the VMM exited while starting ({worker.proc.returncode}, {exc}): "
                    f"{worker.vmm_log() or worker.console_tail() or 'no output'}"
                ) from None
        except BaseException:
            worker.stop()
            raise
        return worker

    def vm_spec(
        self,
        manifest: dict[str, Any],
        limits: ResourceLimits,
        accel: str,
        run_dir: Path,
        one_shot: bool = True,
    ) -> VMSpec:
        """The VM that runs under ``limits`` the guest of ``manifest`` (:meth:`manifest`):
        its size, and its kernel command line, the manifest's plus numbers only (the
        rlimits, and under TCG this host's TSC frequency). ``one_shot``: one run, so
        ``max_cpu_seconds`` becomes the worker's RLIMIT_CPU (not for a session)."""
        mem = self.mem_mib or int(limits.max_memory_mb or 512)
        if mem < MIN_GUEST_MIB:
            raise ConfigError(
                f"{self.tier.display_name} needs at least {MIN_GUEST_MIB} MB of guest memory "
                f"(asked: {mem} MB): the guest kernel and python3 must fit"
            )
        vcpus = self.vcpus or max(1, math.ceil(limits.max_cpu_cores or 1))
        vcpus = min(vcpus, os.cpu_count() or 1)
        rlimits = {
            "nproc": limits.max_processes,
            "fsize": int(limits.max_file_size_mb * MiB) if limits.max_file_size_mb else None,
            "nofile": limits.max_open_files,
            # KiB: the guest's one tmpfs for what the run writes.
            "disk": int(limits.max_disk_mb * 1024) if limits.max_disk_mb else None,
            # RLIMIT_CPU is per process lifetime: right for one run, wrong for a
            # session of many cells.
            "cpu": math.ceil(limits.max_cpu_seconds)
            if limits.max_cpu_seconds and one_shot
            else None,
        }
        host_args = [f"symbi.{k}={v}" for k, v in rlimits.items() if v]
        host_args += ["panic=-1", "random.trust_cpu=on"]
        if accel == "tcg":
            # TCG's TSC calibration hangs about half the boots without these.
            host_args += [f"tsc_early_khz={_host_tsc_khz()}", "tsc=reliable"]
        return VMSpec(
            kernel=manifest["kernel"],
            initrd=manifest.get("initrd"),
            rootfs=manifest["rootfs"],
            rootfs_read_only=self.rootfs_read_only,
            kernel_args=" ".join([manifest.get("kernel_args", ""), *host_args]).strip(),
            microvm_acpi=bool(manifest.get("microvm_acpi")),
            mem_mib=mem,
            vcpus=vcpus,
            accel=accel,
            run_dir=run_dir,
        )

    def _vmm_cgroup(self, n: int, mem: int) -> RunCgroup | None:
        """A v1 memory cgroup bounding the VMM process (guest memory + overhead)."""
        return v1_memory_group(
            VM_PARENT, f"{host_tag()}-{n}", (mem + self.vmm_memory_overhead_mb) * MiB
        )

    def _reap(self) -> None:
        """Remove the run directories and cgroups of kernels (of this pid namespace)
        that died; their VMs died with them (PDEATHSIG)."""
        if self._reaped:
            return
        self._reaped = True
        namespace = host_tag().split("-")[0]
        root = Path(self.run_root or tempfile.gettempdir())
        for path in root.glob(f"symbi-vm-{namespace}-*"):
            pid = path.name.removeprefix("symbi-vm-").split("-")[1]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)
                self.log.warning("removed %s left by a dead kernel", path)
        for group in stale_groups(VM_PARENT):
            RunCgroup(1, {"memory": group}).remove()
            self.log.warning("removed %s left by a dead kernel", group)

    def run(self, request: ExecutionRequest) -> ExecutionResult:
        interpreter, filename = request.policy.interpreter, request.policy.filename
        self._refuse_network(request)
        cap = request.limits.max_output_bytes or 10 * MiB
        streams = {"stdout": CappedStream("stdout", cap), "stderr": CappedStream("stderr", cap)}

        def feed(name: str, text: str) -> None:
            kept = streams[name].feed(text.encode("utf-8", "surrogateescape"))
            if kept and request.on_output:
                request.on_output(name, kept)

        def on_message(message: dict[str, Any]) -> None:
            if message.get("type") == "stream":
                feed(message.get("name", "stdout"), message.get("text", ""))
            elif message.get("type") == "error" and message.get("ename") != "SystemExit":
                feed("stderr", "\n".join(message.get("traceback", [])) + "\n")

        key = _pool_key(request)
        session = self._pool.take(key)
        startup = 0.0 if session is not None else None
        if session is None:
            session = self._boot_session(request)
            startup = session.startup_seconds
        if self.pool_size > 0:
            self._pool.refill(key, self.pool_size, lambda: self._boot_session(request))
        try:
            outcome = session.execute(
                _cell(request, interpreter, filename), on_message, limits=request.limits
            )
        finally:
            session.close()
        handle = session.handle
        handle.wait(timeout=30)  # the VM is gone: its console log is complete
        return self._result(request, streams, outcome, startup, handle)

    def _boot_session(self, request: ExecutionRequest) -> Any:
        """A VM booted for one run of ``request``'s size and limits, its agent ready."""
        boot = dataclasses.replace(request, code=worker_source(), env={}, on_output=None)

        def start(on_output):
            return self._start(dataclasses.replace(boot, on_output=on_output), one_shot=True)

        return WorkerSession(
            start, self.tier, request.limits, start_timeout_seconds=self.boot_timeout_seconds
        )

    def close(self) -> None:
        self._pool.close()

    def _result(self, request, streams, outcome, startup, handle) -> ExecutionResult:
        reply, cell = outcome.reply, outcome.result
        out, err = streams["stdout"], streams["stderr"]
        if outcome.session_lost:
            code, term = -1, 9
        elif outcome.status == "ok":
            code, term = 0, None
        else:
            code, term = int(reply.get("exit_code", 1)), None
        console = handle.console_tail() if handle else ""
        peak = max(reply.get("peak_memory_bytes") or 0, reply.get("children_maxrss_bytes") or 0)
        evidence = Evidence(
            exit_code=code,
            term_signal=term,
            timed_out=cell.timed_out,
            cpu_exceeded=cell.killed_by == "cpu",
            stopped_for_output=False,
            oom_kills=1 if _guest_oom(console) else 0,
            pids_limit_hits=0,
            cpu_seconds=cell.cpu_seconds or 0.0,
            stderr=err.text(),
            output_truncated=out.truncated or err.truncated,
        )
        stopped = (
            cell.killed_by
            if cell.killed_by in ("timeout", "cpu")
            else killed_by(evidence, request.limits)
        )
        return ExecutionResult(
            tier=self.tier,
            stdout=out.text(),
            stderr=err.text(),
            exit_code=code,
            execution_time_ms=round(cell.wall_seconds * 1000),
            stdout_truncated=out.truncated,
            stderr_truncated=err.truncated,
            timed_out=stopped == "timeout",
            killed_by=stopped,
            term_signal=term,
            peak_memory_bytes=peak or None,
            memory_method="guest" if peak else None,
            cpu_user_seconds=reply.get("cpu_user_seconds"),
            cpu_system_seconds=reply.get("cpu_system_seconds"),
            wall_seconds=cell.wall_seconds,
            limits=request.limits,
            enforcement={
                **(handle.enforcement if handle else {}),
                "timeout": "host (the VM is destroyed)",
                "cpu": "RLIMIT_CPU inside the guest",
                "output": "host (drained past the cap)",
            },
            limits_reached=limits_reached(evidence, stopped),
            language=request.language,
            executable=f"guest:{request.policy.interpreter}",
            code_sha256=request.code_sha256,
            stdout_bytes=out.total,
            stderr_bytes=err.total,
            startup_seconds=startup,
            sandbox_detail=handle.label if handle else None,
        )


def _guest_oom(console: str) -> bool:
    """Whether the guest kernel's console log reports an OOM kill."""
    return "Out of memory" in console or "oom-kill" in console


def _pool_key(request: ExecutionRequest) -> tuple:
    """What a pooled VM was booted with: its size and the rlimits on its command line
    (the environment and the code travel with the cell)."""
    lim = request.limits
    return (
        lim.max_memory_mb,
        lim.max_cpu_cores,
        lim.max_processes,
        lim.max_file_size_mb,
        lim.max_open_files,
        lim.max_cpu_seconds,
        lim.max_disk_mb,
    )


def _cell(request: ExecutionRequest, interpreter: str, filename: str) -> str:
    """What the worker runs for a one-shot request: Python code as it is (the guest's
    own figures cover it), any other language from a file, with its exit status."""
    text = request.code.decode("utf-8", "surrogateescape")
    env = dict(request.env)
    if interpreter.startswith("python") and not env:
        return text
    return (
        "import os, subprocess, sys\n"
        f"path = '/workspace/{filename}'\n"
        f"open(path, 'wb').write({request.code!r})\n"
        f"env = dict(os.environ, **{env!r})\n"
        f"sys.exit(subprocess.call([{interpreter!r}, path], env=env))\n"
    )


class _VMWorker(WorkerHandle):
    """A running VM and the byte channel to its agent."""

    def __init__(
        self,
        sandbox: MicroVMSandbox,
        proc: subprocess.Popen,
        spec: VMSpec,
        cgroup: RunCgroup | None,
        request: ExecutionRequest,
        enforcement: dict[str, str],
        label: str,
        stdio: bool,
        lease: Lease | None = None,
    ) -> None:
        self.sandbox, self.proc, self.spec, self.cgroup = sandbox, proc, spec, cgroup
        self.lease = lease  # the VMM's own uid, freed once it is gone
        self.request, self._enforcement, self.label, self.stdio = (
            request,
            enforcement,
            label,
            stdio,
        )
        self.sock: socket.socket | None = None
        self.result: ExecutionResult | None = None
        self._started = time.monotonic()
        self._send_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._stopped = False
        self._console: str | None = None  # the console's end, once the VM is gone

    @property
    def enforcement(self) -> dict[str, str]:
        return {**self._enforcement, "vmm": self.label}

    @property
    def detail(self) -> str | None:
        return self.label

    def connect(self, deadline: float) -> None:
        """Connect to the agent's socket once QEMU has made it."""
        if not self.stdio:
            # Through the directory's descriptor: a short path to a deep socket.
            dir_fd = os.open(self.spec.run_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                self._connect(dir_fd, deadline)
            finally:
                os.close(dir_fd)
        self._deadline = deadline
        self._reader = threading.Thread(target=self._read, name="symbi-vm-reader", daemon=True)
        self._reader.start()

    def _connect(self, dir_fd: int, deadline: float) -> None:
        """Retry until QEMU has made the socket (it does so while it starts)."""
        while True:
            if self.proc.poll() is not None:
                raise TierUnavailable(
                    f"the VMM exited while starting ({self.proc.returncode}): "
                    f"{self.vmm_log() or self.console_tail() or 'no output'}"
                )
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(f"/proc/self/fd/{dir_fd}/{self.spec.socket.name}")
                self.sock = sock
                break
            except OSError:
                sock.close()
            if time.monotonic() > deadline:
                raise TierUnavailable("the VMM did not open the agent's socket in time")
            time.sleep(0.01)

    def send(self, data: bytes) -> None:
        with self._send_lock:
            if self.sock is not None:
                self.sock.sendall(data)
            else:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()

    def _read(self) -> None:
        on_output = self.request.on_output
        try:
            while True:
                chunk = (
                    self.sock.recv(1 << 16)
                    if self.sock is not None
                    else os.read(self.proc.stdout.fileno(), 1 << 16)
                )
                if not chunk:
                    break
                if on_output:
                    on_output("stdout", chunk)
        except OSError:
            pass
        # The agent's end closed: the worker exited and the guest powers off.
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._finish()

    def _finish(self) -> None:
        console = self._console = self.console_tail()
        if self.proc.returncode and not self._stopped:
            # The VMM itself failed (a KVM that cannot run the guest, say): its own
            # words are the diagnosis, the console has little or nothing.
            console = "\n".join(filter(None, (console, self.vmm_log())))
        if console and self.request.on_output:
            self.request.on_output("stderr", console.encode())
        oom = _guest_oom(console)
        self.result = ExecutionResult(
            tier=SecurityTier.TIER3,
            exit_code=self.proc.returncode or 0,
            killed_by="memory" if oom else ("signal" if self._stopped else None),
            wall_seconds=time.monotonic() - self._started,
            limits=self.request.limits,
            enforcement=self.enforcement,
            sandbox_detail=self.label,
        )
        self._cleanup()

    def vmm_log(self) -> str:
        try:
            return (self.spec.run_dir / "vmm.log").read_text(errors="replace").strip()[-2000:]
        except OSError:
            return ""

    def console_tail(self, size: int = 4000) -> str:
        """The end of the guest's serial console: the kernel's and the init's messages
        (``symbi-guest: ...``). Still readable after the VM has gone."""
        if self._console is not None:
            return self._console[-size:]
        try:
            data = self.spec.console.read_bytes()[-size:]
        except OSError:
            return ""
        return data.decode("utf-8", "replace")

    def _cleanup(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        shutil.rmtree(self.spec.run_dir, ignore_errors=True)
        if self.cgroup is not None:
            self.cgroup.remove()
        if self.lease is not None and self.proc.poll() is not None:
            self.lease.release()

    def stop(self) -> None:
        if self.result is None:
            self._stopped = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            if self._reader is None:  # never connected: nothing else will clean up
                self.proc.wait()
                self._finish()
        if self._reader is not None:
            self._reader.join(timeout=30)

    def wait(self, timeout: float | None = None) -> ExecutionResult | None:
        if self._reader is not None:
            self._reader.join(timeout)
        return self.result


class _Launcher:
    """One thread, alive as long as the process, that starts every VMM: PDEATHSIG fires
    when the *thread* that forked the child ends, so a VM started from a short-lived
    thread (a pool refill) would be killed as soon as that thread finished."""

    _lock = threading.Lock()
    _jobs: queue.Queue | None = None

    @classmethod
    def call(cls, fn: Any) -> Any:
        with cls._lock:
            if cls._jobs is None:
                cls._jobs = queue.Queue()
                threading.Thread(
                    target=cls._serve, args=(cls._jobs,), daemon=True, name="symbi-vmm-launcher"
                ).start()
        done: queue.Queue = queue.Queue()
        cls._jobs.put((fn, done))
        ok, value = done.get()
        if not ok:
            raise value
        return value

    @staticmethod
    def _serve(jobs: queue.Queue) -> None:
        while True:
            fn, done = jobs.get()
            try:
                done.put((True, fn()))
            except BaseException as exc:  # handed to the caller
                done.put((False, exc))


def _open_for_vmm(spec: VMSpec) -> list[int]:
    """Open the agent's listening socket and the console file in the run directory
    (root's) for the VMM, which then needs no path of its own there."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dir_fd = os.open(spec.run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        # Through the directory's descriptor: a short path to a deep socket.
        listener.bind(f"/proc/self/fd/{dir_fd}/{spec.socket.name}")
        listener.listen(1)
        console = os.open(
            spec.console.name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dir_fd,
        )
    except BaseException:
        listener.close()
        raise
    finally:
        os.close(dir_fd)
    spec.agent_fd, spec.console_fd = listener.detach(), console
    opened = [spec.agent_fd, spec.console_fd]
    try:
        # Opened by root: the VMM's uid may not reach them by path (a guest built
        # under a private directory), and it gets no more than it needs.
        for name in ("kernel", "initrd", "rootfs"):
            path = getattr(spec, name)
            if path:
                writable = name == "rootfs" and not spec.rootfs_read_only
                spec.file_fds[name] = os.open(
                    path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
                )
                opened.append(spec.file_fds[name])
    except BaseException:
        for fd in opened:
            os.close(fd)
        raise
    return opened


def _launch(
    argv: list[str],
    cgroup: RunCgroup | None,
    run_dir: Path,
    stdio: bool,
    lease: Lease | None = None,
    pass_fds: list[int] | None = None,
) -> subprocess.Popen:
    """Start the VMM in its own session, in its cgroup, as its own uid (``lease``),
    dying with us (PDEATHSIG)."""
    return _Launcher.call(lambda: _popen(argv, cgroup, run_dir, stdio, lease, pass_fds or []))


def _popen(
    argv: list[str],
    cgroup: RunCgroup | None,
    run_dir: Path,
    stdio: bool,
    lease: Lease | None,
    pass_fds: list[int],
) -> subprocess.Popen:
    libc = ctypes.CDLL(None, use_errno=True)
    procs = os.path.join(cgroup.paths["memory"], "cgroup.procs") if cgroup else None

    def confine() -> None:
        if procs:  # while still root
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
        if lease is not None:
            os.setgroups(_kvm_groups())
            os.setresgid(lease.gid, lease.gid, lease.gid)
            os.setresuid(lease.uid, lease.uid, lease.uid)
            libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        # After the change of uid, which clears it.
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    with open(run_dir / "vmm.log", "wb") as errors:
        return subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdio else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdio else subprocess.DEVNULL,
            stderr=errors,
            # Its own uid cannot enter root's run directory, and needs nothing there.
            cwd="/" if lease is not None else run_dir,
            pass_fds=pass_fds,
            start_new_session=True,
            preexec_fn=confine,  # only syscalls and a write before exec
        )


def _kvm_groups() -> list[int]:
    """The group that may use /dev/kvm, if any may: an unprivileged VMM needs it."""
    with contextlib.suppress(OSError):
        st = os.stat("/dev/kvm")
        if st.st_mode & 0o060 == 0o060 and st.st_gid != 0:
            return [st.st_gid]
    return []


def _host_tsc_khz() -> int:
    """The host's TSC frequency in kHz, for the guest's early calibration under TCG."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    return 2_000_000


def _probe_request() -> ExecutionRequest:
    return ExecutionRequest(
        tier=SecurityTier.TIER3,
        code=worker_source(),
        language="python3",
        limits=ResourceLimits(max_memory_mb=256),
    )

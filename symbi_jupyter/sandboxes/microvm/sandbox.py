"""Tier3's backend: :class:`MicroVMSandbox`, its configuration, the choice of VMM and
acceleration, and each VM's lifecycle (boot, one run or a session, teardown)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, ClassVar, cast

from traitlets import Bool, Enum, Float, Int, Unicode

from ...errors import ConfigError, TierUnavailable
from ...limits import ResourceLimits, host_cores, within_cores
from ...result import ExecutionResult
from ...tiers import SecurityTier
from .._pool import ReadyPool
from ..base import Availability, ExecutionRequest, OutputCallback, Sandbox, WorkerHandle
from ..supervisor.cgroups import VM_PARENT, RunCgroup, v1_memory_group
from ..supervisor.proctree import host_tag
from ..worker import WorkerSession, worker_source
from .enforcement import enforcement as enforcement_words
from .firecracker import FirecrackerDriver
from .guest import MIN_GUEST_MIB, default_artifacts_dir, host_tsc_khz
from .kvm_probe import kvm_works
from .launch import reap_dead_kernels, spawn
from .oneshot import OneShotOutput, cell_source, pool_key, run_result
from .qemu import QEMUDriver
from .vm_worker import VMWorker
from .vmm import VMMDriver, VMSpec
from .workdir_copy import copy_cell, copy_in

MiB = 1024 * 1024


class MicroVMSandbox(Sandbox):
    """Runs each request in a fresh microVM that is destroyed afterwards."""

    tier = SecurityTier.TIER3

    artifacts_dir = Unicode(
        "",
        config=True,
        help="""Directory of the guest built by `symbi-jupyter image build --tier3`
        (its manifest.json names the files). '' = the build's default directory
        (/var/lib/symbi-jupyter/microvm as root, else ~/.local/share/symbi-jupyter/microvm).
        The guest with numpy, pandas and matplotlib (`image build --tier3 --profile
        scientific`) is built beside it, in microvm-scientific: name that directory here.""",
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
        help="""vCPUs of each VM; 0 = the run's max_cpu_cores, rounded up; capped at
        this host's cores either way (Symbiont: [sandbox.firecracker] vcpus).""",
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
    allow_privileged_vmm = Bool(
        False,
        config=True,
        help="""Let Firecracker run where it would run as root with every capability (the
        host is root and Firecracker's jailer is not supported yet). Off: such a
        Firecracker is refused, and 'auto' takes QEMU, which runs as a uid of its own
        with no capabilities.""",
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
    working_directory_copy_mb = Float(
        8,
        config=True,
        help="""The most of the working directory's files a run copies into its guest,
        in MB (the guest shares no filesystem with the host); also no more than the
        run's disk limit. With more, none is copied, and the enforcement says so.""",
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
        if base == default_artifacts_dir("scientific"):
            build = "symbi-jupyter image build --tier3 --profile scientific"
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
        chosen: dict[str, list[VMMDriver]] = {"qemu": [qemu], "firecracker": [firecracker]}
        return chosen.get(self.vmm, [firecracker, qemu])

    def _choose(self, manifest: dict[str, Any]) -> tuple[VMMDriver, str, str]:
        """(driver, acceleration, why): a VMM that is installed, and the acceleration
        a probe boot proved (or the configuration forced)."""
        missing = []
        for driver in self._drivers():
            if (
                isinstance(driver, FirecrackerDriver)
                and os.geteuid() == 0
                and not self.allow_privileged_vmm
            ):
                missing.append(
                    "firecracker (it would run as root with every capability: its jailer "
                    "is not supported yet; MicroVMSandbox.allow_privileged_vmm = True "
                    "accepts that)"
                )
                continue
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
        """Probe, not guess (:func:`.kvm_probe.kvm_works`): boot the guest under KVM
        once, its verdict cached for every sandbox."""

        def boot(request: ExecutionRequest, timeout: float) -> VMWorker:
            return self._boot(qemu, "kvm", manifest, request, timeout=timeout)

        return kvm_works(qemu, manifest, self.tier, self._probe_cache, boot)

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
                # Which guest: its directory and the profile it was built with.
                "guest": f"{self._artifacts()} (profile {manifest.get('profile', 'minimal')})",
                "kernel": str(manifest["kernel"]),
                "rootfs": str(manifest["rootfs"]),
            },
        )

    # ------------------------------------------------------------------ running
    def start_worker(self, request: ExecutionRequest) -> WorkerHandle:
        copy, shown = self._workdir_copy(request)
        if copy is not None:
            # The worker's program writes the copies before the agent starts.
            request = dataclasses.replace(request, code=copy.encode() + request.code)
        return self._start(request, one_shot=False, shown=shown)

    def _workdir_copy(self, request: ExecutionRequest) -> tuple[str | None, dict[str, str]]:
        """The cell that copies the working directory's files into the guest, and
        the enforcement note (:mod:`.workdir_copy`)."""
        limit = self.working_directory_copy_mb
        words = f"the most a run copies (MicroVMSandbox.working_directory_copy_mb = {limit:g})"
        disk = request.limits.max_disk_mb
        if disk and disk < limit:
            limit, words = disk, f"the run's disk limit ({disk:g} MB)"
        return copy_cell(request.policy.working_directory, int(limit * MiB), words)

    def _refuse_network(self, request: ExecutionRequest) -> None:
        """Checked before a pooled VM is taken as well as before a boot."""
        if request.limits.network:
            raise TierUnavailable(
                f"{self.tier.display_name} has no network device in this version; "
                "run without --network"
            )

    def _start(
        self, request: ExecutionRequest, one_shot: bool, shown: dict[str, str] | None = None
    ) -> VMWorker:
        self._refuse_network(request)
        manifest = self.manifest()
        driver, accel, _ = self._choose(manifest)
        return self._boot(
            driver,
            accel,
            manifest,
            request,
            timeout=self.boot_timeout_seconds,
            one_shot=one_shot,
            shown=shown,
        )

    def _boot(
        self,
        driver: VMMDriver,
        accel: str,
        manifest: dict[str, Any],
        request: ExecutionRequest,
        timeout: float,
        one_shot: bool = True,
        shown: dict[str, str] | None = None,
    ) -> VMWorker:
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
        cgroup = self._vmm_cgroup(run_dir.name.removeprefix("symbi-vm-"), mem)
        enforcement = {
            **enforcement_words(
                request,
                mem,
                vcpus,
                vcpus_fixed=bool(self.vcpus),
                vmm_overhead_mb=self.vmm_memory_overhead_mb,
                cgroup=cgroup,
                lease=lease,
                qemu=qemu,
            ),
            **(shown or {}),
        }
        proc = spawn(self.tier.display_name, driver, spec, cgroup, lease, qemu)
        worker = VMWorker(
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
        vcpus = min(vcpus, host_cores())
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
            host_args += [f"tsc_early_khz={host_tsc_khz()}", "tsc=reliable"]
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

    def _vmm_cgroup(self, name: str, mem: int) -> RunCgroup | None:
        """A v1 memory cgroup bounding the VMM process (guest memory + overhead),
        named like the run directory: unique across orchestrators and processes."""
        return v1_memory_group(VM_PARENT, name, (mem + self.vmm_memory_overhead_mb) * MiB)

    def _reap(self) -> None:
        """Once, at the first boot: what kernels that died left behind."""
        if not self._reaped:
            self._reaped = True
            reap_dead_kernels(Path(self.run_root or tempfile.gettempdir()), self.log)

    def run(self, request: ExecutionRequest) -> ExecutionResult:
        interpreter, filename = request.policy.interpreter, request.policy.filename
        self._refuse_network(request)
        output = OneShotOutput(request)

        copy, shown = self._workdir_copy(request)
        key = pool_key(request)
        session = self._pool.take(key)
        startup = 0.0 if session is not None else None
        if session is None:
            session = self._boot_session(request)
            startup = session.startup_seconds
        if self.pool_size > 0:
            self._pool.refill(key, self.pool_size, lambda: self._boot_session(request))
        try:
            if copy is not None:
                copy_in(session, copy, request)
            outcome = session.execute(
                cell_source(request, interpreter, filename),
                output.on_message,
                limits=request.limits,
                cell_name=filename,
            )
        finally:
            session.close()
        handle = cast(VMWorker, session.handle)  # what _boot_session starts
        handle.wait(timeout=30)  # the VM is gone: its console log is complete
        # What ran: no more cores than the host's (the enforcement says so).
        ran = dataclasses.replace(request, limits=within_cores(request.limits, host_cores())[0])
        result = run_result(self.tier, ran, output.streams, outcome, startup, handle)
        result.enforcement.update(shown)
        if outcome.result.interrupted:
            raise KeyboardInterrupt(result)  # as at the other tiers: the stop button
        return result

    def _boot_session(self, request: ExecutionRequest) -> WorkerSession:
        """A VM booted for one run of ``request``'s size and limits, its agent ready."""
        boot = dataclasses.replace(request, code=worker_source(), env={}, on_output=None)

        def start(on_output: OutputCallback) -> VMWorker:
            return self._start(dataclasses.replace(boot, on_output=on_output), one_shot=True)

        return WorkerSession(
            start, self.tier, request.limits, start_timeout_seconds=self.boot_timeout_seconds
        )

    def close(self) -> None:
        self._pool.close()

"""What a Tier3 run's enforcement says: how its VM keeps each limit, in words."""

from __future__ import annotations

from ...limits import host_cores, within_cores
from ..base import ExecutionRequest
from ..supervisor.cgroups import RunCgroup
from ..supervisor.identity import Lease


def enforcement(
    request: ExecutionRequest,
    mem: int,
    vcpus: int,
    *,
    vcpus_fixed: bool,
    vmm_overhead_mb: int,
    cgroup: RunCgroup | None,
    lease: Lease | None,
    qemu: bool,
) -> dict[str, str]:
    """How a VM of ``mem`` MiB and ``vcpus`` enforces each limit of ``request``, in
    words: ``vcpus_fixed`` when MicroVMSandbox.vcpus chose the count, the VMM's cgroup,
    uid lease and kind as :meth:`.sandbox.MicroVMSandbox._boot` set them up."""
    cores = f"{vcpus} vCPU" + ("s" if vcpus > 1 else "")
    _, lowered = within_cores(request.limits, host_cores())
    if lowered and not vcpus_fixed:  # the limit, not the trait, chose the count
        cores += f", {lowered}"
    return {
        "memory": f"guest memory ({mem} MiB)",
        "cpu_cores": cores,
        "network": "none (no network device)",
        "processes": "RLIMIT_NPROC inside the guest",
        "file_size": "RLIMIT_FSIZE inside the guest",
        "disk": "one tmpfs inside the guest for /workspace, /tmp and /dev/shm"
        + (f" ({request.limits.max_disk_mb:g} MB in all)" if request.limits.max_disk_mb else "")
        + ", the root read-only",
        "open_files": "RLIMIT_NOFILE inside the guest",
        "vmm_memory": f"cgroup ({mem + vmm_overhead_mb} MiB)"
        if cgroup
        else "not enforced: no writable memory cgroup",
        "vmm_privileges": "a uid of its own, no capabilities, seccomp (-sandbox on)"
        if lease
        else "seccomp (-sandbox on), as this user"
        if qemu
        else "not deprivileged: Firecracker as this user (root where "
        "MicroVMSandbox.allow_privileged_vmm allows it), without its jailer",
    }

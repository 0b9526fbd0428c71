"""Tier3: a fresh, single-use microVM per run (or per kernel session).

The guest (kernel, read-only root with python3, an init) is built by
``symbi-jupyter image build --tier3``. Its init runs the worker agent
(:mod:`.worker.agent`) as an unprivileged user on a virtio-serial port that QEMU binds
to a unix socket here: the code and its environment travel over that channel, never on
the kernel command line. The VM's memory and vCPUs are the limits; a timeout destroys
the VM. VMM drivers sit behind :class:`VMMDriver`: QEMU ``-M microvm`` (KVM where a
probe boot proves it works, else TCG emulation) and Firecracker (hosts with real KVM).

Split by what each module holds, so that none grows past the project's size limit:
``sandbox`` (:class:`MicroVMSandbox`: its configuration, the choice of VMM, each VM's
boot and runs), ``vmm`` (the driver interface, :class:`VMSpec` and
:class:`VMMDriver`) with one driver per module, ``qemu`` and ``firecracker``;
``kvm_probe`` (the probe boot that decides between KVM and TCG), ``launch`` (starting
the VMM process), ``vm_worker`` (the handle on a running VM), ``oneshot`` (a one-shot
run's cell, pool key and result) and ``guest`` (the guest's contract: its build
directory, smallest size, agent port). Import from ``symbi_jupyter.sandboxes.microvm``
itself; the modules are its layout, not its interface.
"""

from __future__ import annotations

from .firecracker import FirecrackerDriver
from .guest import MIN_GUEST_MIB, PORT_NAME, default_artifacts_dir
from .launch import open_for_vmm as _open_for_vmm  # noqa: F401 (its old name; tests import it)
from .qemu import QEMUDriver
from .sandbox import MiB, MicroVMSandbox
from .vmm import VMMDriver, VMSpec

__all__ = [
    "MIN_GUEST_MIB",
    "PORT_NAME",
    "FirecrackerDriver",
    "MiB",
    "MicroVMSandbox",
    "QEMUDriver",
    "VMMDriver",
    "VMSpec",
    "default_artifacts_dir",
]

"""The QEMU driver: the ``microvm`` machine, under KVM or TCG emulation."""

from __future__ import annotations

from .guest import PORT_NAME
from .vmm import VMMDriver, VMSpec


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

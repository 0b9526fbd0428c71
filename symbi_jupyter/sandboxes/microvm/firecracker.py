"""The Firecracker driver: KVM only, configured from a file."""

from __future__ import annotations

import json
from typing import Any

from .vmm import VMMDriver, VMSpec


class FirecrackerDriver(VMMDriver):
    """Firecracker from a config file (``--no-api``): KVM only. The agent's channel is
    the guest's serial console on Firecracker's own stdio."""

    name = "firecracker"

    def command(self, spec: VMSpec) -> list[str]:
        config: dict[str, Any] = {
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

"""The microVM artefacts' ``manifest.json``: what the sandbox needs to boot them, and the
fingerprint that tells whether they were built from this package's guest inputs."""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

from ...sandboxes.microvm import default_artifacts_dir
from ...sandboxes.worker import BOOTSTRAP
from .microvm_common import (
    AGENT_PORT,
    GUEST_INIT,
    INIT_SCRIPT,
    INITRD,
    KERNEL,
    KERNEL_FRAGMENT,
    MANIFEST,
    ROOTFS,
)

FORMAT = 1


def guest_fingerprint() -> dict[str, str]:
    """Hashes of this package's inputs to the guest: the init, the bootstrap, the kernel
    fragment. A manifest whose hashes differ was built by another version."""
    return {
        "init_sha256": _sha256(INIT_SCRIPT.read_bytes()),
        "bootstrap_sha256": _sha256(BOOTSTRAP.encode()),
        "fragment_sha256": _sha256(KERNEL_FRAGMENT.read_bytes()),
    }


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(directory: Path | str | None = None) -> dict[str, Any] | None:
    """The manifest of ``directory`` if it is complete (format known, files present),
    else None."""
    directory = Path(directory or default_artifacts_dir())
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return None
    files = [manifest.get("kernel"), manifest.get("rootfs"), manifest.get("initrd")]
    if not all(isinstance(f, str) for f in files[:2]):
        return None
    if not all((directory / f).is_file() for f in files if f is not None):
        return None
    return manifest


def is_current(manifest: dict[str, Any]) -> bool:
    """Whether ``manifest`` was built from this package's init, bootstrap and fragment."""
    return all(manifest.get(k) == v for k, v in guest_fingerprint().items())


def write_manifest(
    directory: Path, kernel: dict[str, Any], python: str, profile: str = "minimal"
) -> dict[str, Any]:
    """Write ``manifest.json`` for the artefacts in ``directory``; return it."""
    manifest = {
        "kernel": KERNEL,
        "initrd": INITRD if kernel["initrd"] else None,
        "rootfs": ROOTFS,
        "rootfs_type": "ext4",
        "kernel_args": kernel["args"],
        "microvm_acpi": kernel["acpi"],
        "firecracker_capable": kernel["firecracker"],
        "kernel_source": kernel["source"],
        "kernel_version": kernel["version"],
        "python": python,
        # Which packages the rootfs has (image build --profile): doctor names it.
        "profile": profile,
        "agent_port": AGENT_PORT,
        "init": GUEST_INIT,
        **guest_fingerprint(),
        "built": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "format": FORMAT,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest

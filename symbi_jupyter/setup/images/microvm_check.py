"""The smoke check a microVM guest build ends with: boot the artefacts once through the
Tier3 sandbox and run a snippet in the guest's worker."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from ...errors import TierUnavailable
from ...limits import ResourceLimits
from ...sandboxes.base import ExecutionRequest
from ...sandboxes.microvm import MicroVMSandbox
from ...tiers import SecurityTier
from .microvm_common import MicroVMImageError
from .microvm_manifest import read_manifest

NOBODY = 65534

# Run in the worker of the freshly built guest: who runs it, and on what.
_CHECK_SOURCE = """import json, os, platform
print(json.dumps({"uid": os.getuid(), "python": platform.python_version(),
                  "kernel": os.uname().release}))
"""


def boot_check(directory: Path, timeout: float = 120) -> str:
    """Boot the artefacts in ``directory`` once through the Tier3 sandbox (QEMU, TCG) and
    run a snippet in its worker; returns a one-line summary. Raises
    :class:`MicroVMImageError` if that fails."""
    manifest = read_manifest(directory)
    if manifest is None:
        raise MicroVMImageError(f"{directory} holds no complete set of artefacts")
    with tempfile.TemporaryDirectory(prefix="symbi-vmcheck-") as tmp:
        sandbox = MicroVMSandbox(
            artifacts_dir=str(directory),
            vmm="qemu",
            acceleration="tcg",
            pool_size=0,
            run_root=tmp,
            boot_timeout_seconds=timeout,
        )
        if shutil.which(sandbox.qemu_binary) is None:
            return (
                f"boot check skipped: {sandbox.qemu_binary} not found "
                "(apt-get install qemu-system-x86)"
            )
        request = ExecutionRequest(
            tier=SecurityTier.TIER3,
            code=_CHECK_SOURCE.encode(),
            language="python3",
            limits=ResourceLimits(
                max_memory_mb=256, max_processes=64, max_open_files=256, timeout_seconds=timeout
            ),
        )
        try:
            result = sandbox.run(request)
        except TierUnavailable as exc:
            raise MicroVMImageError(f"the guest did not answer: {exc}") from None
        finally:
            sandbox.close()
    try:
        seen = json.loads(result.stdout)
    except ValueError:
        seen = {}
    if (
        not result.success
        or seen.get("uid") != NOBODY
        or (seen.get("kernel") != manifest["kernel_version"])
    ):
        raise MicroVMImageError(
            f"unexpected answer from the guest (exit {result.exit_code}, "
            f"stopped by {result.killed_by}): {result.stdout}{result.stderr}"
        )
    return (
        f"python {seen['python']} as uid {seen['uid']} on {seen['kernel']}: "
        f"answered {result.startup_seconds:.2f} s after launch ({result.sandbox_detail})"
    )

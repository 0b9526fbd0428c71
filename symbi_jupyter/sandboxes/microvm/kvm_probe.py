"""The KVM probe: KVM is used only where a guest really booted under it, since a
/dev/kvm that exists may still be unable to run guests (nested setups)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from ...errors import TierUnavailable
from ...limits import ResourceLimits
from ...tiers import SecurityTier
from ..base import ExecutionRequest, OutputCallback, WorkerHandle
from ..worker import WorkerSession, worker_source
from .launch import kvm_groups
from .vmm import VMMDriver

#: Seconds the probe VM has to boot and its agent to answer.
PROBE_TIMEOUT = 15


def kvm_works(
    qemu: VMMDriver,
    manifest: dict[str, Any],
    tier: SecurityTier,
    cache: dict[tuple, tuple[str, str]],
    boot: Callable[[ExecutionRequest, float], WorkerHandle],
) -> tuple[bool, str]:
    """(works, why): boot the guest of ``manifest`` under KVM once, through ``boot``
    (request, timeout), and see its agent answer. The verdict is kept in ``cache``
    per guest kernel and QEMU binary."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    if qemu.path() is None:
        return False, "QEMU is needed for the KVM probe boot"
    key = (str(manifest["kernel"]), os.stat(manifest["kernel"]).st_mtime, qemu.path())
    if key not in cache:
        request = probe_request()

        def start(on_output: OutputCallback) -> WorkerHandle:
            return boot(dataclasses.replace(request, on_output=on_output), PROBE_TIMEOUT)

        try:
            WorkerSession(start, tier, request.limits, start_timeout_seconds=PROBE_TIMEOUT).close()
            cache[key] = ("kvm", "a probe VM booted under KVM")
        except (TierUnavailable, OSError) as exc:
            why = f"/dev/kvm exists but a probe VM did not boot under it ({exc})"
            if os.geteuid() == 0 and not kvm_groups():
                why += (
                    "; the VMM runs as a uid of its own, which needs /dev/kvm open "
                    "to a group (e.g. chgrp kvm /dev/kvm && chmod 660 /dev/kvm)"
                )
            cache[key] = ("tcg", why)
    accel, why = cache[key]
    return accel == "kvm", why


def probe_request() -> ExecutionRequest:
    """What the probe VM boots: the worker agent, in the smallest usual guest."""
    return ExecutionRequest(
        tier=SecurityTier.TIER3,
        code=worker_source(),
        language="python3",
        limits=ResourceLimits(max_memory_mb=256),
    )

"""The host a bench ran on, in facts: CPU, cores, memory, kernel, how Tier3's VMs run
(KVM or emulation) and the runtimes' versions."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from typing import TYPE_CHECKING, Any

from ..errors import SymbiError
from ..tiers import SecurityTier

if TYPE_CHECKING:
    from ..orchestrator import SandboxOrchestrator
    from .report import TierFigures


def host_facts(
    orch: SandboxOrchestrator, figures: dict[SecurityTier, TierFigures]
) -> dict[str, Any]:
    """What the table's figures depend on, as the bench found it."""
    facts: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": _memory_total(),
        "kernel": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    facts.update(_virtualization(orch, figures.get(SecurityTier.TIER3)))
    facts["docker"] = _engine_version(orch, figures)
    facts["runsc"] = _version(["runsc", "--version"])
    qemu = _qemu_binary(orch, figures)
    facts["qemu"] = _version([qemu, "--version"]) if qemu else None
    return facts


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Processor", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_total() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _virtualization(orch: SandboxOrchestrator, tier3: TierFigures | None) -> dict[str, Any]:
    """KVM or emulation, as Tier3's probe boot decided it (only where Tier3 was asked
    for: the probe boots a VM)."""
    kvm_device = os.path.exists("/dev/kvm")
    if tier3 is None:
        return {
            "kvm_device": kvm_device,
            "virtualization": None,
            "virtualization_reason": "Tier3 was not measured, so no VM was booted to tell",
        }
    try:
        availability = orch.sandbox(SecurityTier.TIER3).availability()
    except SymbiError as exc:
        return {"kvm_device": kvm_device, "virtualization": None, "virtualization_reason": str(exc)}
    vmm = str(availability.details.get("vmm", ""))
    kind = "KVM" if vmm.endswith("KVM") else "emulated (TCG)" if "TCG" in vmm else None
    reason = availability.details.get("acceleration") or availability.reason or None
    return {"kvm_device": kvm_device, "virtualization": kind, "virtualization_reason": reason}


def _engine_version(
    orch: SandboxOrchestrator, figures: dict[SecurityTier, TierFigures]
) -> str | None:
    for tier in (SecurityTier.TIER1, SecurityTier.TIER2):
        if tier in figures:
            try:
                engine = orch.sandbox(tier).availability().details.get("engine")
            except SymbiError:
                continue
            if engine:
                return str(engine)
    return None


def _qemu_binary(orch: SandboxOrchestrator, figures: dict[SecurityTier, TierFigures]) -> str | None:
    if SecurityTier.TIER3 not in figures:
        return shutil.which("qemu-system-x86_64")
    try:
        return str(getattr(orch.sandbox(SecurityTier.TIER3), "qemu_binary", "")) or None
    except SymbiError:
        return None


def _version(command: list[str]) -> str | None:
    """The version a ``--version`` prints ('runsc version 0.0~20221219.0',
    'QEMU emulator version 7.2.22 (Debian ...)'); None where the program is missing."""
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = (done.stdout or done.stderr).strip().splitlines()
    if not lines:
        return None
    found = re.search(r"version\s+(\S+)", lines[0])
    return found.group(1) if found else lines[0]

"""Tier3 latency of a trivial cell, cold and pooled, beside Tier1 measured in the same
run and the seed's claimed Firecracker figure.

    python benchmarks/bench_microvm.py [--runs 8]

Cold: pool off, so each sample boots a VM (or creates a container) and runs
``print(1)``; the caller's wall time. Pooled: a VM (container) booted in advance waits
for the cell; the sampler waits until the pool is full again before each sample, so
only the cell's own path is timed. The boot itself is reported too (startup_seconds).
"""

from __future__ import annotations

import argparse
import statistics
import time

from symbi_jupyter import SecurityTier
from symbi_jupyter.bench import time_cell
from symbi_jupyter.orchestrator import SandboxOrchestrator

SEED_FIRECRACKER_MS = 125


def timed(orch: SandboxOrchestrator, tier: SecurityTier) -> tuple[float, float | None]:
    cell = time_cell(orch, tier, "print(1)")
    result = cell.result
    assert result.success and result.stdout == "1\n", result.stderr
    return cell.seconds, result.startup_seconds


def pool_full(sandbox) -> bool:
    ready = getattr(sandbox._pool, "_ready", {})
    return any(len(v) >= sandbox.pool_size for v in ready.values())


def measure(tier: SecurityTier, runs: int, pool: int) -> tuple[float, float | None]:
    orch = SandboxOrchestrator()
    sandbox = orch.sandbox(tier)
    sandbox.pool_size = pool
    if tier is SecurityTier.TIER3:
        sandbox.acceleration = "auto"
    try:
        timed(orch, tier)  # warm caches (and fill the pool)
        walls, boots = [], []
        for _ in range(runs):
            if pool:
                deadline = time.monotonic() + 120
                while not pool_full(sandbox) and time.monotonic() < deadline:
                    time.sleep(0.05)
            wall, boot = timed(orch, tier)
            walls.append(wall)
            if boot:
                boots.append(boot)
        return statistics.median(walls), statistics.median(boots) if boots else None
    finally:
        orch.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    args = parser.parse_args()
    detail = SandboxOrchestrator().availability()[SecurityTier.TIER3].details.get("vmm", "?")
    rows = []
    for tier in (SecurityTier.TIER1, SecurityTier.TIER3):
        for label, pool in (("cold", 0), ("pooled", 1)):
            wall, boot = measure(tier, args.runs, pool)
            rows.append((tier.value, label, wall, boot))
    print(f"trivial cell, medians of {args.runs}; Tier3 runs under {detail}")
    print(f"{'tier':<6} {'path':<7} {'cell':>10} {'boot/create':>12}")
    for tier, label, wall, boot in rows:
        boot_text = f"{boot * 1000:9.0f} ms" if boot else "       -"
        print(f"{tier:<6} {label:<7} {wall * 1000:7.0f} ms {boot_text}")
    tier1_cold = rows[0][2]
    tier3_cold, tier3_pooled = rows[2][2], rows[3][2]
    print(
        f"Tier3 cold / Tier1 cold: {tier3_cold / tier1_cold:.1f}x; "
        f"Tier3 pooled / Tier1 cold: {tier3_pooled / tier1_cold:.2f}x; "
        f"seed's Firecracker claim: ~{SEED_FIRECRACKER_MS} ms "
        f"(Tier3 pooled is {tier3_pooled * 1000 / SEED_FIRECRACKER_MS:.1f}x that)"
    )


if __name__ == "__main__":
    main()

"""Latency of a trivial cell in the container tiers against the Docker CLI, measured in
the same run.

    python benchmarks/bench_containers.py [--runs 15]

For Tier1 (runc) and Tier2 (runsc): the median wall time, as the caller sees it, of
``docker run --rm [--runtime runsc] --network none IMAGE python3 -c pass`` (the CLI),
of ``execute_code`` with the pool off (cold: create, start, run, remove) and with the
pool on (a started container waits for the code). Targets: cold at most 1.0x the CLI,
pooled at most 0.4x.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time

from symbi_jupyter import SecurityTier
from symbi_jupyter.bench import Spread, time_cell, timed
from symbi_jupyter.orchestrator import SandboxOrchestrator
from symbi_jupyter.setup.images.container import DEFAULT_IMAGE

CLAIMED = {SecurityTier.TIER1: "~500 ms", SecurityTier.TIER2: "~800 ms"}
RUNTIME = {SecurityTier.TIER1: [], SecurityTier.TIER2: ["--runtime", "runsc"]}


def median_ms(fn, runs: int, pause: float = 0.0) -> float:
    """Median milliseconds of ``fn`` (a cell timed by ``time_cell``, or the CLI timed
    with the same clock, ``timed``) after one warm-up call."""
    fn()  # warm-up
    times = []
    for _ in range(runs):
        if pause:
            time.sleep(pause)  # lets the pool refill, as the gap between cells does
        times.append(fn())
    return Spread.of(times).median * 1000


def cell_seconds(orch: SandboxOrchestrator, tier: SecurityTier) -> float:
    return time_cell(orch, tier, "pass").seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args(argv)
    docker = shutil.which("docker")
    print(f"median of {args.runs}, image {DEFAULT_IMAGE}")
    print(
        f"{'tier':<16}{'docker CLI':>12}{'cold':>10}{'pooled':>10}"
        f"{'cold/CLI':>10}{'pooled/CLI':>12}   seed's claim"
    )
    for tier in (SecurityTier.TIER1, SecurityTier.TIER2):
        orch = SandboxOrchestrator(audit_log_path="")
        sandbox = orch.sandbox(tier)
        availability = sandbox.availability()
        if not availability.ok:
            print(f"{tier.display_name:<16} unavailable: {availability.reason}")
            continue
        cli = [
            docker,
            "run",
            "--rm",
            *RUNTIME[tier],
            "--network",
            "none",
            DEFAULT_IMAGE,
            "python3",
            "-c",
            "pass",
        ]
        cli_ms = median_ms(
            lambda: timed(lambda: subprocess.run(cli, check=True))[0],  # noqa: B023
            args.runs,
        )
        sandbox.pool_size = 0
        cold_ms = median_ms(lambda: cell_seconds(orch, tier), args.runs)  # noqa: B023
        sandbox.pool_size = 1
        pooled_ms = median_ms(
            lambda: cell_seconds(orch, tier),  # noqa: B023
            args.runs,
            pause=1.0,
        )
        orch.close()
        print(
            f"{tier.display_name:<16}{cli_ms:>10.0f}ms{cold_ms:>8.0f}ms{pooled_ms:>8.0f}ms"
            f"{cold_ms / cli_ms:>9.2f}x{pooled_ms / cli_ms:>11.2f}x   {CLAIMED[tier]}"
        )
    print("targets: cold <= 1.0x the CLI, pooled <= 0.4x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

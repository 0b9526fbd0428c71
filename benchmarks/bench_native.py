"""Tier None overhead and peak-memory honesty, each against a baseline measured in the
same run.

    python benchmarks/bench_native.py [--runs 40]

1. Start-up overhead: median wall time of ``execute_code(SecurityTier.NONE, "pass")``
   against a bare ``subprocess.run([python3, "-c", "pass"])``, interleaved so both
   see the same machine load. Target: ratio at most 1.15.
2. Peak memory: a cell allocating 300 MiB, run from a caller that holds 1 GiB, with
   each measuring method (cgroup, wait4 via the supervisor) against the naive
   ``ru_maxrss`` of a child forked by the caller itself. Target: error under 5 %.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from symbi_jupyter import ResourceLimits, SecurityTier
from symbi_jupyter.orchestrator import SandboxOrchestrator

MiB = 1024 * 1024
ALLOC = "x = b'1' * (300 * 1024 * 1024)"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def overhead(orch: SandboxOrchestrator, runs: int) -> tuple[float, float]:
    python = sys.executable  # the interpreter cells run: this environment's python3
    bare = lambda: subprocess.run([python, "-c", "pass"], check=True)  # noqa: E731
    ours = lambda: orch.execute_code(SecurityTier.NONE, "pass")  # noqa: E731
    for _ in range(3):  # warm the page cache and start the supervisor
        bare()
        ours()
    base, mine = [], []
    for _ in range(runs):
        base.append(timed(bare))
        mine.append(timed(ours))
    return statistics.median(base), statistics.median(mine)


def peaks(orch: SandboxOrchestrator) -> dict[str, int | None]:
    ballast = b"2" * (1024 * MiB)  # the caller is large, as a long-lived kernel gets
    out: dict[str, int | None] = {}
    sandbox = orch.sandbox(SecurityTier.NONE)
    for method in ("auto", "never"):
        sandbox.use_cgroups = method
        res = orch.execute_code(SecurityTier.NONE, ALLOC, limits=ResourceLimits(max_memory_mb=1024))
        out[res.memory_method or method] = res.peak_memory_bytes
    sandbox.use_cgroups = "auto"
    # What a naive runner reports: a child forked (here vforked) by the large caller.
    proc = subprocess.Popen([sys.executable, "-c", ALLOC])
    _, _, usage = os.wait4(proc.pid, 0)
    out["naive ru_maxrss"] = usage.ru_maxrss * 1024
    del ballast
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="symbi-bench-") as tmp:
        os.chmod(tmp, 0o711)
        orch = SandboxOrchestrator(
            allow_native_execution=True,
            working_directory=os.path.join(tmp, "work"),
            audit_log_path=os.path.join(tmp, "audit.jsonl"),
        )
        try:
            base, mine = overhead(orch, args.runs)
            print(f"trivial cell, median of {args.runs}:")
            print(f"  subprocess.run([python3, '-c', 'pass'])  {base * 1000:7.1f} ms")
            print(f"  execute_code(SecurityTier.NONE, 'pass')  {mine * 1000:7.1f} ms")
            print(f"  ratio                                     {mine / base:7.2f}x  "
                  "(target <= 1.15x)")
            print("300 MiB allocation under a 1 GiB caller:")
            for method, peak in peaks(orch).items():
                if peak is None:
                    print(f"  {method:<16} n/a")
                    continue
                error = (peak - 300 * MiB) / (300 * MiB)
                print(f"  {method:<16} peak {peak / MiB:7.1f} MiB  error {error:+7.1%}")
        finally:
            orch.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"(benchmark process max RSS {usage.ru_maxrss / 1024:.0f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

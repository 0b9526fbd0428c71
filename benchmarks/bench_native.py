"""Tier None overhead and peak-memory honesty, each against a baseline measured in the
same run.

    python benchmarks/bench_native.py [--runs 40] [--idle 0.03]

1. Start-up overhead: median wall time of ``execute_code(SecurityTier.NONE, "pass")``
   against a bare ``subprocess.run([python3, "-c", "pass"])``, interleaved so all
   see the same machine load. Target: ratio at most 1.15. Measured twice: as
   configured by default (the run is served by an interpreter started in advance,
   ``NativeSandbox.prestart_interpreter``), and with that off, so that every run
   starts its interpreter after the request, as the bare baseline does. The machine
   idles ``--idle`` seconds (0.03) between calls, as between cells, so no call pays
   for work the one before left running; ``--idle 0`` shows calls back to back.
   Then each in a tight loop of its own: calls requested back to back, where the next
   spare's interpreter is still starting when its request comes.
2. Peak memory: a cell allocating 300 MiB, run from a caller that holds 1 GiB, with
   each measuring method (cgroup, wait4 via the supervisor) against the naive
   ``ru_maxrss`` of a child forked by the caller itself. Target: error under 5 %.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from symbi_jupyter import ResourceLimits, SecurityTier
from symbi_jupyter.bench import time_cell, timed
from symbi_jupyter.orchestrator import SandboxOrchestrator

MiB = 1024 * 1024
ALLOC = "x = b'1' * (300 * 1024 * 1024)"


def bare() -> None:
    """The baseline: the interpreter cells run (this environment's python3), bare."""
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def overhead(
    orchestrators: dict[str, SandboxOrchestrator], runs: int, idle: float
) -> dict[str, float]:
    """Median seconds of the bare baseline and of each orchestrator's trivial run."""
    calls = {"bare": bare}
    for name, orch in orchestrators.items():
        calls[name] = functools.partial(time_cell, orch, SecurityTier.NONE, "pass")
    for _ in range(3):  # warm the page cache and start the supervisors
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            times[name].append(timed(call)[0])
            # Idle between calls, as between cells: work one call leaves behind (the
            # next spare starting) must not land on the next call's clock.
            time.sleep(idle)
    return {name: statistics.median(values) for name, values in times.items()}


def loops(orch: SandboxOrchestrator, runs: int) -> tuple[float, float]:
    """Medians of ``runs`` bare runs in a tight loop, then of ``runs`` trivial
    ``execute_code`` calls in a tight loop (each next spare still starting)."""
    base = [timed(bare)[0] for _ in range(runs)]
    ours = [time_cell(orch, SecurityTier.NONE, "pass").seconds for _ in range(runs)]
    return statistics.median(base), statistics.median(ours)


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
    parser.add_argument(
        "--idle", type=float, default=0.03, help="seconds of idle time between calls (default 0.03)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="symbi-bench-") as tmp:
        os.chmod(tmp, 0o711)

        def orchestrator(name: str) -> SandboxOrchestrator:
            return SandboxOrchestrator(
                allow_native_execution=True,
                working_directory=os.path.join(tmp, name),
                audit_log_path=os.path.join(tmp, f"{name}.jsonl"),
            )

        orch, cold = orchestrator("default"), orchestrator("cold")
        cold.sandbox(SecurityTier.NONE).prestart_interpreter = False
        try:
            medians = overhead({"default": orch, "cold": cold}, args.runs, args.idle)
            base = medians["bare"]
            print(
                f"trivial cell, median of {args.runs}, {args.idle * 1000:.0f} ms idle "
                "between calls:"
            )
            print(f"  subprocess.run([python3, '-c', 'pass'])         {base * 1000:6.1f} ms")
            for name, label in [
                ("default", "execute_code, as configured by default"),
                ("cold", "execute_code, prestart_interpreter off"),
            ]:
                print(f"  {label:<46} {medians[name] * 1000:6.1f} ms  {medians[name] / base:5.2f}x")
            print("  (target <= 1.15x)")
            base, mine = loops(orch, args.runs)
            print(f"the same, {args.runs} calls back to back in a tight loop each:")
            print(f"  subprocess.run([python3, '-c', 'pass'])         {base * 1000:6.1f} ms")
            print(
                f"  {'execute_code, as configured by default':<46} {mine * 1000:6.1f} ms  "
                f"{mine / base:5.2f}x"
            )
            print("300 MiB allocation under a 1 GiB caller:")
            for method, peak in peaks(orch).items():
                if peak is None:
                    print(f"  {method:<16} n/a")
                    continue
                error = (peak - 300 * MiB) / (300 * MiB)
                print(f"  {method:<16} peak {peak / MiB:7.1f} MiB  error {error:+7.1%}")
        finally:
            orch.close()
            cold.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"(benchmark process max RSS {usage.ru_maxrss / 1024:.0f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

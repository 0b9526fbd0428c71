"""Sandboxes on a Ray cluster: what dispatch adds to a cell, and what a second node
gives a map, each against a baseline measured in the same run.

    python benchmarks/bench_cluster.py [--runs 20] [--cells 40] [--quick]

It starts and stops its own trial clusters with the project's commands (``cluster
up``/``cluster down``, under a state directory of its own), one CPU per node.

1. Added latency: the median wall time, as the caller sees it, of a trivial Tier1
   cell (``pass``) through a one-node cluster against the same cell on this host,
   calls alternating, ``--idle`` seconds between calls so each side's pooled
   container is back (both sides are configured alike). Target: at most +10 ms.
   Also shown: a no-op Ray task that needs the tier's slot (Ray's own round trip).
2. Speed-up: ``orch.map`` of ``--cells`` CPU-bound cells at ``--tier`` (Tier1; a
   pure-Python loop calibrated on this machine to ``--cpu`` seconds, 1.0) on two
   nodes of one slot each against one such node. Target: at least 1.8x.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from symbi_jupyter import SecurityTier
from symbi_jupyter.bench import time_cell, timed
from symbi_jupyter.orchestrator import SandboxOrchestrator

TIER = SecurityTier.TIER1
LOOP = "x = 0\nfor i in range({n}):\n    x += i\n"


def calibrate(seconds: float) -> int:
    """The loop count of LOOP that takes ``seconds`` of CPU in this interpreter (the
    sandbox image's Python is of the same version; its CPU time is printed below)."""
    n = 2_000_000
    code = compile(LOOP.format(n=n), "<calibrate>", "exec")
    spent = []
    for _ in range(3):  # CPU time, not wall time: other load must not shorten the loop
        start = time.process_time()
        exec(code, {})
        spent.append(time.process_time() - start)
    return int(n * seconds / min(spent))


@contextmanager
def trial_cluster(root: str, nodes: int, tier: SecurityTier) -> Iterator[str]:
    """``cluster up --nodes N`` (Tier1 and ``tier``, one slot each and one CPU per
    node; tier None allowed by the nodes' config) under a state directory of its own;
    its address; ``cluster down`` at the end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYMBIONT_", "RAY_"))}
    env["XDG_STATE_HOME"] = os.path.join(root, f"state-{nodes}")
    config = os.path.join(root, "node.toml")
    with open(config, "w") as f:
        f.write("[native_execution]\nenabled = true\n")
    tiers = ",".join(sorted({"docker", tier.value}))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "symbi_jupyter.cli", "cluster", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)

    up = cli(
        "up", "--nodes", str(nodes), "--tiers", tiers, "--config", config,
        "--slots", "1", "--num-cpus", "1",
    )  # fmt: skip
    try:
        if up.returncode != 0:
            raise SystemExit(f"cluster up failed:\n{up.stdout}{up.stderr}")
        state_file = os.path.join(env["XDG_STATE_HOME"], "symbi-jupyter", "cluster", "local.json")
        with open(state_file) as f:
            state = json.load(f)
        os.environ["RAY_AUTH_TOKEN_PATH"] = state["token"]
        yield state["address"]
    finally:
        from symbi_jupyter.cluster import rayctl

        rayctl.disconnect()
        down = cli("down")
        if down.returncode != 0:
            print(f"cluster down failed:\n{down.stdout}{down.stderr}", file=sys.stderr)


def latency(local: SandboxOrchestrator, remote: SandboxOrchestrator, runs: int, idle: float):
    """Medians (seconds) of the local cell, the cell through the cluster and a no-op
    Ray task on the tier's slot, alternating."""
    from symbi_jupyter.cluster import resource_name

    ray = remote._cluster_client().ray()
    noop = ray.remote(_noop).options(num_cpus=0, resources={resource_name(TIER): 1})

    def task() -> None:
        ray.get(noop.remote())

    calls = {
        "local": lambda: time_cell(local, TIER, "pass").seconds,
        "cluster": lambda: time_cell(remote, TIER, "pass").seconds,
        "ray": lambda: timed(task)[0],
    }
    for call in calls.values():  # warm-up: images, pools, the task's worker
        call()
        time.sleep(idle)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            times[name].append(call())
            time.sleep(idle)
    return {name: statistics.median(values) for name, values in times.items()}


def _noop() -> None:
    return None


def cpu_busy() -> tuple[float, float]:
    """The machine's CPU seconds (all cores) busy and idle so far, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / tick, idle / tick


@dataclasses.dataclass
class Fanned:
    seconds: float
    results: list[Any]
    busy: float  # the machine's busy CPU seconds during the map, all work
    idle: float

    @property
    def cells_cpu(self) -> float:
        return sum(r.cpu_seconds or 0.0 for r in self.results)


def fan_out(orch: SandboxOrchestrator, tier: SecurityTier, cells: int, n: int) -> Fanned:
    """One map of ``cells`` CPU-bound cells: its seconds, results, and the machine's
    CPU time meanwhile (the cells' own, and everything else's)."""
    code = LOOP.format(n=n) + "print(x)\n"
    orch.execute_code(tier, code)  # warm-up: the node's image and interpreter
    busy, idle = cpu_busy()
    seconds, results = timed(lambda: orch.map([code] * cells, tier=tier, progress=False))
    busy2, idle2 = cpu_busy()
    failed = [str(r) for r in results if not r.success]
    if failed:
        raise SystemExit(f"{len(failed)} cells failed, e.g. {failed[0]}")
    return Fanned(seconds, results, busy2 - busy, idle2 - idle)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="latency samples (default 20)")
    parser.add_argument("--cells", type=int, default=40, help="cells of the map (default 40)")
    parser.add_argument("--cpu", type=float, default=1.0, help="CPU seconds per cell (1.0)")
    parser.add_argument(
        "--idle", type=float, default=1.0, help="seconds between latency calls (default 1.0)"
    )
    parser.add_argument(
        "--tier", default="docker", help="the map's tier (default docker; none: tier None)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="--runs 5 --cells 10: a smoke run, not figures"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.cells = 5, 10
    tier = SecurityTier.parse(args.tier)
    n = calibrate(args.cpu)
    print(f"load average {os.getloadavg()[0]:.2f} at start; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="symbi-bench-cluster-") as root:

        def orchestrator(name: str, address: str = "") -> SandboxOrchestrator:
            audit = os.path.join(root, f"{name}.jsonl")
            return SandboxOrchestrator(
                cluster_address=address, audit_log_path=audit, allow_native_execution=True
            )

        local = orchestrator("local")
        try:
            with trial_cluster(root, 1, tier) as address:
                one = orchestrator("one", address)
                try:
                    medians = latency(local, one, args.runs, args.idle)
                    single = fan_out(one, tier, args.cells, n)
                finally:
                    one.close()
            with trial_cluster(root, 2, tier) as address:
                two = orchestrator("two", address)
                try:
                    double = fan_out(two, tier, args.cells, n)
                finally:
                    two.close()
        finally:
            local.close()
    everything = single.results + double.results
    cpu = statistics.median(r.cpu_seconds for r in everything if r.cpu_seconds)
    nodes = len({r.node for r in double.results})
    added = (medians["cluster"] - medians["local"]) * 1000
    print(f"trivial {TIER.display_name} cell, median of {args.runs}, alternating:")
    print(f"  on this host                          {medians['local'] * 1000:7.1f} ms")
    print(f"  through a one-node cluster            {medians['cluster'] * 1000:7.1f} ms")
    print(f"  added by the cluster                  {added:+7.1f} ms  (target <= +10 ms)")
    print(f"  a no-op Ray task on the tier's slot   {medians['ray'] * 1000:7.1f} ms")
    print(f"map of {args.cells} CPU-bound {tier.display_name} cells ({cpu:.2f} s CPU each):")
    for label, fanned in (("one node, one slot", single), (f"two nodes ({nodes} used)", double)):
        print(
            f"  {label:<24} {fanned.seconds:6.1f} s   machine CPU busy {fanned.busy:6.1f} s, "
            f"idle {fanned.idle:5.1f} s; the cells' own {fanned.cells_cpu:5.1f} s"
        )
    speedup = single.seconds / double.seconds
    print(f"  speed-up                 {speedup:6.2f}x   (target >= 1.8x)")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Round trip of a trivial cell through the symbi kernel against ipykernel, same run.

    python benchmarks/bench_kernel.py [--runs 60] [--tier none]

Both kernels are started through jupyter_client as a front end would; each sample is
``execute("x = 1")`` until the kernel is idle again (every iopub message received),
interleaved between the two kernels so both see the same machine load. The symbi
kernel runs the cell in its persistent sandboxed worker and then displays its
statistics; it is measured with the statistics on (the default) and off.
Target: at most 1.5x ipykernel.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from jupyter_client.manager import start_new_kernel

from symbi_jupyter.cli import main as cli


def round_trip(kc, code: str) -> float:
    start = time.perf_counter()
    msg_id = kc.execute(code)
    while True:
        msg = kc.get_iopub_msg(timeout=60)
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "status"
            and msg["content"]["execution_state"] == "idle"
        ):
            break
    elapsed = time.perf_counter() - start
    kc.get_shell_msg(timeout=60)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--tier", default="none")
    args = parser.parse_args()

    prefix = Path(tempfile.mkdtemp(prefix="symbi-bench-"))
    workdir = Path(tempfile.mkdtemp(prefix="symbi-bench-run-"))
    os.chmod(workdir, 0o711)
    cli(["install-kernel", "--prefix", str(prefix)])
    os.environ.update(
        {
            "JUPYTER_PATH": str(prefix / "share" / "jupyter"),
            "SYMBIONT_ALLOW_NATIVE_EXECUTION": "true",
            "SYMBIONT_NATIVE_WORKING_DIR": str(workdir),
            "SYMBI_KERNEL_TIER": args.tier,
        }
    )
    kernels = {name: start_new_kernel(kernel_name=name) for name in ("python3", "symbi")}
    try:
        symbi = kernels["symbi"][1]
        for kc in (k[1] for k in kernels.values()):
            for _ in range(5):  # start the worker, warm caches
                round_trip(kc, "x = 1")
        samples: dict[str, list[float]] = {"ipykernel": [], "symbi": [], "symbi, stats off": []}
        for _ in range(args.runs):
            samples["ipykernel"].append(round_trip(kernels["python3"][1], "x = 1"))
            samples["symbi"].append(round_trip(symbi, "x = 1"))
        round_trip(symbi, "%symbi_stats off")
        for _ in range(args.runs):
            samples["symbi, stats off"].append(round_trip(symbi, "x = 1"))
    finally:
        for km, kc in kernels.values():
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    base = statistics.median(samples["ipykernel"])
    print(f"trivial cell round trip, medians of {args.runs} (tier {args.tier}):")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"  {name:<18} {median * 1000:7.2f} ms   {median / base:5.2f}x")
    print("target: symbi at most 1.50x ipykernel")


if __name__ == "__main__":
    main()

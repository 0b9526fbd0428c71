"""The isolation experiments of notebook 01, as they run inside a sandbox: stdlib only,
shipped as source by :func:`symbi_jupyter.bench.workloads.isolation_code` with what
the host sees (the host imports it only for its marker and :func:`start_time`). Each
answer is True where the sandbox kept that thing of the host's from the code."""

from __future__ import annotations

import json
import os
import socket
import subprocess

MARKER = "symbi-bench-isolation:"


def start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: a pid with the same start time is the same process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def network_blocked(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=2).close()
    except OSError:
        return True
    return False


def kernel_words(version: str, host_version: str) -> str:
    if version == host_version:
        return "the host's"
    try:
        log = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
    except OSError:
        log = ""
    return "gVisor's" if "gVisor" in log else "its own"


def main(host: dict) -> None:
    version = (read("/proc/version") or "").strip()
    kernel = kernel_words(version, host["kernel"])
    isolated = {
        "host_name": socket.gethostname() != host["host_name"],
        "processes": start_time(host["pid"]) != host["pid_start"],
        "host_file": read(host["file"]) != host["file_text"],
        "kernel": kernel != "the host's",
        "network": network_blocked(host["address"], host["port"]),
        "user": os.getuid() != host["uid"],
    }
    print(MARKER + json.dumps({"isolated": isolated, "kernel": kernel}), flush=True)

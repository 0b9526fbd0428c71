"""The handle on one running VM (:class:`VMWorker`): the byte channel to its agent,
the guest's console, and the VM's result once it is gone."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import TierUnavailable
from ...result import ExecutionResult
from ...tiers import SecurityTier
from .._usage import proc_usage
from ..base import ExecutionRequest, WorkerHandle
from ..supervisor.cgroups import RunCgroup
from ..supervisor.identity import Lease
from .vmm import VMSpec

if TYPE_CHECKING:
    from .sandbox import MicroVMSandbox


def guest_oom(console: str) -> bool:
    """Whether the guest kernel's console log reports an OOM kill."""
    return "Out of memory" in console or "oom-kill" in console


class VMWorker(WorkerHandle):
    """A running VM and the byte channel to its agent."""

    def __init__(
        self,
        sandbox: MicroVMSandbox,
        proc: subprocess.Popen,
        spec: VMSpec,
        cgroup: RunCgroup | None,
        request: ExecutionRequest,
        enforcement: dict[str, str],
        label: str,
        stdio: bool,
        lease: Lease | None = None,
    ) -> None:
        self.sandbox, self.proc, self.spec, self.cgroup = sandbox, proc, spec, cgroup
        self.lease = lease  # the VMM's own uid, freed once it is gone
        self.request, self._enforcement, self.label, self.stdio = (
            request,
            enforcement,
            label,
            stdio,
        )
        self.sock: socket.socket | None = None
        self.result: ExecutionResult | None = None
        self._started = time.monotonic()
        self._send_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._stopped = False
        self._console: str | None = None  # the console's end, once the VM is gone

    @property
    def enforcement(self) -> dict[str, str]:
        return {
            **self._enforcement,
            "vmm": self.label,
            "measurement": "peak memory and CPU of the VMM process, seen from the host: "
            "the guest and its emulation (what the guest says is sandbox_reported)",
        }

    def usage(self) -> dict[str, Any]:
        """The VMM's memory (its cgroup, else /proc) and CPU, as the host sees them.
        The CPU is ``vmm_cpu_seconds``, not ``cpu_seconds``: it includes the emulation,
        so no cell's CPU limit is kept against it."""
        if self.result is not None:
            return {}
        figures = proc_usage(self.proc.pid)
        if not figures:
            return {}
        found = {
            "memory_bytes": figures["memory_bytes"],
            "peak_memory_bytes": figures["peak_memory_bytes"],
            "vmm_cpu_seconds": figures["cpu_seconds"],
            "method": "VMM process",
        }
        if self.cgroup is not None:
            current, peak = self.cgroup.memory_usage(), self.cgroup.peak_memory()
            if current and peak:
                found.update(memory_bytes=current, peak_memory_bytes=peak, method="VMM cgroup")
        return found

    def reset_peak(self) -> bool:
        if self.proc.returncode is not None:
            return False  # reaped: its pid may be another process's now
        if self.cgroup is not None:
            return self.cgroup.reset_peak()
        try:  # "5" resets the process's VmHWM
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    @property
    def detail(self) -> str | None:
        return self.label

    def connect(self, deadline: float) -> None:
        """Connect to the agent's socket once QEMU has made it."""
        if not self.stdio:
            # Through the directory's descriptor: a short path to a deep socket.
            dir_fd = os.open(self.spec.run_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                self._connect(dir_fd, deadline)
            finally:
                os.close(dir_fd)
        self._deadline = deadline
        self._reader = threading.Thread(target=self._read, name="symbi-vm-reader", daemon=True)
        self._reader.start()

    def _connect(self, dir_fd: int, deadline: float) -> None:
        """Retry until QEMU has made the socket (it does so while it starts)."""
        while True:
            if self.proc.poll() is not None:
                raise TierUnavailable(
                    f"the VMM exited while starting ({self.proc.returncode}): "
                    f"{self.vmm_log() or self.console_tail() or 'no output'}"
                )
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(f"/proc/self/fd/{dir_fd}/{self.spec.socket.name}")
                self.sock = sock
                break
            except OSError:
                sock.close()
            if time.monotonic() > deadline:
                raise TierUnavailable("the VMM did not open the agent's socket in time")
            time.sleep(0.01)

    def send(self, data: bytes) -> None:
        with self._send_lock:
            if self.sock is not None:
                self.sock.sendall(data)
            else:
                assert self.proc.stdin is not None  # the serial console's pipe
                self.proc.stdin.write(data)
                self.proc.stdin.flush()

    def _read(self) -> None:
        on_output = self.request.on_output
        try:
            while True:
                if self.sock is not None:
                    chunk = self.sock.recv(1 << 16)
                else:
                    assert self.proc.stdout is not None  # the serial console's pipe
                    chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    break
                if on_output:
                    on_output("stdout", chunk)
        except OSError:
            pass
        # The agent's end closed: the worker exited and the guest powers off.
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._finish()

    def _finish(self) -> None:
        console = self._console = self.console_tail()
        if self.proc.returncode and not self._stopped:
            # The VMM itself failed (a KVM that cannot run the guest, say): its own
            # words are the diagnosis, the console has little or nothing.
            console = "\n".join(filter(None, (console, self.vmm_log())))
        if console and self.request.on_output:
            self.request.on_output("stderr", console.encode())
        oom = guest_oom(console)
        self.result = ExecutionResult(
            tier=SecurityTier.TIER3,
            exit_code=self.proc.returncode or 0,
            killed_by="memory" if oom else ("signal" if self._stopped else None),
            wall_seconds=time.monotonic() - self._started,
            limits=self.request.limits,
            enforcement=self.enforcement,
            sandbox_detail=self.label,
        )
        self._cleanup()

    def vmm_log(self) -> str:
        try:
            return (self.spec.run_dir / "vmm.log").read_text(errors="replace").strip()[-2000:]
        except OSError:
            return ""

    def console_tail(self, size: int = 4000) -> str:
        """The end of the guest's serial console: the kernel's and the init's messages
        (``symbi-guest: ...``). Still readable after the VM has gone."""
        if self._console is not None:
            return self._console[-size:]
        try:
            data = self.spec.console.read_bytes()[-size:]
        except OSError:
            return ""
        return data.decode("utf-8", "replace")

    def _cleanup(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        shutil.rmtree(self.spec.run_dir, ignore_errors=True)
        if self.cgroup is not None:
            self.cgroup.remove()
        if self.lease is not None and self.proc.poll() is not None:
            self.lease.release()

    def stop(self) -> None:
        if self.result is None:
            self._stopped = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            if self._reader is None:  # never connected: nothing else will clean up
                self.proc.wait()
                self._finish()
        if self._reader is not None:
            self._reader.join(timeout=30)

    def wait(self, timeout: float | None = None) -> ExecutionResult | None:
        if self._reader is not None:
            self._reader.join(timeout)
        return self.result

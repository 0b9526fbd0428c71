"""The host never trusts a kernel's worker: attacks from inside real kernel cells on
the protocol the worker speaks to the host. A cell reaches the worker's own objects
(through ``gc``) and writes to its protocol fd; the host must keep its own figures and
caps, end that worker on any violation, and stay answering.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import pytest
from jupyter_client.manager import start_new_kernel

from symbi_jupyter.orchestrator import SandboxOrchestrator
from symbi_jupyter.tiers import SecurityTier

from .helpers import need
from .test_kernel import _install, _kernel_environment, run, stats, stderr, stdout

# The worker object, as a cell finds it; PROTO writes one raw line to the host.
FIND = (
    "import gc, json, os\n"
    "w = next(o for o in gc.get_objects() if type(o).__name__ == 'Worker' "
    "and hasattr(o, 'proto_out'))\n"
    "def raw(data): os.write(w.proto_out, data)\n"
    "def forge(**m): raw((json.dumps({'id': w.current_id, **m}) + '\\n').encode())\n"
)


@pytest.fixture(params=["none", "docker"])
def any_kernel(request, tmp_path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch):
    """A symbi kernel at tier None or Tier1, its client, and its audit log."""
    if request.param != "none":
        probe = SandboxOrchestrator()
        availability = probe.availability()[SecurityTier.parse(request.param)]
        probe.close()
        need(availability.ok, availability.reason, tier=request.param)
    _install(tmp_path)
    for key, value in _kernel_environment(tmp_path, workdir, tier=request.param).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    audit = tmp_path / "state" / "symbi-jupyter" / "audit.jsonl"
    km, kc = start_new_kernel(kernel_name="symbi")
    yield km, kc, audit
    kc.stop_channels()
    with contextlib.suppress(Exception):
        km.shutdown_kernel(now=False)


def alive_after(kc) -> str:
    """What the kernel says when the next cell runs; it must run, in a new worker."""
    reply, outputs = run(kc, "print(6 * 7)")
    assert reply["status"] == "ok", reply
    assert stdout(outputs) == "42\n"
    return stderr(outputs)


def test_a_forged_reply_ends_nothing_and_its_figures_are_not_taken(any_kernel) -> None:
    """The cell burns CPU, forges a reply that claims 1 µs of it, and goes on: the
    host's figure is its own, and the real reply that follows is a second one."""
    _, kc, _ = any_kernel
    run(kc, "kept = 1")
    code = FIND + (
        "import time\n"
        "end = time.process_time() + 0.6\n"
        "while time.process_time() < end: pass\n"
        "forge(type='reply', content={'status': 'ok', 'cpu_user_seconds': 1e-6,"
        " 'cpu_system_seconds': 0.0, 'peak_memory_bytes': 1234})\n"
        "time.sleep(1)\n"
        "print('after the forged reply')\n"
    )
    _, outputs = run(kc, code)
    (figures,) = stats(outputs)
    assert figures["cpu_user_seconds"] is None or figures["cpu_user_seconds"] >= 0.3
    assert figures["peak_memory_bytes"] != 1234
    # The cell's own later messages (its output, its real reply) come for a request
    # the host has closed: the worker goes, and the cell queued behind it says why.
    reply, _ = run(kc, "print('queued')")
    assert reply["status"] == "error" and "broke the protocol" in reply["evalue"], reply
    assert "message for no open request (id" in reply["evalue"]
    assert alive_after(kc) == ""


def test_forged_stream_messages_stop_at_the_hosts_cap(any_kernel) -> None:
    """30 MiB of stream messages written straight to the protocol fd, past the
    worker's own cap: the client gets at most the cap and one truncation note."""
    _, kc, _ = any_kernel
    run(kc, "%symbi_limits --reset")
    code = FIND + (
        "chunk = 'x' * (1 << 20)\n"
        "for _ in range(30): forge(type='stream', name='stdout', text=chunk)\n"
    )
    _, outputs = run(kc, code, timeout=120)
    text = stdout(outputs)
    cap = 10 * 1024 * 1024
    assert cap <= len(text) < cap + 200 and "[output truncated at" in text
    (figures,) = stats(outputs)
    assert figures["stdout_truncated"] and "output" in figures["limits_reached"]


@pytest.mark.parametrize(
    "attack, reason",
    [
        ("raw(b'x' * (48 << 20))", "longer than 16777216 bytes"),
        ("raw(b'[' * 200000 + b'\\n')", "nested more than 64 deep"),
        ("raw(b'not json\\n')", "not JSON"),
        (
            "forge(type='reply', content={'status': 'ok', 'cpu_user_seconds': float('nan')})",
            "NaN is not JSON",
        ),
        (
            "forge(type='execute_result', data={}, metadata={}); "
            'raw(b\'{"id": 999, "type": "stream"}\\n\')',
            "for no open request (id 999)",
        ),
    ],
    ids=["48-MiB-line", "nested-line", "not-json", "nan", "unknown-id"],
)
def test_a_malformed_message_ends_the_worker_never_the_kernel(any_kernel, attack, reason) -> None:
    km, kc, _ = any_kernel
    run(kc, "kept = 1")
    reply, outputs = run(kc, FIND + attack + "\nimport time; time.sleep(5)", timeout=120)
    assert reply["status"] == "error" and reason in reply["evalue"], reply
    assert "state is gone" in reply["evalue"]
    (figures,) = stats(outputs)
    assert figures["killed_by"] == "protocol"
    reply, outputs = run(kc, "print('kept' in dir(), 6 * 7)")
    assert reply["status"] == "ok" and stdout(outputs) == "False 42\n"
    reply, _ = run(kc, "%symbi_session restart")
    assert reply["status"] == "ok"
    kc.shutdown()
    km.shutdown_kernel(now=False)
    assert not km.is_alive()


def test_cpu_between_cells_is_metered(any_kernel) -> None:
    """A daemon thread left computing after its cell returns gets at most the CPU
    limit between cells: the host stops the worker and the audit log says so."""
    _, kc, audit = any_kernel
    reply, _ = run(kc, "%symbi_limits --max-cpu-seconds 1")
    assert reply["status"] == "ok"
    spin = "lambda: [0 for _ in iter(int, 1)]"
    code = f"import threading\nthreading.Thread(target={spin}, daemon=True).start()"
    reply, _ = run(kc, code)
    assert reply["status"] == "ok"
    time.sleep(8)
    said = alive_after(kc)
    assert "while no cell ran, past the 1 s allowed between cells" in said
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    (idle,) = [r for r in records if r.get("event") == "session-idle"]
    # Stopped at the first look past the budget (every 0.25 s), not after 8 s.
    assert idle["killed_by"] == "cpu" and 1.0 < idle["cpu_seconds"] < 2.5

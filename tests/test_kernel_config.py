"""``%config`` and ``%%symbi -o`` in the symbi kernel, as notebooks written for
ipykernel use them: a cell may make the operator's policy stricter and back, never
looser (refused and audited); ``-o`` puts the result's figures in the session."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from .test_kernel import refused, run, stdout, symbi_kernel

WRITE_2_MB = (
    "import os\n"
    "with open('big.bin', 'wb') as f:\n"
    "    f.write(b'x' * (2 << 20))\n"
    "print('wrote', os.path.getsize('big.bin'))"
)


@pytest.fixture(scope="module")
def audited():
    """A tier None symbi kernel whose operator set a 10 MB file ceiling, and the path of
    its audit log."""
    audit = Path(tempfile.mkdtemp(prefix="symbi-kc-")) / "audit.jsonl"
    config = {
        "SandboxOrchestrator": {"max_file_size_mb": 10, "audit_log_path": str(audit)},
    }
    with symbi_kernel("none", config) as kc:
        yield kc, audit


def records(audit: Path) -> list[dict]:
    return [json.loads(line) for line in audit.read_text().splitlines()]


def test_a_cell_may_lower_a_ceiling_and_put_it_back(audited) -> None:
    kc, _ = audited
    run(kc, "x = 'kept'")
    reply, outputs = run(kc, "%config SandboxOrchestrator.max_file_size_mb = 1")
    assert reply["status"] == "ok", reply
    # the running worker keeps its limits and its state, and the kernel says so
    assert "the running one keeps the limits it started with" in stdout(outputs)
    assert stdout(run(kc, "print(x)")[1]) == "kept\n"
    reply, outputs = run(kc, "%%symbi --tier none\n" + WRITE_2_MB)
    assert "wrote" not in stdout(outputs)
    run(kc, "%symbi_session restart")
    reply, outputs = run(kc, WRITE_2_MB)
    assert reply["status"] == "error" and "wrote" not in stdout(outputs)
    assert run(kc, "%config SandboxOrchestrator.max_file_size_mb = 10")[0]["status"] == "ok"
    reply, outputs = run(kc, "%%symbi --tier none\n" + WRITE_2_MB)
    assert reply["status"] == "ok" and stdout(outputs) == f"wrote {2 << 20}\n"


def test_a_cell_may_not_loosen_the_operators_policy(audited) -> None:
    kc, audit = audited
    reply = refused(kc, "%config SandboxOrchestrator.max_file_size_mb = 20")
    assert reply["ename"] == "PolicyViolation"
    assert "would loosen the operator's 10" in reply["evalue"]
    reply = refused(kc, "%config SandboxOrchestrator.allow_network = True")
    assert reply["ename"] == "PolicyViolation" and "switch it off" in reply["evalue"]
    reply = refused(kc, "%config SandboxOrchestrator.working_directory = '/'")
    assert "a cell may only make it stricter" in reply["evalue"]
    refusals = [r for r in records(audit) if r.get("event") == "config"]
    assert len(refusals) == 3 and all(r["outcome"] == "refused" for r in refusals)
    assert "max_file_size_mb = 20" in refusals[0]["error"]
    # nothing changed
    assert "max_file_size_mb = 10.0\n" in stdout(run(kc, "%config SandboxOrchestrator")[1])


def test_config_shows_and_checks_what_it_is_given(audited) -> None:
    kc, _ = audited
    _, outputs = run(kc, "%config")
    assert "SandboxOrchestrator" in stdout(outputs) and "ResultDisplay" in stdout(outputs)
    reply = refused(kc, "%config SandboxOrchestrator.max_memory_mb = limit")
    assert reply["ename"] == "ConfigError" and "not a literal" in reply["evalue"]
    reply = refused(kc, "%config SandboxOrchestrator.max_memory_mb = 'lots'")
    assert reply["ename"] == "ConfigError" and "max_memory_mb" in reply["evalue"]
    assert "no Nonsense" in refused(kc, "%config Nonsense.x = 1")["evalue"]
    reply = refused(kc, "%config SymbiKernel.tier = 'none'")
    assert "a cell may set show_stats" in reply["evalue"]
    assert run(kc, "%config SymbiKernel.stats_style = 'compact'")[0]["status"] == "ok"
    assert "stats_style = 'compact'" in stdout(run(kc, "%config SymbiKernel")[1])
    # equal to the operator's: allowed (a notebook written for ipykernel turns it on)
    reply, outputs = run(
        kc, "%load_ext symbi_jupyter\n%config SandboxOrchestrator.allow_native_execution = True"
    )
    assert reply["status"] == "ok" and "already loaded" in stdout(outputs)
    # %config below code is the sandbox's, which says where it belongs
    reply = refused(kc, "y = 1\n%config SandboxOrchestrator.max_memory_mb = 1")
    assert "put it on the cell's first lines" in reply["evalue"]


def test_switching_native_execution_off_stops_the_native_worker(audited) -> None:
    kc, _ = audited
    run(kc, "z = 1")
    reply, outputs = run(kc, "%config SandboxOrchestrator.allow_native_execution = False")
    assert reply["status"] == "ok" and "is off: the worker was stopped" in stdout(outputs)
    assert refused(kc, "print(1)")["ename"] == "PolicyViolation"
    assert run(kc, "%config SandboxOrchestrator.allow_native_execution = True")[0]["status"] == (
        "ok"
    )
    assert stdout(run(kc, "print('z' in dir())")[1]) == "False\n"


def test_symbi_out_puts_the_results_figures_in_the_session(audited) -> None:
    kc, _ = audited
    reply, _ = run(kc, "%%symbi --tier none --max-memory 256 -o first\nprint('hello')")
    assert reply["status"] == "ok", reply
    reply, outputs = run(
        kc, "print(first.exit_code, first.success, first.stdout, first.limits.max_memory_mb)"
    )
    assert stdout(outputs) == "0 True hello\n 256.0\n"
    _, outputs = run(kc, "print(repr(first), sorted(first.enforcement) != [], 'first' in dir())")
    assert stdout(outputs).startswith("[symbi] None (native) · exit 0")
    assert stdout(outputs).endswith(" True True\n")
    assert stdout(run(kc, "print('__symbi_store' in dir())")[1]) == "False\n"
    reply, _ = run(kc, "%%symbi --tier none --timeout 1 -o slow\nwhile True: pass")
    assert reply["status"] == "ok"  # as in IPython: a limit is a result, not an error
    assert stdout(run(kc, "print(slow.killed_by, slow.timed_out)")[1]) == "timeout True\n"
    assert "not a Python name" in refused(kc, "%%symbi -o 2x\nprint(1)")["evalue"]
    run(kc, "%symbi_session fresh")
    reply = refused(kc, "%%symbi --tier none -o gone\nprint(1)")
    assert "fresh session mode" in reply["evalue"]
    run(kc, "%symbi_session persistent")

"""The %%symbi magic through a real IPython InteractiveShell."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from IPython.utils.capture import capture_output

from symbi_jupyter import ConfigError, ExecutionResult, PolicyViolation

from .helpers import leased, need, run_cell

run = run_cell


def allow(ip) -> None:
    ip.run_line_magic("config", "SandboxOrchestrator.allow_native_execution = True")


def test_native_refused_until_allowed_one_line(ip):
    result, cap = run(ip, "%%symbi --tier none\nprint('hi')")
    assert isinstance(result.error_in_exec, PolicyViolation)
    assert "Traceback" not in cap.stdout + cap.stderr
    assert "PolicyViolation" in cap.stdout and "allow_native_execution" in cap.stdout
    assert "hi" not in cap.stdout
    allow(ip)
    result, cap = run(ip, "%%symbi --tier none\nprint('hi')")
    assert result.success and cap.stdout.startswith("hi\n")


def test_output_then_stats_and_out_variable(ip):
    allow(ip)
    result, cap = run(ip, "%%symbi --tier none --max-memory 1024 -o res\nprint('hello')")
    assert result.success
    assert cap.stdout.startswith("hello\n")
    res = ip.user_ns["res"]
    assert isinstance(res, ExecutionResult) and res.limits.max_memory_mb == 1024
    [shown] = cap.outputs
    assert "[symbi] None (native) · exit 0" in shown.data["text/plain"]
    assert 'class="symbi-result"' in shown.data["text/html"]
    assert "application/vnd.symbi.result+json" in shown.data


@pytest.mark.parametrize(
    "flags",
    [
        "--native",
        "--sandbox-tier=none",
        "--tier=NATIVE",
        "-t tier0",
        "--native --max-memory=1024 --max-cpu=2.0 --timeout=300",
        "--native --max-cpu-seconds 10 --max-processes 64 --no-network",
    ],
)
def test_seed_cli_spellings(ip, flags):
    allow(ip)
    result, cap = run(ip, f"%%symbi {flags} -o r\nprint(6 * 7)")
    assert result.success and cap.stdout.startswith("42\n")
    r = ip.user_ns["r"]
    if "--max-memory=1024" in flags:
        assert (r.limits.max_memory_mb, r.limits.max_cpu_cores, r.limits.timeout_seconds) == (
            1024,
            2.0,
            300,
        )
    if "--max-processes 64" in flags:
        assert (r.limits.max_processes, r.limits.max_cpu_seconds, r.limits.network) == (
            64,
            10,
            False,
        )


def test_exec_env_quiet_keep(ip):
    allow(ip)
    result, cap = run(
        ip, '%%symbi --native --exec bash --env A=1 --env "B=x y" --quiet -o r\necho "$A|$B"'
    )
    assert result.success
    assert cap.stdout == "1|x y\n" and not cap.outputs  # --quiet: no stats
    result, cap = run(ip, "%%symbi --native --keep-workdir --quiet -o r\nprint(1)")
    kept = Path(ip.user_ns["r"].workdir)
    # A blank first line stands for the %%symbi line: the file's line numbers are the cell's.
    assert kept.is_dir() and (kept / "cell.py").read_text() == "\nprint(1)\n"


def test_stopped_runs_render_why(ip):
    allow(ip)
    result, cap = run(
        ip,
        "%%symbi --native --timeout 1 -o r\nimport time\n"
        "print('partial', flush=True)\ntime.sleep(30)",
    )
    assert result.success  # a limit is a result, not an exception
    assert cap.stdout.startswith("partial\n")
    assert ip.user_ns["r"].timed_out
    assert "stopped: timeout" in cap.outputs[0].data["text/plain"]


@pytest.mark.parametrize(
    ("cell", "error"),
    [
        ("%%symbi --tier nope\n1", ConfigError),
        ("%%symbi --native --tier docker\n1", ConfigError),
        ("%%symbi --native --env NOEQUALS\n1", ConfigError),
        ("%%symbi --native --max-memory 999999\n1", PolicyViolation),
        ("%%symbi --native --max-memory -5\n1", ConfigError),
        ("%%symbi --native --exec cobol\n1", ConfigError),
    ],
)
def test_bad_input_is_one_line(ip, cell, error):
    allow(ip)
    result, cap = run(ip, cell)
    assert isinstance(result.error_in_exec, error)
    assert "Traceback" not in cap.stdout + cap.stderr
    assert len([ln for ln in cap.stdout.splitlines() if ln.strip()]) == 1


def test_no_raise_error_shows_a_refusal_as_the_cells_stderr(ip, audit_path):
    """For a notebook that shows a refusal and must run clean (papermill fails a run on
    any error output, whatever its tags): the cell succeeds, the refusal is its stderr,
    in the line it shows when raised, and is audited as ever."""
    result, cap = run(ip, "%%symbi --tier none --no-raise-error\nprint('hi')")
    assert result.success and result.error_in_exec is None
    assert cap.stdout == "" and not cap.outputs
    (line,) = cap.stderr.splitlines()
    assert line.startswith("\x1b[0;31mPolicyViolation\x1b[0m: native execution (tier None)")
    assert "allow_native_execution" in line
    assert '"outcome":"refused"' in audit_path.read_text()
    # A cell the policy admits runs as usual; bad flags are still errors.
    allow(ip)
    result, cap = run(ip, "%%symbi --tier none --no-raise-error\nprint('hi')")
    assert result.success and cap.stdout.startswith("hi\n") and cap.stderr == ""
    result, _ = run(ip, "%%symbi --tier nope --no-raise-error\n1")
    assert result.success  # a ConfigError is a refusal too
    result, _ = run(ip, "%%symbi --bogus --no-raise-error\n1")
    assert type(result.error_in_exec).__name__ == "UsageError"


@pytest.mark.parametrize("line", ["--bogus", "--max-memory lots", "--timeout", "--env 'A=1"])
def test_bad_flags_are_usage_errors(ip, line):
    allow(ip)
    result, cap = run(ip, f"%%symbi --native {line}\nprint(1)")
    assert type(result.error_in_exec).__name__ == "UsageError"
    assert "Traceback" not in cap.stdout + cap.stderr
    assert "1\n" not in cap.stdout


def test_help_lists_every_flag(ip):
    doc = ip.find_cell_magic("symbi").__doc__
    for flag in (
        "--tier",
        "--sandbox-tier",
        "--native",
        "--max-memory",
        "--max-cpu",
        "--max-cpu-seconds",
        "--timeout",
        "--max-processes",
        "--network",
        "--no-network",
        "--exec",
        "--env",
        "--out",
        "--quiet",
        "--keep-workdir",
        "--no-raise-error",
    ):
        assert flag in doc


def test_config_reaches_sandbox_and_display(ip):
    allow(ip)
    ip.run_line_magic("config", "NativeSandbox.use_cgroups = 'never'")
    ip.run_line_magic("config", "ResultDisplay.stable = True")
    _, cap = run(ip, "%%symbi --native -o r\nprint(1)")
    assert ip.user_ns["r"].memory_method == "wait4"
    # Stable: no figures; the cgroup CPU quota is honestly reported as not enforced.
    line = cap.outputs[0].data["text/plain"]
    status, _, missing = line.partition(" · not enforced: ")
    assert status == "[symbi] None (native) · exit 0"
    names = missing.split(", ")
    # Without root, the run's own namespaces are not enforced either (said first).
    assert names[0] == "cpu_cores" if os.geteuid() == 0 else "cpu_cores" in names
    assert "ms" not in line and "MiB" not in line
    # Changing the trait after the sandbox exists reaches it too.
    ip.run_line_magic("config", "NativeSandbox.use_cgroups = 'auto'")
    run(ip, "%%symbi --native -o r\nprint(1)")
    if os.geteuid() == 0:
        assert ip.user_ns["r"].memory_method == "cgroup"


def test_symbi_tiers(ip):
    with capture_output() as cap:
        ladder = ip.run_line_magic("symbi_tiers", "")
    text = str(ladder)
    assert "None (Native - No Isolation)" in text and "Tier3 (Firecracker)" in text
    rows = [line for line in text.splitlines() if line.lstrip().startswith(("None", "Tier"))]
    assert len(rows) == 4
    assert all(("ready" in row) != ("unavailable" in row) for row in rows)
    assert "<table" in ladder._repr_html_()
    assert cap.stdout == ""


def test_container_tier_cell(ip):
    from symbi_jupyter import SecurityTier

    orch = ip.magics_manager.registry["SymbiMagics"].orchestrator
    availability = orch.sandbox(SecurityTier.TIER1).availability()
    need(availability.ok, availability.reason, tier="docker")
    cell = "%%symbi --tier docker --max-memory 256 -o r\nimport os\nprint(os.getuid())"
    result, cap = run(ip, cell)
    assert result.success and leased(cap.stdout.split()[0])
    assert ip.user_ns["r"].tier is SecurityTier.TIER1
    assert "[symbi] Tier1 (docker) · exit 0" in cap.outputs[0].data["text/plain"]


def test_symbi_compare(ip):
    allow(ip)
    run(ip, "%%symbi --native --quiet -o one\nprint(1)")
    run(ip, "%%symbi --native --quiet --timeout 1 -o two\nimport time; time.sleep(5)")
    with capture_output():
        table = ip.run_line_magic("symbi_compare", "one two")
    text = str(table)
    assert "one" in text.splitlines()[0] and "stopped: timeout" in text
    result, _ = run(ip, "%symbi_compare one nope")
    assert type(result.error_in_exec).__name__ == "UsageError"

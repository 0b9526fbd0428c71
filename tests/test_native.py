"""Tier None against real processes: limits, escapes, floods, secrets, clean-up."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from symbi_jupyter import (
    ConfigError,
    PolicyViolation,
    ResourceLimits,
    SecurityTier,
    TierUnavailable,
)
from symbi_jupyter.audit import verify
from symbi_jupyter.limits import host_cores
from symbi_jupyter.orchestrator import SandboxOrchestrator
from symbi_jupyter.sandboxes.native import host_tag

from .helpers import host_dir, is_prestarted, leased, need, wait_until

MiB = 1024 * 1024
ALLOC_300 = "x = b'1' * (300 * 1024 * 1024)"  # writes every page, unlike bytearray(n)
NONE = SecurityTier.NONE


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def as_nobody(script: str, *args: str, prefix: list[str] = (), **run: object):
    """Run ``script`` with this Python as the user nobody (a host without root's
    privileges), its output captured."""
    argv = [
        *prefix,
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        sys.executable,
        "-c",
        script,
        *args,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **run)


def ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def pytest_generate_tests(metafunc):
    if "orch" in metafunc.fixturenames:
        metafunc.parametrize("interpreter", ["prestarted", "fresh"], indirect=True)


@pytest.fixture(autouse=True)
def interpreter(request):
    """Each test with the ``orch`` fixture runs twice: its runs served by a pre-started
    interpreter, and by one started after the request (the spare is taught by an
    unaudited first run, so the test's own first run is served as its later ones)."""
    mode = getattr(request, "param", None)
    if mode is not None:
        orch = request.getfixturevalue("orch")
        orch.sandbox(NONE).prestart_interpreter = mode == "prestarted"
        if mode == "prestarted":
            audit, orch.audit_log_path = orch.audit_log_path, ""
            orch.execute_code(NONE, "pass")
            orch.audit_log_path = audit
    return mode


def ran_in(pid: str, orch) -> bool:
    """Whether process ``pid`` runs code from this orchestrator's working directory.
    The spare's pre-started interpreter, still in its bootstrap, runs none."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    if orch.working_directory not in cmdline:
        return False
    return not is_prestarted(cmdline.split("\0")[1], pid)


def run_cgroup_dirs() -> list[str]:
    """Per-run cgroups of this test process that exist now (run ids start with the
    host's pid; the parent groups stay)."""
    found = []
    # os.walk, not Path.glob: other programs' groups come and go during the walk,
    # and glob fails on one that vanished under it.
    for top in Path("/sys/fs/cgroup").iterdir():
        for where, dirs, _ in os.walk(top):
            if os.path.basename(where) == "symbi-jupyter" and where != str(top):
                found += [os.path.join(where, d) for d in dirs if d.startswith(host_tag() + "-")]
    return found


# ----------------------------------------------------------------------- basics
def test_runs_code_and_reports_stats(orch):
    res = orch.execute_code(NONE, "print('hello')", limits=ResourceLimits(max_memory_mb=256))
    assert res.stdout == "hello\n"
    assert res.exit_code == 0 and res.success and res.killed_by is None
    assert res.tier is NONE
    assert res.limits.max_memory_mb == 256
    assert res.cpu_user_seconds is not None and res.cpu_system_seconds is not None
    assert res.peak_memory_bytes and res.memory_method in ("cgroup", "wait4")
    assert res.wall_seconds > 0 and res.execution_time_ms >= 0
    assert res.to_dict()["success"] is True


@pytest.mark.parametrize(
    ("language", "code", "expected"),
    [
        ("bash", 'echo "bash $((6*7))"', "bash 42\n"),
        ("sh", "echo sh-ok", "sh-ok\n"),
        ("python", "print(2**10)", "1024\n"),
    ],
)
def test_languages(orch, language, code, expected):
    res = orch.execute_code(NONE, code, language=language)
    assert res.stdout == expected and res.success


def test_unknown_language_is_config_error(orch):
    with pytest.raises(ConfigError, match="accepted: python3"):
        orch.execute_code(NONE, "x", language="cobol")


def test_exit_status_and_stderr(orch):
    res = orch.execute_code(NONE, "import sys; print('e', file=sys.stderr); sys.exit(3)")
    assert res.exit_code == 3 and not res.success and res.killed_by is None
    assert res.stderr == "e\n"


def test_signal_death_is_reported(orch):
    res = orch.execute_code(NONE, "import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    assert res.exit_code == -1 and res.term_signal == signal.SIGTERM
    assert res.killed_by == "signal"


def test_code_travels_intact_not_in_argv(orch):
    code = "import sys\nprint(repr('it\\'s \"quoted\" $(id) `x`'))\nprint(sys.argv[1:])\n"
    res = orch.execute_code(NONE, code)
    assert res.stdout == "'it\\'s \"quoted\" $(id) `x`'\n[]\n"


def test_non_utf8_bytes_and_nul(orch):
    latin = b"# -*- coding: latin-1 -*-\nprint(ascii('\xe9t\xe9'))\n"
    res = orch.execute_code(NONE, latin)
    assert res.stdout == "'\\xe9t\\xe9'\n"
    # A NUL would be refused in argv ("embedded null byte"); in the code file it arrives.
    code = "import sys\nprint(open(sys.argv[0], 'rb').read()[-6:])\n#\x00end"
    res = orch.execute_code(NONE, code)
    assert res.stdout == "b'\\n#\\x00end'\n"
    # Bash passes NUL-free bytes that are not UTF-8 straight through.
    res = orch.execute_code(NONE, b"printf '\\377\\376'", language="bash")
    assert res.stdout == "\ufffd\ufffd"


def test_code_is_in_a_private_file_not_on_the_command_line(orch):
    res = orch.execute_code(
        NONE,
        "import os, sys, stat\n"
        "args = open('/proc/self/cmdline','rb').read().split(b'\\0')[:-1]\n"
        "print(any(b'SECRET' + b'CELL' in arg for arg in args), args[-1].decode())\n"
        "print(oct(stat.S_IMODE(os.stat(os.path.dirname(sys.argv[0])).st_mode)))\n"
        "# SECRETCELL\n",
    )
    # The code file's path comes last (after the cell runner, for a fresh interpreter).
    on_command_line, path, mode = res.stdout.split()
    assert on_command_line == "False" and path.endswith("/cell.py")
    assert mode == "0o700"


# ----------------------------------------------------------------------- policy
def test_native_off_by_default_explains_how(workdir, audit_path):
    orch = SandboxOrchestrator(working_directory=str(workdir), audit_log_path=str(audit_path))
    with pytest.raises(PolicyViolation) as err:
        orch.execute_code(NONE, "print(1)")
    msg = str(err.value)
    for way in (
        "SandboxOrchestrator.allow_native_execution",
        "%config",
        "[native_execution] enabled",
        "SYMBIONT_ALLOW_NATIVE_EXECUTION",
    ):
        assert way in msg
    assert verify(audit_path).records == 1
    assert '"outcome":"refused"' in audit_path.read_text()


@pytest.mark.parametrize("value", ["production", "prod"])
def test_production_guard(orch, monkeypatch, value):
    monkeypatch.setenv("SYMBIONT_ENV", value)
    with pytest.raises(PolicyViolation, match="SYMBIONT_ALLOW_UNISOLATED"):
        orch.execute_code(NONE, "print(1)")
    monkeypatch.setenv("SYMBIONT_ALLOW_UNISOLATED", "0")
    with pytest.raises(PolicyViolation):
        orch.execute_code(NONE, "print(1)")
    for ok in ("1", "true", "TRUE"):
        monkeypatch.setenv("SYMBIONT_ALLOW_UNISOLATED", ok)
        assert orch.execute_code(NONE, "print(1)").stdout == "1\n"


@pytest.mark.parametrize("value", ["staging", "dev", "local", "test", "ci", ""])
def test_non_production_deployments_allow_native(orch, monkeypatch, value):
    monkeypatch.setenv("SYMBIONT_ENV", value)
    assert orch.execute_code(NONE, "print(1)").success


def test_unknown_deployment_is_an_error(orch, monkeypatch):
    monkeypatch.setenv("SYMBIONT_ENV", "prodution")
    with pytest.raises(ConfigError, match="SYMBIONT_ENV"):
        orch.execute_code(NONE, "print(1)")


def test_unknown_tier_lists_accepted_names(orch):
    with pytest.raises(ConfigError, match="none, native, tier0, tier1, docker"):
        orch.execute_code("tier9", "print(1)")


@pytest.mark.parametrize("tier", ["tier3", "firecracker", "microvm"])
def test_unavailable_tier_never_falls_back(orch, tier, tmp_path, audit_path):
    orch.sandbox(tier).artifacts_dir = str(tmp_path / "no-guest-here")
    with pytest.raises(TierUnavailable, match="image build --tier3"):
        orch.execute_code(tier, "print(1)")
    (record,) = [json.loads(line) for line in audit_path.read_text().splitlines()]
    assert record["outcome"] == "refused" and record["tier"] == "Tier3"


def test_default_tier_is_tier1_and_not_native(orch):
    assert orch.default_sandbox_tier == "Tier1"
    try:
        res = orch.execute_code(None, "print(1)")
    except TierUnavailable as exc:  # no engine here: refused, never run natively
        assert "Tier1 (Docker)" in str(exc)
    else:
        assert res.tier is SecurityTier.TIER1


@pytest.mark.parametrize(
    ("field", "value", "trait"),
    [
        ("max_memory_mb", 4096, "max_memory_mb"),
        ("timeout_seconds", 301, "max_execution_time_seconds"),
        ("max_processes", 1000, "max_processes"),
        ("max_cpu_seconds", 1000, "max_cpu_seconds"),
        ("max_file_size_mb", 1000, "max_file_size_mb"),
    ],
)
def test_limits_may_only_lower_the_ceilings(orch, field, value, trait):
    with pytest.raises(PolicyViolation, match=f"SandboxOrchestrator.{trait}"):
        orch.execute_code(NONE, "print(1)", limits=ResourceLimits(**{field: value}))


def test_network_needs_policy(orch):
    with pytest.raises(PolicyViolation, match="allow_network"):
        orch.execute_code(NONE, "print(1)", limits=ResourceLimits(network=True))


@pytest.mark.parametrize("bad", [0, -5, float("nan"), "10"])
def test_bad_limit_values(bad):
    with pytest.raises(ConfigError):
        ResourceLimits(max_memory_mb=bad)


def test_executable_allowlist_by_real_path(orch, tmp_path):
    fake = tmp_path / "python3"
    fake.symlink_to("/bin/cat")
    with pytest.raises(PolicyViolation, match="not on the allowlist"):
        orch.execute_code(NONE, "print(1)", executable=str(fake))
    copy = tmp_path / "bin" / "python3"
    copy.parent.mkdir()
    copy.write_text("#!/bin/sh\necho pwned\n")
    copy.chmod(0o755)
    with pytest.raises(PolicyViolation, match="not on the allowlist"):
        orch.execute_code(NONE, "print(1)", executable=str(copy))
    # A symlink to the real interpreter is that interpreter.
    good = tmp_path / "py"
    good.symlink_to(os.path.realpath(sys.executable))
    assert orch.execute_code(NONE, "print(7)", executable=str(good)).stdout == "7\n"


def test_executable_outside_allowlist_refused(orch):
    orch.allowed_executables = ["bash"]
    with pytest.raises(PolicyViolation, match="allowlist"):
        orch.execute_code(NONE, "print(1)")
    assert orch.execute_code(NONE, "echo ok", language="bash").stdout == "ok\n"


def test_argv_runs_its_program_without_a_shell_where_cwd_says(orch, workdir, audit_path):
    start = workdir / "start"
    start.mkdir(mode=0o755)
    tool = start / "tool.py"
    tool.write_text("#!/bin/sh\necho tool\n")
    tool.chmod(0o755)
    (start / "show.py").write_text("import os, sys; print(os.getcwd(), sys.argv[1:])\n")
    res = orch.execute_code(
        NONE, "python3 show.py '$HOME'", argv=["python3", "show.py", "$HOME"], cwd=str(start)
    )
    assert res.success, res.stderr
    assert res.stdout == f"{start} ['$HOME']\n"  # nothing expanded: no shell
    assert res.language == "command"
    record = json.loads(audit_path.read_text().splitlines()[-1])
    assert (record["argv"], record["cwd"]) == (["python3", "show.py", "$HOME"], str(start))
    # Its program is checked like an interpreter: by real path, against the allowlist.
    orch.allowed_executables = ["bash"]
    with pytest.raises(PolicyViolation, match=r"executable 'python3' resolves to .* not on"):
        orch.execute_code(NONE, "python3", argv=["python3"])
    # A relative path is found from cwd, and without one there is nothing to find.
    with pytest.raises(PolicyViolation, match=r"'\./tool\.py' is a relative path"):
        orch.execute_code(NONE, "./tool.py", argv=["./tool.py"])
    with pytest.raises(PolicyViolation, match=f"executable '{tool}' resolves to {tool}, which"):
        orch.execute_code(NONE, "./tool.py", argv=["./tool.py"], cwd=str(start))


@pytest.mark.parametrize(
    ("tier", "kwargs", "message"),
    [
        (NONE, {"argv": []}, "argv must be a non-empty list"),
        (NONE, {"argv": "python3 x"}, "argv must be a non-empty list"),
        (NONE, {"argv": ["python3", "a\0b"]}, "without NUL"),
        (NONE, {"argv": ["python3"], "language": "python3"}, "give no language"),
        (NONE, {"argv": ["python3"], "cwd": "relative"}, "absolute path of a directory"),
        (SecurityTier.TIER1, {"argv": ["python3"]}, "tier None only"),
    ],
)
def test_bad_argv_and_cwd_are_config_errors(orch, tier, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        orch.execute_code(tier, "x", **kwargs)


@pytest.mark.parametrize("path", ["/etc/symbi", "/usr/lib/x", "/", "relative/dir", "/proc/x"])
def test_working_directory_blocklist(orch, path):
    orch.working_directory = path
    with pytest.raises(PolicyViolation, match="working directory"):
        orch.execute_code(NONE, "print(1)")


def test_working_directory_symlink_into_system_tree(orch, tmp_path):
    link = Path("/tmp") / f"symbi-link-{os.getpid()}"
    link.symlink_to("/etc")
    try:
        orch.working_directory = str(link)
        with pytest.raises(PolicyViolation, match="resolves through a symlink"):
            orch.execute_code(NONE, "print(1)")
    finally:
        link.unlink()


# ----------------------------------------------------------------------- environment
def test_host_secrets_do_not_reach_the_code(orch, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    monkeypatch.setenv("SHARED_NAME", "visible")
    code = "import os; print(sorted(os.environ)); print(os.environ.get('AWS_SECRET_ACCESS_KEY'))"
    res = orch.execute_code(NONE, code, env={"MINE": "a=b c"})
    assert "hunter2" not in res.stdout and "AWS_SECRET_ACCESS_KEY" not in res.stdout
    assert "'MINE'" in res.stdout and "SHARED_NAME" not in res.stdout
    orch.env_passthrough = ["SHARED_NAME"]
    res = orch.execute_code(
        NONE, "import os; print(os.environ['SHARED_NAME'], os.environ['M'])", env={"M": "x"}
    )
    assert res.stdout == "visible x\n"


@pytest.mark.parametrize("env", [{"A=B": "1"}, {"": "1"}, {"A": "nul\x00"}, {"A\n": "1"}])
def test_bad_environment_entries(orch, env):
    with pytest.raises(ConfigError):
        orch.execute_code(NONE, "print(1)", env=env)


def test_home_and_tmp_are_private(orch):
    res = orch.execute_code(
        NONE, "import os, tempfile; print(os.environ['HOME']); print(tempfile.gettempdir())"
    )
    home, tmp = res.stdout.split()
    assert home.startswith(orch.working_directory + "/run-")
    assert tmp == home + "/tmp"
    assert wait_until(lambda: not Path(home).exists())  # removed after the report


def test_keep_workdir(orch, workdir):
    target = workdir / "not-the-runs"
    target.write_text("")
    if os.geteuid() == 0:
        os.chown(target, 4242, 4242)
    res = orch.execute_code(
        NONE,
        f"import os\nopen('out.txt','w').write('kept')\nos.symlink({str(target)!r}, 'link')",
        keep_workdir=True,
    )
    assert res.workdir and Path(res.workdir, "out.txt").read_text() == "kept"
    if os.geteuid() == 0:
        # The run's uid is another run's next: what it kept is handed to root, and a
        # link it made is changed itself, never what it points at.
        owners = {p.lstat().st_uid for p in [Path(res.workdir), *Path(res.workdir).iterdir()]}
        assert owners == {0} and target.stat().st_uid == 4242
    shutil.rmtree(res.workdir)


def test_runs_unprivileged_when_root(orch):
    res = orch.execute_code(NONE, "import os; print(os.getuid(), os.getgid(), os.getgroups())")
    if os.geteuid() == 0:
        uid, gid, groups = res.stdout.split(maxsplit=2)
        assert uid == gid and leased(uid) and groups == "[]\n"
    else:
        assert res.stdout.split()[0] == str(os.getuid())


def test_no_network_when_policy_forbids(orch):
    need(os.geteuid() == 0, "an empty network namespace needs root")
    code = (
        "import socket\n"
        "s = socket.socket(); s.settimeout(2)\n"
        "try:\n    s.connect(('1.1.1.1', 53)); print('connected')\n"
        "except OSError as e:\n    print('blocked', e.errno)\n"
        "print(open('/proc/net/dev').read().count(':'))\n"
    )
    res = orch.execute_code(NONE, code)
    lines = res.stdout.split("\n")
    assert lines[0].startswith("blocked")
    assert lines[1] == "1"  # only the loopback device exists
    assert res.enforcement["network"] == "empty network namespace"


# ----------------------------------------------------------------------- limits
def test_memory_bomb_is_stopped(orch):
    res = orch.execute_code(
        NONE,
        "print('before', flush=True)\nx = bytearray(1024 * 1024 * 1024)\nprint('after')",
        limits=ResourceLimits(max_memory_mb=128),
    )
    assert res.killed_by == "memory" and not res.success
    assert res.stdout == "before\n"
    assert "memory" in res.limits_reached


def test_memory_bomb_without_cgroups_uses_rlimit(orch):
    orch.sandbox("none").use_cgroups = "never"
    res = orch.execute_code(
        NONE, "x = bytearray(1024 * 1024 * 1024)", limits=ResourceLimits(max_memory_mb=128)
    )
    assert res.killed_by == "memory"
    assert "MemoryError" in res.stderr
    assert res.enforcement["memory"].startswith("rlimit")


def test_cpu_spin_is_stopped(orch):
    res = orch.execute_code(
        NONE, "while True: pass", limits=ResourceLimits(max_cpu_seconds=1, timeout_seconds=60)
    )
    assert res.killed_by == "cpu" and not res.timed_out
    assert res.cpu_seconds >= 0.9


def test_cpu_limit_counts_the_whole_tree(orch, cgroups):
    # Four processes each under the per-process RLIMIT_CPU: only a tree-wide count stops them.
    code = "import os\nfor _ in range(3):\n    if os.fork() == 0: break\nwhile True: pass\n"
    res = orch.execute_code(
        NONE, code, limits=ResourceLimits(max_cpu_seconds=2, timeout_seconds=60)
    )
    assert res.killed_by == "cpu"


def test_timeout_keeps_partial_output(orch):
    code = "import time\nfor i in range(3): print('line', i, flush=True)\ntime.sleep(60)"
    res = orch.execute_code(NONE, code, limits=ResourceLimits(timeout_seconds=1))
    assert res.timed_out and res.killed_by == "timeout" and not res.success
    assert res.stdout == "line 0\nline 1\nline 2\n"
    assert res.exit_code == -1


ESCAPE = """
import os, sys, time
pidfile = sys.argv[0] + '.{tag}'
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.closerange(0, 3)
        with open('/proc/self/stat') as f: pass
        os.write(os.open('{dir}/escaped.{tag}', os.O_WRONLY | os.O_CREAT, 0o666),
                 str(os.getpid()).encode())
        time.sleep(120)
    os._exit(0)
os.wait()
time.sleep(0.5)
print('parent done', flush=True)
{tail}
"""


@pytest.mark.parametrize("ending", ["exit", "timeout"])
def test_setsid_double_fork_escape_is_killed(orch, ending, tmp_path):
    spool = Path("/tmp") / f"symbi-escape-{os.getpid()}-{ending}"
    spool.mkdir(mode=0o777)
    spool.chmod(0o777)
    try:
        tail = "time.sleep(60)" if ending == "timeout" else ""
        code = ESCAPE.format(tag=ending, dir=spool, tail=tail)
        res = orch.execute_code(
            NONE, code, limits=ResourceLimits(timeout_seconds=3), volumes=[host_dir(spool)]
        )
        pid = int((spool / f"escaped.{ending}").read_text())
        assert res.stdout == "parent done\n"
        assert res.timed_out is (ending == "timeout")
        assert not alive(pid), f"escaped grandchild {pid} survived the run"
    finally:
        for f in spool.iterdir():
            f.unlink()
        spool.rmdir()


def test_fork_bomb_is_contained(orch):
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    before = set(os.listdir("/proc"))
    res = orch.execute_code(NONE, code, limits=ResourceLimits(max_processes=32, timeout_seconds=3))
    assert res.killed_by in ("timeout", "processes")
    if os.geteuid() == 0 and res.enforcement["processes"].startswith("not enforced"):
        pytest.fail("a root run without a pids cgroup cannot contain a fork bomb")
    assert "processes" in res.limits_reached or res.enforcement["processes"].startswith("rlimit")
    time.sleep(0.2)
    new = set(os.listdir("/proc")) - before
    assert not [p for p in new if p.isdigit() and alive(int(p)) and ran_in(p, orch)]


def test_process_limit_stops_a_forking_script(orch, cgroups):
    code = (
        "import os, time\nfor i in range(64):\n    if os.fork() == 0:\n        time.sleep(5)\n"
        "        os._exit(0)\n"
    )
    res = orch.execute_code(NONE, code, limits=ResourceLimits(max_processes=8))
    assert res.killed_by == "processes"
    assert "BlockingIOError" in res.stderr


def test_output_flood_is_drained_and_capped(orch):
    code = (
        "import sys\nchunk = 'x' * 65536\nfor _ in range(800): sys.stdout.write(chunk)\n"
        "print('\\nend', file=sys.stderr)"
    )
    res = orch.execute_code(
        NONE, code, limits=ResourceLimits(max_output_bytes=1 * MiB, timeout_seconds=60)
    )
    assert res.success and not res.timed_out  # the writer was never blocked
    assert res.stdout_truncated and not res.stderr_truncated
    assert res.stdout_bytes == 800 * 65536
    assert res.stdout.startswith("x" * 1000)
    assert res.stdout.endswith("[output truncated at 1048576 bytes]\n")
    assert len(res.stdout) < 1 * MiB + 100
    assert "output" in res.limits_reached and res.killed_by is None
    assert res.stderr == "\nend\n"


def test_fifty_megabyte_flood(orch):
    res = orch.execute_code(
        NONE,
        "import os\nb = b'y' * (1 << 20)\nfor _ in range(50): os.write(1, b)\n",
        limits=ResourceLimits(timeout_seconds=120),
    )
    assert res.success and res.stdout_truncated
    assert res.stdout_bytes == 50 * MiB
    assert len(res.stdout.encode()) <= orch.max_output_bytes + 100


def test_output_limit_can_stop_the_run(orch):
    orch.sandbox("none").stop_on_output_limit = True
    res = orch.execute_code(
        NONE,
        "while True: print('z' * 1000)",
        limits=ResourceLimits(max_output_bytes=100_000, timeout_seconds=30),
    )
    assert res.killed_by == "output" and not res.timed_out


def test_streaming_callback_sees_output_live(orch):
    seen: list[tuple[str, bytes, float]] = []
    code = (
        "import time, sys\nprint('first', flush=True)\ntime.sleep(1)\nprint('second')\n"
        "print('err', file=sys.stderr)"
    )
    res = orch.execute_code(
        NONE, code, on_output=lambda s, b: seen.append((s, b, time.monotonic()))
    )
    assert b"".join(b for s, b, _ in seen if s == "stdout") == b"first\nsecond\n"
    assert b"".join(b for s, b, _ in seen if s == "stderr") == b"err\n"
    # Streamed: "first" arrived in a callback of its own, before "second" was written.
    assert seen[0][1].startswith(b"first") and b"second" not in seen[0][1]
    assert res.stdout == "first\nsecond\n"


def test_file_size_bomb(orch):
    code = "with open('big', 'wb') as f:\n    f.write(b'0' * (8 * 1024 * 1024))\n"
    res = orch.execute_code(NONE, code, limits=ResourceLimits(max_file_size_mb=1))
    assert res.killed_by == "file_size"
    assert "File too large" in res.stderr
    res = orch.execute_code(
        NONE,
        "echo start; head -c 4000000 /dev/zero > big",
        language="bash",
        limits=ResourceLimits(max_file_size_mb=1),
    )
    assert res.killed_by == "file_size" and res.stdout == "start\n"
    assert res.exit_code == 128 + signal.SIGXFSZ


def test_open_files_limit(orch):
    orch.max_open_files = 64
    res = orch.execute_code(NONE, "fs = [open('/dev/null') for _ in range(200)]")
    assert "Too many open files" in res.stderr and res.exit_code == 1


def test_cpu_cores_quota_is_applied(orch, cgroups):
    need(cgroups == 1, "reading the quota back is written for cgroup v1")
    code = (
        "for line in open('/proc/self/cgroup'):\n"
        "    _, ctrl, path = line.strip().split(':', 2)\n"
        "    if 'cpu' in ctrl.split(','):\n"
        "        print(open(f'/sys/fs/cgroup/{ctrl}{path}/cpu.cfs_quota_us').read().strip())\n"
    )
    res = orch.execute_code(NONE, code, limits=ResourceLimits(max_cpu_cores=0.5))
    assert res.stdout.split()[0] == "50000"
    assert res.enforcement["cpu_cores"].startswith("cgroup")


def test_cores_above_the_hosts_are_lowered_to_them_and_said(orch, cgroups):
    """The seed's max_cpu_cores = 4.0 on a smaller host: the quota is the host's cores,
    the result's limit too, and the enforcement says why."""
    need(cgroups == 1, "reading the quota back is written for cgroup v1")
    cores = host_cores()
    orch.max_cpu_cores = 2.0 * cores
    code = (
        "for line in open('/proc/self/cgroup'):\n"
        "    _, ctrl, path = line.strip().split(':', 2)\n"
        "    if 'cpu' in ctrl.split(','):\n"
        "        print(open(f'/sys/fs/cgroup/{ctrl}{path}/cpu.cfs_quota_us').read().strip())\n"
    )
    res = orch.execute_code(NONE, code)
    assert res.success, res.stderr
    assert res.stdout.split()[0] == str(cores * 100_000)
    assert res.limits.max_cpu_cores == cores
    assert res.enforcement["cpu_cores"] == (
        f"cgroup v1 (CPU quota); lowered from {2 * cores} to {cores} "
        f"core{'s' if cores > 1 else ''}: this host has {cores}"
    )


def test_limits_that_cannot_be_enforced_are_reported(orch):
    orch.sandbox("none").use_cgroups = "never"
    res = orch.execute_code(NONE, "print(1)", limits=ResourceLimits(max_cpu_cores=1))
    assert res.enforcement["cpu_cores"].startswith("not enforced")
    assert "not enforced" in str(res)


def test_enforce_resource_limits_off_is_reported(orch):
    orch.enforce_resource_limits = False
    res = orch.execute_code(NONE, "print(1)")
    assert res.enforcement["memory"].startswith("not enforced")
    assert res.enforcement["timeout"].startswith("supervisor")


# ----------------------------------------------------------------------- measurement
def test_peak_memory_from_cgroup(orch, cgroups):
    res = orch.execute_code(NONE, ALLOC_300)
    assert res.memory_method == "cgroup"
    assert 300 * MiB <= res.peak_memory_bytes <= 300 * MiB * 1.05 + 20 * MiB


def test_peak_memory_honest_under_a_large_parent(orch):
    """ru_maxrss of a child forked from a large process starts at the parent's size;
    runs are forked from the small supervisor, so a 1 GiB caller does not leak in."""
    ballast = bytearray(1024 * MiB)
    ballast[::4096] = b"1" * len(ballast[::4096])
    orch.sandbox("none").use_cgroups = "never"
    res = orch.execute_code(NONE, ALLOC_300)
    del ballast
    assert res.memory_method == "wait4"
    assert 300 * MiB <= res.peak_memory_bytes <= 300 * MiB * 1.05 + 20 * MiB


def test_cpu_times_cover_the_whole_tree(orch):
    code = (
        "import os, time\n"
        "def spin(t):\n"
        "    end = time.process_time() + t\n"
        "    while time.process_time() < end: pass\n"
        "if os.fork() == 0:\n    spin(0.5); os._exit(0)\n"
        "spin(0.5); os.wait()\n"
    )
    res = orch.execute_code(NONE, code)
    assert res.cpu_user_seconds + res.cpu_system_seconds >= 0.95


# ----------------------------------------------------------------------- concurrency, clean-up
def test_sixteen_concurrent_runs_leave_nothing(orch, workdir):
    code = "import os, time\nif os.fork() == 0:\n    time.sleep(30)\nprint(os.getpid())\n"
    with ThreadPoolExecutor(16) as pool:
        results = list(
            pool.map(
                lambda i: orch.execute_code(
                    NONE, code, env={"I": str(i)}, limits=ResourceLimits(timeout_seconds=30)
                ),
                range(16),
            )
        )
    assert all(r.success for r in results)
    pids = {int(r.stdout) for r in results}
    assert len(pids) == 16
    assert not [p for p in pids if alive(p)]
    # Only the spares' directories, made for the next runs, may remain.
    assert wait_until(
        lambda: not [p for p in os.listdir("/proc") if p.isdigit() and ran_in(p, orch)]
    )

    # What remains are the groups prepared by the idle spare monitors: owned by a
    # live monitor, holding at most its waiting workload process.
    def only_the_spare() -> bool:
        names = {Path(d).name for d in run_cgroup_dirs()}
        if len(names) > orch.sandbox(NONE).spare_runs:
            return False
        for d in run_cgroup_dirs():
            monitor = int(Path(d).name.split("-")[2])
            procs = (Path(d) / "cgroup.procs").read_text().split()
            if not alive(monitor) or any(ppid(int(p)) != monitor for p in procs):
                return False
        return True

    assert wait_until(only_the_spare)
    assert verify(orch.audit_log_path).records == 16
    orch.close()
    assert wait_until(lambda: not run_cgroup_dirs())


def test_interrupt_kills_the_tree_and_raises(orch):
    need(threading.current_thread() is threading.main_thread(), "SIGINT goes to the main thread")
    spool = Path("/tmp") / f"symbi-int-{os.getpid()}"
    spool.mkdir(mode=0o777)
    spool.chmod(0o777)
    code = (
        f"import os, time\nopen('{spool}/pid', 'w').write(str(os.getpid()))\n"
        "print('running', flush=True)\ntime.sleep(60)\n"
    )
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt) as err:
            orch.execute_code(
                NONE, code, limits=ResourceLimits(timeout_seconds=30), volumes=[host_dir(spool)]
            )
        partial = err.value.args[0]
        assert partial.stdout == "running\n"
        assert not alive(int((spool / "pid").read_text()))
        assert '"outcome":"interrupted"' in Path(orch.audit_log_path).read_text()
    finally:
        timer.cancel()
        for f in spool.iterdir():
            f.unlink()
        spool.rmdir()


def test_an_interrupt_while_output_is_relayed_still_stops_the_run(orch):
    """SIGINT lands wherever the host is, here in the output callback (the symbi
    kernel's relay): the run is still stopped and its partial result kept."""
    need(threading.current_thread() is threading.main_thread(), "SIGINT goes to the main thread")
    code = "import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(60)\n"
    pids = []
    handler = signal.getsignal(signal.SIGINT)

    def relay(stream: str, chunk: bytes) -> None:
        if stream == "stdout" and not pids:
            pids.append(int(chunk))
            os.kill(os.getpid(), signal.SIGINT)  # handled before this function returns

    with pytest.raises(KeyboardInterrupt) as err:
        orch.execute_code(NONE, code, limits=ResourceLimits(timeout_seconds=30), on_output=relay)
    partial = err.value.args[0]
    assert partial.stdout.strip() == str(pids[0])
    assert partial.killed_by == "signal"
    assert wait_until(lambda: not alive(pids[0]), 10)
    assert signal.getsignal(signal.SIGINT) is handler  # the host's own, back


@pytest.mark.parametrize("handler", ["ignore", "own"])
def test_a_host_with_its_own_sigint_handling_keeps_it(orch, handler):
    """Only Python's default handler (which raises KeyboardInterrupt anywhere) is
    taken over for a run: ipykernel ignores SIGINT between requests, an application
    may handle it its own way."""
    need(threading.current_thread() is threading.main_thread(), "SIGINT goes to the main thread")
    calls = []
    chosen = signal.SIG_IGN if handler == "ignore" else (lambda signum, frame: calls.append(1))
    previous = signal.signal(signal.SIGINT, chosen)
    try:
        result = orch.execute_code(
            NONE,
            "print('a', flush=True)\nimport time; time.sleep(0.3)",
            on_output=lambda s, c: os.kill(os.getpid(), signal.SIGINT),
        )
        assert result.success and result.stdout == "a\n"
        assert signal.getsignal(signal.SIGINT) is chosen
        assert calls == ([] if handler == "ignore" else [1])
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_limit_the_host_cannot_set_is_said_in_the_result(orch, capfd):
    """Even root cannot raise RLIMIT_NOFILE past fs.nr_open: the run fails to start and
    its result says why (before, the words went to the supervisor's stderr, that is
    the kernel's log). The second run finds a started interpreter the host refuses
    the limit too, and takes a fresh one, which fails the same way."""
    need(os.geteuid() == 0, "an unprivileged host lowers such a limit (tested apart)")
    too_many = int(Path("/proc/sys/fs/nr_open").read_text()) * 2
    orch.max_open_files = too_many
    for _ in range(2):
        result = orch.execute_code(NONE, "print(1)", limits=ResourceLimits(max_open_files=too_many))
        assert result.exit_code == 127 and not result.success and result.stdout == ""
        assert "cannot start" in result.stderr
        assert f"RLIMIT_NOFILE = {too_many}" in result.stderr
        assert result.startup_seconds != 0.0
    assert "cannot start" not in capfd.readouterr().err


def test_an_unprivileged_host_lowers_a_limit_above_its_hard_limit():
    """Without root the hard limits are the host's: a limit above one is lowered to it
    (stricter than asked, never weaker) and the result says so, instead of every run
    failing to start (the default ceiling of 1024 open files, say)."""
    need(
        os.geteuid() == 0 and shutil.which("setpriv") is not None,
        "needs root (to drop to nobody) and setpriv",
    )
    home = Path("/tmp") / f"symbi-nobody-{os.getpid()}"
    home.mkdir(mode=0o777)
    home.chmod(0o777)
    script = (
        "import json, sys\n"
        "from symbi_jupyter.orchestrator import SandboxOrchestrator\n"
        "from symbi_jupyter import ResourceLimits\n"
        "o = SandboxOrchestrator(allow_native_execution=True, working_directory=sys.argv[1],"
        " audit_log_path=sys.argv[1] + '/audit.log')\n"
        "code = 'import resource; print(resource.getrlimit(resource.RLIMIT_NOFILE))'\n"
        "out = {}\n"
        "for n in (128, 1024):\n"
        "    r = o.execute_code('none', code, limits=ResourceLimits(max_open_files=n))\n"
        "    out[n] = [r.stdout, r.exit_code, r.enforcement.get('open_files')]\n"
        "r = o.execute_code('none', 'import resource; print(resource.getrlimit(0))',"
        " limits=ResourceLimits(max_cpu_seconds=120))\n"
        "out['cpu'] = [r.stdout, r.exit_code, r.enforcement.get('cpu')]\n"
        "o.close()\n"
        "print(json.dumps(out))\n"
    )
    try:
        proc = as_nobody(
            script,
            str(home / "w"),
            prefix=["prlimit", "--nofile=256:256", "--cpu=60:60"],
            cwd="/",
            env={"PATH": os.environ["PATH"], "HOME": str(home)},
        )
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout.splitlines()[-1])
        assert out["128"][:2] == ["(128, 128)\n", 0]
        assert out["128"][2] == "rlimit (RLIMIT_NOFILE)"
        assert out["1024"][:2] == ["(256, 256)\n", 0]
        assert "lowered to 256" in out["1024"][2]
        # The monitor says how CPU time is kept; what the host lowered is said too.
        assert out["cpu"][:2] == ["(60, 60)\n", 0]
        assert "RLIMIT_CPU" in out["cpu"][2] and "lowered to 60" in out["cpu"][2]
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_supervisor_exits_with_its_orchestrator(workdir, audit_path):
    orch = SandboxOrchestrator(
        allow_native_execution=True, working_directory=str(workdir), audit_log_path=str(audit_path)
    )
    orch.execute_code(NONE, "print(1)")
    proc = orch.sandbox("none")._proc
    assert proc.poll() is None
    orch.close()
    assert proc.wait(timeout=5) == 0


def test_every_execution_is_audited(orch, audit_path):
    orch.execute_code(NONE, "print(1)")
    orch.execute_code(NONE, "while True: pass", limits=ResourceLimits(timeout_seconds=0.5))
    with pytest.raises(PolicyViolation):
        orch.execute_code(NONE, "print(1)", limits=ResourceLimits(max_memory_mb=99999))
    report = verify(audit_path)
    assert report.ok and report.records == 3
    text = audit_path.read_text()
    assert '"outcome":"success"' in text and '"killed_by":"timeout"' in text
    assert '"outcome":"refused"' in text and "max_memory_mb" in text


HOST = """
import sys
from symbi_jupyter.orchestrator import SandboxOrchestrator
from symbi_jupyter import ResourceLimits
orch = SandboxOrchestrator(allow_native_execution=True, working_directory=sys.argv[1],
                           audit_log_path=sys.argv[2])
code = ("import os, time\\nif os.fork() == 0:\\n    os.setsid()\\n"
        "open(%r, 'a').write(str(os.getpid()) + ' ')\\ntime.sleep(120)\\n"
        % (sys.argv[3] + "/pids"))
orch.execute_code("none", code, limits=ResourceLimits(timeout_seconds=100),
                  volumes=[sys.argv[3] + ":" + sys.argv[3] + ":rw"])
"""


def test_kill_9_of_the_host_leaves_nothing(workdir, audit_path, tmp_path):
    """The monitor notices its host is gone (the status pipe breaks), kills the run's
    tree and removes its cgroups; the next host removes the orphaned run directory."""
    spool = Path("/tmp") / f"symbi-k9-{os.getpid()}"
    spool.mkdir()
    spool.chmod(0o777)
    pidfile = spool / "pids"
    pidfile.touch(mode=0o666)
    pidfile.chmod(0o666)
    try:
        host = subprocess.Popen(
            [sys.executable, "-c", HOST, str(workdir), str(audit_path), str(spool)]
        )
        deadline = time.monotonic() + 60
        while len(pidfile.read_text().split()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = [int(p) for p in pidfile.read_text().split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
        tag = f"{os.stat('/proc/self/ns/pid').st_ino}-{host.pid}"
        host.kill()
        host.wait()
        assert wait_until(lambda: not any(alive(p) for p in pids))
        assert wait_until(
            lambda: not list(Path("/sys/fs/cgroup").glob(f"*/**/symbi-jupyter/{tag}-*"))
        )
        assert wait_until(lambda: not list(workdir.glob(f"run-{tag}-*")))
    finally:
        shutil.rmtree(spool)


def test_next_host_removes_run_directories_of_dead_hosts(workdir, audit_path):
    """Where a monitor died too (nothing left to clean up), the next host of the same
    pid namespace removes the run directory; it leaves live hosts' directories alone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    namespace = os.stat("/proc/self/ns/pid").st_ino
    orphan = workdir / f"run-{namespace}-{dead.pid}-abcdefgh"
    live = workdir / f"run-{namespace}-1-abcdefgh"  # pid 1 is alive
    other_ns = workdir / f"run-1-{dead.pid}-abcdefgh"  # another namespace: not ours
    for d in (orphan, live, other_ns):
        (d / "tmp").mkdir(parents=True)
    try:
        orch = SandboxOrchestrator(
            allow_native_execution=True,
            working_directory=str(workdir),
            audit_log_path=str(audit_path),
        )
        orch.execute_code(NONE, "print(1)")
        orch.close()
        assert not orphan.exists() and live.exists() and other_ns.exists()
    finally:
        for d in (orphan, live, other_ns):
            shutil.rmtree(d, ignore_errors=True)


def test_a_run_directory_that_cannot_be_written_is_a_clear_error(orch):
    """A full filesystem under the working directory (a 64 KiB tmpfs: a real fault,
    where the host can mount one) stops the run before it starts, says why, and
    leaves nothing; the next run that fits goes ahead."""
    need(os.geteuid() == 0, "mounting a small tmpfs needs root")
    small = Path("/tmp") / f"symbi-full-{os.getpid()}"
    small.mkdir()
    try:
        mounted = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0711", "tmpfs", str(small)]
            ).returncode
            == 0
        )
        need(mounted, "this host does not let us mount a tmpfs")
        # Without private mounts the run directory is on the host's filesystem.
        orch.sandbox(NONE).private_mounts = False
        orch.sandbox(NONE).close()  # read when its supervisor starts
        orch.working_directory = str(small)
        with pytest.raises(
            TierUnavailable,
            match=r"cannot prepare the run directory: "
            r".*No space left",
        ):
            orch.execute_code(NONE, "x = 1  # " + "y" * 300_000)
        assert orch.execute_code(NONE, "print('fits')").stdout == "fits\n"
        orch.close()
        assert not list(small.iterdir())
    finally:
        orch.close()
        subprocess.run(["umount", str(small)])
        small.rmdir()


def test_code_larger_than_the_disk_limit_is_a_clear_error(orch):
    """Where a run's directory is on its own tmpfs, that tmpfs is as large as the
    disk limit: code that does not fit stops the run before it starts and says why;
    the next run goes ahead."""
    need(os.geteuid() == 0, "a run's own tmpfs needs root")
    with pytest.raises(TierUnavailable, match=r"cannot prepare the run directory: .*No space"):
        orch.execute_code(NONE, "x = 1  # " + "y" * 300_000, limits=ResourceLimits(max_disk_mb=0.2))
    assert orch.execute_code(NONE, "print('fits')").stdout == "fits\n"


def test_a_run_without_a_disk_limit_gets_no_hidden_one(orch):
    """A spare's tmpfs has a size until its request comes; a request with no disk
    limit (the sandbox used directly: the orchestrator always fills one in) must not
    run into that size."""
    need(os.geteuid() == 0, "a run's own tmpfs needs root")
    from symbi_jupyter.sandboxes.base import ExecutionRequest

    code = b"open('/tmp/big', 'wb').write(b'x' * (80 << 20)); print('written')"
    request = ExecutionRequest(
        tier=NONE,
        code=code,
        language="python3",
        limits=ResourceLimits(timeout_seconds=60, max_file_size_mb=100),
        policy=orch._run_policy(NONE, "python3", None),
    )
    res = orch.sandbox(NONE).run(request)
    assert res.stdout == "written\n", res.stderr
    assert res.enforcement["disk"] == "not enforced: no disk limit was asked for"


def test_a_volume_may_not_cover_what_the_run_has_of_its_own(orch, workdir):
    """The run's own directory is bound in the working directory, its private /var/tmp
    and /dev/shm over the host's; a volume over one of them (or a directory above
    it) would hide it."""
    for cover in (workdir, workdir.parent):
        with pytest.raises(ConfigError, match="would cover the working directory"):
            orch.execute_code(NONE, "pass", volumes=[f"{cover}:{cover}:rw"])
    # Nor what the run has of its own: a bind over /var shows the host's /var/tmp.
    for cover in ("/var", "/var/tmp", "/dev", "/dev/shm"):
        with pytest.raises(ConfigError, match="would cover the run's private"):
            orch.execute_code(NONE, "pass", volumes=[f"{cover}:{cover}:rw"])


def test_working_directory_of_another_user_or_world_writable(orch, tmp_path):
    shared = Path("/tmp") / f"symbi-shared-{os.getpid()}"
    shared.mkdir()
    try:
        shared.chmod(0o777)
        orch.working_directory = str(shared)
        with pytest.raises(PolicyViolation, match="writable by other users"):
            orch.execute_code(NONE, "print(1)")
        shared.chmod(0o1777)  # sticky, like /tmp: others cannot touch our entries
        assert orch.execute_code(NONE, "print(1)").success
        if os.geteuid() == 0:
            shared.chmod(0o755)
            os.chown(shared, 65534, 65534)
            with pytest.raises(PolicyViolation, match="belongs to another user"):
                orch.execute_code(NONE, "print(1)")
    finally:
        orch.close()  # releases the spare's run directory made there
        shared.rmdir()


def test_a_killed_supervisor_is_replaced_and_its_spare_released(orch):
    """A real fault: the supervisor is SIGKILLed between runs. The next run starts a
    new one; the old spare monitor sees EOF, removes what it prepared and exits."""
    assert orch.execute_code(NONE, "print(1)").success
    sandbox = orch.sandbox("none")
    old = sandbox._proc
    spares = [p for p in (Path(f"/proc/{old.pid}/task/{old.pid}/children").read_text().split())]
    assert spares
    old.kill()
    old.wait()
    assert orch.execute_code(NONE, "print(2)").stdout == "2\n"
    assert sandbox._proc.pid != old.pid
    assert wait_until(lambda: not any(alive(int(p)) for p in spares))


def test_print_flood_loses_nothing_and_streams(orch):
    code = "b = 'y' * (1 << 20)\nfor _ in range(30): print(b, end='')\nprint()"
    res = orch.execute_code(NONE, code, limits=ResourceLimits(max_output_bytes=1 << 20))
    assert res.success and res.stdout_bytes == 30 * (1 << 20) + 1
    chunks: list[bytes] = []
    res = orch.execute_code(
        NONE,
        "import time\nprint('first')\ntime.sleep(1)\nprint('second')",
        on_output=lambda s, b: chunks.append(b),
    )
    assert chunks[0] == b"first\n" and res.stdout == "first\nsecond\n"


def test_line_buffering_keeps_the_shadowed_sitecustomize(orch, tmp_path):
    """Our sitecustomize runs the one it shadows (a conda or Debian one, say)."""
    own = Path("/tmp") / f"symbi-site-{os.getpid()}"
    own.mkdir(mode=0o755)
    (own / "sitecustomize.py").write_text("import builtins\nbuiltins.SHADOWED_RAN = True\n")
    (own / "sitecustomize.py").chmod(0o644)
    try:
        res = orch.execute_code(
            NONE,
            "import sys, builtins\nprint(sys.stdout.line_buffering, "
            "getattr(builtins, 'SHADOWED_RAN', False))",
            env={"PYTHONPATH": str(own)},
        )
        assert res.stdout == "True True\n", res.stderr
    finally:
        shutil.rmtree(own)


def test_sigterm_to_a_waiting_spare_removes_what_it_prepared(orch, cgroups):
    """A kernel's shutdown may SIGTERM its whole process tree (ipykernel does): the
    spare monitor then removes its cgroups instead of leaving them behind."""
    assert orch.execute_code(NONE, "print(1)").success
    supervisor = orch.sandbox("none")._proc.pid
    assert wait_until(lambda: len(run_cgroup_dirs()) > 0)
    spares = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    assert spares
    for pid in spares:
        # The last run's monitor may be just finishing its clean-up and exit first.
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGTERM)
    assert wait_until(lambda: not any(alive(int(p)) for p in spares))
    assert wait_until(lambda: not [d for d in run_cgroup_dirs() if d.rsplit("-", 1)[1] in spares])


def test_network_is_opt_in_even_where_allowed(orch):
    orch.allow_network = True
    assert orch.execute_code(NONE, "print(1)").limits.network is False
    res = orch.execute_code(NONE, "print(1)", limits=ResourceLimits(network=True))
    assert res.limits.network is True and "network" not in res.enforcement


def test_a_second_user_gets_a_working_directory_of_their_own():
    """The shared default working directory belongs to whoever made it first (root,
    say, in .ci/run or the README's setup); another user's runs must not be refused
    there, as the README's tour would then be."""
    need(
        os.geteuid() == 0 and shutil.which("setpriv") is not None,
        "needs root (to make the shared directory and drop to nobody) and setpriv",
    )
    os.makedirs("/tmp/symbiont-native", mode=0o711, exist_ok=True)  # root's, as after a run
    home = Path("/tmp") / f"symbi-second-user-{os.getpid()}"
    home.mkdir(mode=0o777)
    home.chmod(0o777)
    script = (
        "from symbi_jupyter.orchestrator import SandboxOrchestrator\n"
        "o = SandboxOrchestrator(allow_native_execution=True, audit_log_path='')\n"
        "r = o.execute_code('none', 'print(42)')\n"
        "o.close()\n"
        "print(o.working_directory, r.stdout.strip())\n"
    )
    try:
        proc = as_nobody(script, env={**os.environ, "HOME": str(home), "XDG_CACHE_HOME": ""})
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == [str(home / ".cache/symbi-jupyter/native"), "42"]
    finally:
        shutil.rmtree(home, ignore_errors=True)

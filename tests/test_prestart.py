"""Tier None's pre-started interpreter (``NativeSandbox.prestart_interpreter``): a run
it serves must see and report what a fresh ``python3 cell.py`` would, and a run must
not be able to reach the interpreter waiting for the next one."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from pathlib import Path

import pytest

from symbi_jupyter import ResourceLimits, SecurityTier

from .helpers import is_prestarted, leased, need, wait_until

NONE = SecurityTier.NONE

# Everything a cell can ask about the process it runs in.
PROBE = r"""
import json, os, resource, signal, sys
status = dict(line.split(':', 1) for line in open('/proc/self/status'))
print(json.dumps({
    'argv': sys.argv, 'orig_argv': sys.orig_argv, 'path': sys.path, 'file': __file__,
    'globals': sorted(globals()), 'modules': sorted(sys.modules), 'flags': list(sys.flags),
    'ids': [os.getuid(), os.geteuid(), os.getgid(), os.getegid(), os.getgroups()],
    'cwd': os.getcwd(), 'env': dict(os.environ), 'umask': os.umask(0o22),
    'stdout': [sys.stdout.line_buffering, sys.stdout.isatty(), sys.stdout.encoding],
    'stdin': sys.stdin.read(), 'fds': sorted(os.listdir('/proc/self/fd')),
    'rlimits': {n: resource.getrlimit(getattr(resource, n))
                for n in dir(resource) if n.startswith('RLIMIT_')},
    'signals': {s.name: str(signal.getsignal(s)) for s in signal.Signals
                if s not in (signal.SIGKILL, signal.SIGSTOP)},
    'no_new_privs': status['NoNewPrivs'].strip(), 'caps': status['CapEff'].strip(),
    'session_leader': os.getsid(0) == os.getpid(), 'net': os.listdir('/sys/class/net'),
    'main': [__name__, __doc__, repr(__spec__), type(__loader__).__name__, __package__],
}))
"""

# Endings a cell can come to, each to be reported exactly as a fresh interpreter would.
ENDINGS = {
    "exception": "raise ValueError('x')",
    "chained": "def f():\n    raise KeyError(1)\ntry:\n    f()\n"
    "except KeyError as e:\n    raise RuntimeError('y') from e",
    "exit-message": "import sys\nsys.exit('bye')",
    "exit-code": "import sys\nprint('before')\nsys.exit(3)",
    "keyboard-interrupt": "raise KeyboardInterrupt",
    "own-excepthook": "import sys, traceback\n"
    "sys.excepthook = lambda t, v, tb: print('hooked', t.__name__,\n"
    "    [f.name for f in traceback.extract_tb(tb)])\n"
    "def g():\n    1/0\ng()",
    "threads-then-atexit": "import atexit, threading, time\natexit.register(print, 'atexit')\n"
    "threading.Thread(target=lambda: (time.sleep(0.2), "
    "print('thread'))).start()\nprint('main')",
    "syntax-error": "x = (",
    "compile-warnings": "x = 1\nprint(x is 1, '\\d')",
    "nul-byte": b"print(1)\x00",
    "not-utf8": b"print('\xff')",
    "latin-1-cookie": "# -*- coding: latin-1 -*-\nprint('\xe9')".encode("latin-1"),
    "docstring": "'''The doc.'''\nprint(__doc__)",
    "warning": "import warnings\nwarnings.warn('careful')",
    "killed": "import os\nprint('x', flush=True)\nos.kill(os.getpid(), 9)",
}


@pytest.fixture
def native(orch):
    return orch.sandbox(NONE)


def warm(orch, code, **kwargs):
    """Run ``code`` on the pre-started interpreter (a first run teaches the spare)."""
    orch.sandbox(NONE).prestart_interpreter = True
    orch.execute_code(NONE, "pass")
    result = orch.execute_code(NONE, code, **kwargs)
    assert result.startup_seconds == 0.0, "not served by the pre-started interpreter"
    return result


def cold(orch, code, **kwargs):
    orch.sandbox(NONE).prestart_interpreter = False
    result = orch.execute_code(NONE, code, **kwargs)
    assert result.startup_seconds is None
    return result


def same_run(text: str) -> str:
    """Run directories and cgroups differ by name from run to run."""
    return re.sub(r"run-[0-9]+-[0-9]+-\w+", "RUN", re.sub(r"/[0-9]+-[0-9]+-[0-9]+", "/CG", text))


def test_the_process_is_what_a_fresh_interpreter_gives(orch):
    seen = [json.loads(same_run(run(orch, PROBE).stdout)) for run in (warm, cold)]
    for ids in (seen[0].pop("ids"), seen[1].pop("ids")):
        # Each run's own uid (as root) differs from run to run; its shape does not.
        uid, euid, gid, egid, groups = ids
        # As root no supplementary groups; otherwise the host user's own, unchanged.
        expected_groups = [] if os.geteuid() == 0 else sorted(os.getgroups())
        assert uid == euid and gid == egid and sorted(groups) == expected_groups
        assert uid == gid and leased(uid) if os.geteuid() == 0 else uid == os.getuid()
    assert seen[0] == seen[1]
    assert seen[0]["argv"] == [seen[0]["file"]] and seen[0]["stdin"] == ""


@pytest.mark.parametrize("ending", ENDINGS)
def test_every_ending_is_reported_as_a_fresh_interpreter_reports_it(orch, ending):
    code = ENDINGS[ending]
    fast, fresh = warm(orch, code), cold(orch, code)

    def outcome(result):
        return (
            result.stdout,
            same_run(result.stderr),
            result.exit_code,
            result.term_signal,
            result.killed_by,
        )

    assert outcome(fast) == outcome(fresh)
    if ending == "keyboard-interrupt":
        assert fast.term_signal == 2  # Python's own death by SIGINT, after its shutdown
    if ending == "own-excepthook":
        assert fast.stdout == "hooked ZeroDivisionError ['<module>', 'g']\n"
    if ending == "threads-then-atexit":
        assert fast.stdout == "main\nthread\natexit\n"


def test_the_first_run_is_served_by_a_started_interpreter(orch):
    """The supervisor that the first run starts prepares its first spares for runs
    like that one."""
    assert orch.execute_code(NONE, "print(1)").startup_seconds == 0.0


def test_a_small_memory_limit_meets_a_fresh_interpreter(orch, cgroups):
    """A limit below what the started interpreter already holds cannot be set on its
    group: the run gets a fresh interpreter, which meets the limit as usual."""
    orch.execute_code(NONE, "pass")
    result = orch.execute_code(NONE, "print(1)", limits=ResourceLimits(max_memory_mb=2))
    assert result.killed_by == "memory" and result.startup_seconds is None
    assert result.enforcement["memory"].startswith("cgroup")
    # and usual runs are served by started interpreters again (the supervisor, started
    # by the cgroups fixture before any run, may hold one spare made for no profile)
    assert any(
        orch.execute_code(NONE, "print(2)").startup_seconds == 0.0
        for _ in range(orch.sandbox(NONE).spare_runs + 1)
    )


def test_runs_unlike_the_usual_one_start_fresh(orch):
    orch.execute_code(NONE, "pass")
    env = orch.execute_code(NONE, "import os; print(os.environ['X'])", env={"X": "1"})
    shell = orch.execute_code(NONE, "echo $0", language="bash")
    limited = orch.execute_code(NONE, "pass", limits=ResourceLimits(max_processes=20))
    assert (env.stdout, env.startup_seconds) == ("1\n", None)
    assert shell.success and shell.startup_seconds is None
    assert limited.startup_seconds == 0.0  # limits are set when the run comes
    # they did not change what the spares start for
    assert orch.execute_code(NONE, "print(2)").startup_seconds == 0.0


def spares_settled(workdir: Path, orch) -> bool:
    """Whether each spare has its interpreter waiting in its directory, and (where run
    directories are the host's, not on each run's own tmpfs) the working directory
    holds just those (no run's directory left, no spare still being made)."""
    spares = {os.path.dirname(script) for _, script in spare_interpreters(str(workdir))}
    on_host = {str(d) for d in workdir.glob("run-*")}
    return len(spares) == orch.sandbox(NONE).spare_runs and on_host <= spares


def spare_interpreters(workdir: str) -> list[tuple[int, str]]:
    """Processes running a script in ``workdir`` that is the bootstrap."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            script = args[1].decode() if len(args) > 1 else ""
            if script.startswith(workdir) and is_prestarted(script, pid):
                found.append((int(pid), script))
        except (OSError, UnicodeDecodeError):
            continue
    return found


def runs_until_served(orch, code: str) -> list:
    """Run ``code`` until a started interpreter serves it. Each spare made for what no
    longer holds (another directory, one removed) serves one run with a fresh
    interpreter instead; which run gets which spare is up to timing."""
    results = []
    while len(results) < orch.sandbox(NONE).spare_runs + 2 and (
        not results or results[-1].startup_seconds != 0.0
    ):
        results.append(orch.execute_code(NONE, code))
    return results


def test_a_run_cannot_reach_the_interpreter_waiting_for_the_next(orch, workdir):
    need(os.geteuid() == 0, "runs and the spare run as one user unless the host is root")
    orch.execute_code(NONE, "pass")
    # The spare for the next run starts while this one runs. Runs cannot see it in
    # /proc (hidepid), so the test (root) names it to the cell through a file.
    # (in a directory of its own, given to the run: made during the run, a file in
    # /tmp would not be seen past its private /tmp).
    spool = workdir.parent / f"{workdir.name}-feed"
    spool.mkdir(mode=0o755)
    feed = spool / "spare"
    attempt = f"""
import errno, os, time
print('started', flush=True)
deadline = time.monotonic() + 30
while not os.path.exists({str(feed)!r}) and time.monotonic() < deadline:
    time.sleep(0.01)
pid, script = open({str(feed)!r}).read().split()
pid = int(pid)
for what, act in [
    ('signal', lambda: os.kill(pid, 0)),
    ('plant', lambda: open(os.path.join(os.path.dirname(script), 'json.py'), 'w')),
    ('read', lambda: open(script).read()),
    ('trace', lambda: open(f'/proc/{{pid}}/mem', 'rb')),
]:
    try:
        act()
        print(what, 'done')
    except OSError as exc:
        # Denied, or hidden from this run altogether.
        print(what, 'denied' if exc.errno in (errno.EPERM, errno.EACCES, errno.ENOENT)
              else exc)
"""
    result: dict[str, object] = {}
    said: list[bytes] = []
    attacker = threading.Thread(
        target=lambda: result.update(
            res=orch.execute_code(
                NONE,
                attempt,
                on_output=lambda stream, data: said.append(data),
                volumes=[f"{spool}:{spool}:ro"],
            )
        )
    )
    attacker.start()
    # Only once the cell runs is its own interpreter no longer a waiting one.
    assert wait_until(lambda: b"started" in b"".join(said))
    assert wait_until(lambda: spare_interpreters(str(workdir)))
    pid, script = spare_interpreters(str(workdir))[0]
    tmp = feed.with_suffix(".tmp")
    tmp.write_text(f"{pid} {script}")
    tmp.chmod(0o644)
    tmp.replace(feed)
    attacker.join()
    res = result["res"]
    assert res.stdout.split("\n")[1:-1] == [
        "signal denied",
        "plant denied",
        "read denied",
        "trace denied",
    ], res.stderr
    assert res.startup_seconds == 0.0
    shutil.rmtree(spool)


def test_the_spare_and_its_directory_go_with_the_orchestrator(orch, workdir):
    orch.execute_code(NONE, "pass")
    assert wait_until(lambda: spare_interpreters(str(workdir)))
    orch.close()
    assert wait_until(lambda: not spare_interpreters(str(workdir)), 10)
    # Each monitor removes its directory just after its interpreter is gone.
    assert wait_until(
        lambda: not [p.name for p in workdir.iterdir() if p.name.startswith("run-")], 10
    )


def test_switched_off_no_interpreter_waits(orch, native, workdir):
    native.prestart_interpreter = False
    for _ in range(3):
        assert orch.execute_code(NONE, "pass").startup_seconds is None
    assert not spare_interpreters(str(workdir))


def test_a_new_working_directory_is_followed_and_the_old_one_left_clean(orch):
    old = Path(orch.working_directory)
    orch.execute_code(NONE, "pass")
    assert wait_until(lambda: spares_settled(old, orch))
    new = Path("/tmp") / f"{old.name}-moved"
    new.mkdir(mode=0o711)
    try:
        orch.working_directory = str(new)
        results = runs_until_served(orch, "import os; print(os.getcwd())")
        assert all(r.stdout.startswith(str(new)) for r in results)
        assert results[-1].startup_seconds == 0.0  # spares now start in the new one
        assert wait_until(lambda: not list(old.glob("run-*")), 10)
    finally:
        orch.close()
        shutil.rmtree(new, ignore_errors=True)


def test_a_removed_working_directory_costs_no_failed_run(orch, workdir):
    """The spares' directories (and so their interpreters' working directories) go
    with it; the next runs start fresh ones instead of failing."""
    orch.execute_code(NONE, "pass")
    assert wait_until(lambda: spares_settled(workdir, orch))
    shutil.rmtree(workdir)
    workdir.mkdir(mode=0o711)
    results = runs_until_served(orch, "print('ok')")
    assert [r.stdout for r in results] == ["ok\n"] * len(results)
    assert results[-1].startup_seconds == 0.0

"""Shared fixtures: real orchestrators in an isolated configuration. Fixtures only;
the plain helper functions are in tests/helpers.py."""

from __future__ import annotations

import os
import shutil
import signal
import time
import uuid
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell

from symbi_jupyter.orchestrator import SandboxOrchestrator, forget_default_orchestrator
from symbi_jupyter.render import ResultDisplay

from .helpers import need

# The tests press the stop button as a terminal does, with SIGINT to this process. A
# shell starts a background job (`bash scripts/test.sh &`) with SIGINT ignored, and
# Python then installs no handler of its own: those presses would be lost, and the
# tests would see runs that were never stopped.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def isolated_config(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """No host configuration leaks into a test: no SYMBIONT_* variables, no Jupyter
    config files, no stable-rendering override."""
    for key in list(os.environ):
        if key.startswith("SYMBIONT_"):
            monkeypatch.delenv(key)
    monkeypatch.delenv("SYMBI_JUPYTER_STABLE_OUTPUT", raising=False)
    empty = tmp_path_factory.mktemp("jupyter-config")
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(empty))
    monkeypatch.setenv("JUPYTER_CONFIG_PATH", "")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
    yield
    # Made in this configuration: the next test's may differ.
    forget_default_orchestrator()
    # A test that set the shared display's traits (stable, show_limits) sets them
    # for itself only.
    ResultDisplay.clear_instance()


@pytest.fixture
def workdir():
    """A native working directory the unprivileged run user can traverse
    (pytest's tmp_path is 0700 under root)."""
    path = Path("/tmp") / f"symbi-test-{uuid.uuid4().hex[:10]}"
    path.mkdir(mode=0o711)
    yield path
    # The monitor removes a run directory just after it reports; give it a moment.
    deadline = time.monotonic() + 10
    while any(p.name.startswith("run-") for p in path.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.01)
    leftovers = [p.name for p in path.iterdir()]
    shutil.rmtree(path, ignore_errors=True)
    assert not [n for n in leftovers if n.startswith("run-")], f"run dirs left: {leftovers}"


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


@pytest.fixture
def orch(workdir: Path, audit_path: Path):
    o = SandboxOrchestrator(
        allow_native_execution=True,
        working_directory=str(workdir),
        audit_log_path=str(audit_path),
    )
    yield o
    o.close()


@pytest.fixture
def cgroups(orch: SandboxOrchestrator) -> int:
    version = orch.sandbox("none").cgroup_version()
    need(version is not None, "no writable cgroup hierarchy (run as root, or delegate cgroup v2)")
    return version


@pytest.fixture
def ip(workdir: Path, audit_path: Path):
    """A real InteractiveShell with the extension loaded, in this test's directories;
    everything the extension configured is removed again afterwards."""
    shell = InteractiveShell.instance()
    ResultDisplay.clear_instance()
    shell.run_line_magic("load_ext", "symbi_jupyter")
    shell.run_line_magic("config", f"SandboxOrchestrator.working_directory = '{workdir}'")
    shell.run_line_magic("config", f"SandboxOrchestrator.audit_log_path = '{audit_path}'")
    yield shell
    shell.run_line_magic("unload_ext", "symbi_jupyter")
    shell.configurables[:] = [
        c for c in shell.configurables if type(c).__module__.split(".")[0] != "symbi_jupyter"
    ]
    for section in (
        "SandboxOrchestrator",
        "NativeSandbox",
        "ResultDisplay",
        "SymbiMagics",
        "AgentMagics",
        "SandboxModeLimits",
    ):
        shell.config.pop(section, None)
    ResultDisplay.clear_instance()

"""The symbi-jupyter command, run as a real process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from symbi_jupyter import __version__
from symbi_jupyter.audit import AuditLog
from symbi_jupyter.cli import main

from .helpers import need

SCRIPT = Path(sys.executable).parent / "symbi-jupyter"

RUNNERS = {"module": [sys.executable, "-m", "symbi_jupyter.cli"], "script": [str(SCRIPT)]}


@pytest.fixture(params=list(RUNNERS))
def cli(request):
    need(request.param != "script" or SCRIPT.exists(), f"console script not installed at {SCRIPT}")
    prefix = RUNNERS[request.param]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=60)

    return run


@pytest.fixture
def log_path(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    for n in range(3):
        log.append({"event": "execute", "n": n})
    return path


def test_verify_intact(cli, log_path):
    done = cli("audit", "verify", str(log_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{log_path}: intact: 3 records\n"


def test_verify_broken(cli, log_path):
    lines = log_path.read_bytes().splitlines(keepends=True)
    log_path.write_bytes(lines[0] + lines[2])
    done = cli("audit", "verify", str(log_path))
    assert done.returncode == 1
    assert f"{log_path}: BROKEN at line 2: " in done.stdout


def test_verify_records_cut_off_the_end(cli, log_path):
    lines = log_path.read_bytes().splitlines(keepends=True)
    log_path.write_bytes(lines[0] + lines[1])
    done = cli("audit", "verify", str(log_path))
    assert done.returncode == 1
    assert "BROKEN: records were cut off the end" in done.stdout


def test_verify_missing_file(cli, tmp_path):
    done = cli("audit", "verify", str(tmp_path / "absent.jsonl"))
    assert done.returncode == 1
    assert "BROKEN: no such file" in done.stdout


@pytest.mark.parametrize(
    "args", [(), ("audit",), ("audit", "verify"), ("bogus",), ("audit", "verify", "a", "b")]
)
def test_usage_errors_exit_2(cli, args):
    done = cli(*args)
    assert done.returncode == 2
    assert "usage: symbi-jupyter" in done.stderr
    assert "Traceback" not in done.stderr


def test_version(cli):
    done = cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"symbi-jupyter {__version__}"


def test_help_lists_audit(cli):
    done = cli("--help")
    assert done.returncode == 0
    assert "audit" in done.stdout


def test_main_returns_the_status(log_path, capsys):
    assert main(["audit", "verify", str(log_path)]) == 0
    assert "intact: 3 records" in capsys.readouterr().out
    log_path.write_bytes(b"garbage\n")
    assert main(["audit", "verify", str(log_path)]) == 1
    assert main(["audit", "frobnicate"]) == 2
    assert main(["--version"]) == 0

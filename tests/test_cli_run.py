"""``symbi-jupyter run AGENT_FILE``, run as a real process with the seed's flags: the
seed's agent natively under a config.toml that enables native execution."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "symbi_jupyter.cli", "run"]

# The seed's agent (tier-model.md 5.3), verbatim.
SEED = """\
agent NativeWorker {
  metadata { name: "Local Development Agent" version: "1.0.0" }
  security { tier: None sandbox: Permissive capabilities: ["local_filesystem", "network"] }
  on trigger "local_processing" { execute_native("python3 process.py") }
}
"""

# Reads the payload; allocates payload["eat"] MB when asked to.
PROCESS_PY = """\
import json, os
payload = json.loads(os.environ["SYMBI_PAYLOAD"]) or {}
print("processed", len(payload.get("items", [])), "items", flush=True)
hoard = bytearray(payload.get("eat", 0) * 1024 * 1024)
"""

SEED_FLAGS = ("--native", "--max-memory=1024", "--max-cpu=2.0", "--timeout=300")


@pytest.fixture
def project(workdir: Path):
    """A directory holding the agent, process.py and a config.toml enabling native
    execution (ceiling 1536 MB), usable by the unprivileged run user."""
    path = Path("/tmp") / f"symbi-cli-{uuid.uuid4().hex[:10]}"
    path.mkdir()
    path.chmod(0o777)
    # process.py where the seed puts it: in the working directory, which runs see.
    for where, name, text in ((path, "agent.dsl", SEED), (workdir, "process.py", PROCESS_PY)):
        (where / name).write_text(text)
        (where / name).chmod(0o644)
    (path / "config.toml").write_text(
        "[native_execution]\nenabled = true\nmax_memory_mb = 1536\n"
        f'working_directory = "{workdir}"\n'
    )
    yield path
    shutil.rmtree(path, ignore_errors=True)


def cli(project: Path, *args: str, agent: str = "agent.dsl") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, agent, "--config", "config.toml", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )


def audit() -> list[dict]:
    path = Path(os.environ["XDG_STATE_HOME"]) / "symbi-jupyter" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_seeds_command_line_runs_the_seeds_agent(project):
    done = cli(project, *SEED_FLAGS, "--payload", '{"items": [1, 2, 3]}')
    assert done.returncode == 0, done.stderr
    assert done.stdout == "processed 3 items\n"
    [stats] = done.stderr.splitlines()
    assert stats.startswith("[symbi] None (native) · exit 0 · wall ")
    assert "of 1.0 GiB" in stats  # --max-memory=1024 lowered Permissive's 2048 MB
    [record] = audit()
    assert (record["tier"], record["outcome"], record["exit_code"]) == ("None", "success", 0)
    limits = record["limits"]
    assert (limits["max_memory_mb"], limits["max_cpu_cores"], limits["timeout_seconds"]) == (
        1024,
        2.0,
        300,
    )


def test_a_memory_kill_exits_non_zero_with_the_reason(project):
    done = cli(project, *SEED_FLAGS, "--max-memory=100", "--payload", '{"eat": 400}')
    assert done.returncode == 1
    assert done.stdout == "processed 0 items\n"
    assert "[symbi] None (native) · stopped: memory limit (100 MiB)" in done.stderr
    assert done.stderr.endswith(
        'NativeWorker.local_processing: execute_native("python3 process.py") was stopped by '
        "the memory limit (100 MiB)\n"
    )
    [record] = audit()
    assert (record["outcome"], record["killed_by"]) == ("stopped", "memory")


def test_a_flag_above_the_ceiling_is_refused_without_traceback(project):
    done = cli(project, "--native", "--max-memory=4096")
    assert done.returncode == 3
    assert done.stdout == ""
    assert done.stderr == (
        "symbi-jupyter run: PolicyViolation: max_memory_mb=4096 MB exceeds the policy "
        "ceiling of 1536 MB; ask for at most 1536 or have the operator raise "
        "SandboxOrchestrator.max_memory_mb\n"
    )
    [record] = audit()
    assert record["outcome"] == "refused" and "max_memory_mb=4096" in record["error"]
    assert (record["agent"], record["trigger"]) == ("NativeWorker", "local_processing")


def test_a_flag_above_the_modes_limit_does_not_raise_it(project):
    strict = SEED.replace("Permissive", "Strict").replace("python3 process.py", "python3 -c pass")
    (project / "agent.dsl").write_text(strict)
    done = cli(project, "--native", "--max-memory=1024", "--timeout=300")
    assert done.returncode == 0, done.stderr
    [record] = audit()
    assert (record["limits"]["max_memory_mb"], record["limits"]["timeout_seconds"]) == (256, 30)


def test_native_off_is_refused_by_the_policy(project):
    (project / "config.toml").write_text("[native_execution]\nenabled = false\n")
    done = cli(project, "--native")
    assert done.returncode == 3
    assert done.stderr.startswith("symbi-jupyter run: PolicyViolation: native execution")
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1
    assert [r["outcome"] for r in audit()] == ["refused"]


TWO = """\
agent A {
  security { tier: None sandbox: Strict }
  on trigger "one" { execute("echo A one") }
  on trigger "two" { execute("echo A two") }
}
agent B {
  security { tier: None sandbox: Strict }
  on trigger "one" { execute("echo B one") }
}
"""


def test_several_triggers_need_a_choice_listed(project):
    (project / "two.dsl").write_text(TWO)
    done = cli(project, agent="two.dsl")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        "symbi-jupyter run: ConfigError: two.dsl has several triggers: A 'one', A 'two', "
        "B 'one'; choose one with --trigger NAME\n"
    )
    done = cli(project, "--trigger", "one", agent="two.dsl")
    assert done.returncode == 2
    assert "several triggers: A 'one', B 'one'; choose one with --agent NAME" in done.stderr
    done = cli(project, "--trigger", "three", agent="two.dsl")
    assert "no trigger 'three'; its triggers: A 'one', A 'two', B 'one'" in done.stderr
    done = cli(project, "--trigger", "two", agent="two.dsl")
    assert done.returncode == 0 and done.stdout == "A two\n"
    done = cli(project, "--trigger", "one", "--agent", "B", agent="two.dsl")
    assert done.returncode == 0 and done.stdout == "B one\n"
    assert not any(r["outcome"] == "refused" for r in audit())


def test_a_tier_flag_may_not_weaken_the_agents_tier(project):
    (project / "docked.dsl").write_text(SEED.replace("tier: None", "tier: Tier1"))
    done = cli(project, "--sandbox-tier=none", agent="docked.dsl")
    assert done.returncode == 3
    assert "agent NativeWorker runs at Tier1 (Docker) (its security block)" in done.stderr
    [record] = audit()
    assert (record["outcome"], record["tier"]) == ("refused", "None")


def test_each_actions_output_streams_as_it_comes(project):
    """The action waits for a file the test makes only after reading its first line:
    unless that line is streamed, the run ends at its timeout instead."""
    (project / "wait.dsl").write_text(
        """agent W {
  security { tier: None sandbox: Permissive capabilities: ["local_filesystem"] }
  on trigger "t" {
    run_code("python3", \"\"\"
      import os, time
      print("ready", flush=True)
      go = os.path.join(os.environ["SYMBI_NOTEBOOK_DIR"], "go")
      while not os.path.exists(go):
          time.sleep(0.05)
      print("went")
    \"\"\")
  }
}
"""
    )
    proc = subprocess.Popen(
        [*CLI, "wait.dsl", "--config", "config.toml", "--native", "--timeout=60"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        (project / "go").write_text("")
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert out == "went\n"

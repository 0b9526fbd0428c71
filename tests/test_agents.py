"""Agents in Symbiont's DSL: the grammar, capabilities and modes against real
orchestrators (tier None here, Tier1/Tier2 through Docker), payload passing, and the
%%symbi_agent / %symbi_trigger magics through a real IPython shell."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import pytest

from symbi_jupyter import (
    ConfigError,
    ExecutionResult,
    PolicyViolation,
    ResourceLimits,
    SecurityTier,
)
from symbi_jupyter.agents import Agent, Emitted, Ref, Run, SandboxMode, load
from symbi_jupyter.agents.render import render_card_html, render_card_text
from symbi_jupyter.orchestrator import SandboxOrchestrator, forget_default_orchestrator
from symbi_jupyter.render import ResultDisplay

from .helpers import need, run_cell

# The agent of tier-model.md section 5.3 and of the issue, verbatim.
SEED = """\
agent NativeWorker {
  metadata { name: "Local Development Agent" version: "1.0.0" }
  security { tier: None sandbox: Permissive capabilities: ["local_filesystem", "network"] }
  on trigger "local_processing" { execute_native("python3 process.py") }
}
"""
TIER_MODEL = Path(__file__).resolve().parents[2] / "shared" / "reference" / "tier-model.md"
TIER_MODEL_AGENTS = Path(__file__).with_name("data") / "tier-model-agents.dsl"

# The seed's process.py: reads the payload, writes a file into the notebook directory
# where it has one (else beside itself).
PROCESS_PY = """\
import json, os
payload = json.loads(os.environ["SYMBI_PAYLOAD"])
out = os.path.join(os.environ.get("SYMBI_NOTEBOOK_DIR", "."), "processed.json")
with open(out, "w") as f:
    json.dump({"payload": payload, "cwd": os.getcwd()}, f)
print("processed", len(payload["items"]), "items")
"""

# Values a command line would mangle or execute.
HOSTILE = {
    "quotes": "it's \"quoted\" 'twice'",
    "subst": "$(touch CANARY)",
    "backticks": "`touch CANARY`",
    "newlines": "line one\nline two\n; touch CANARY\n",
    "shell": "'; touch CANARY; echo '",
    "unicode": "é ü 𝄞 \u2028",
    "nul": "a\x00b",
    "dollar": "$HOME ${PATH} $1",
}


def agent_text(
    name="A",
    tier="None",
    mode="Permissive",
    caps=("local_filesystem",),
    body='execute("true")',
    trigger="t",
) -> str:
    listed = ", ".join(f'"{c}"' for c in caps)
    return (
        f"agent {name} {{\n  security {{ tier: {tier} sandbox: {mode} "
        f'capabilities: [{listed}] }}\n  on trigger "{trigger}" {{ {body} }}\n}}\n'
    )


def one(text: str, orch=None, directory=None) -> Agent:
    [agent] = load(text, orchestrator=orch, directory=directory)
    return agent


@pytest.fixture
def project():
    """A notebook directory the unprivileged run user (nobody, as root) can use."""
    path = Path("/tmp") / f"symbi-agent-{uuid.uuid4().hex[:10]}"
    path.mkdir()
    path.chmod(0o777)
    (path / "process.py").write_text(PROCESS_PY)
    (path / "process.py").chmod(0o644)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def seed_script(workdir: Path) -> None:
    """The seed's process.py where the seed's user puts it: in the working directory."""
    (workdir / "process.py").write_text(PROCESS_PY)
    (workdir / "process.py").chmod(0o644)


def audit(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- grammar: valid -------------------------------------------------------------------
def test_seed_agent_parses():
    agent = one(SEED)
    assert agent.name == "NativeWorker"
    assert dict(agent.metadata) == {"name": "Local Development Agent", "version": "1.0.0"}
    assert agent.tier is SecurityTier.NONE and agent.sandbox is SandboxMode.PERMISSIVE
    assert agent.capabilities == ("local_filesystem", "network")
    [action] = agent.triggers["local_processing"].actions
    assert action == Run(
        "execute_native",
        "sh",
        "python3 process.py",
        source='execute_native("python3 process.py")',
        line=4,
    )
    assert agent.orchestrator is None and agent.directory is None


def tier_model_agents(text: str) -> list[str]:
    """The agent definitions in tier-model.md: from "agent NAME {" to the brace that
    closes it at the same indent."""
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        start = re.fullmatch(r"( *)agent \w+ \{", line)
        if start:
            end = lines.index(start.group(1) + "}", i)
            found.append(textwrap.dedent("\n".join(lines[i : end + 1])) + "\n")
    return found


def test_every_agent_in_the_tier_model_parses():
    examples = tier_model_agents(TIER_MODEL_AGENTS.read_text())
    assert SEED in examples
    for example in examples:
        assert [a.name for a in load(example)] == re.findall(r"^agent (\w+)", example, re.M)
    if TIER_MODEL.exists():  # the copy in tests/data is still what the reference says
        assert tier_model_agents(TIER_MODEL.read_text()) == examples


def test_several_agents_comments_and_separators():
    text = """
    // two agents in one cell
    agent First {
      metadata { owner: "ops", retries: 3, ratio: -0.5, live: true, tags: ["a", b], none: null }
      security { tier: "docker"; sandbox: moderate; capabilities: [network] }
      /* a block
         comment */
      on trigger go { execute("echo 1"); emit("done", true), emit("list", [1, payload.x]) }
    }
    agent Second { security { tier: gvisor } }   # another comment
    """
    first, second = load(text)
    assert first.metadata == {
        "owner": "ops",
        "retries": 3,
        "ratio": -0.5,
        "live": True,
        "tags": ["a", "b"],
        "none": None,
    }
    assert (first.tier, first.sandbox, first.capabilities) == (
        SecurityTier.TIER1,
        SandboxMode.MODERATE,
        ("network",),
    )
    run, done, listed = first.triggers["go"].actions
    assert run.code == "echo 1" and done.value is True
    assert listed.value == [1, Ref(("payload", "x"))]
    # Defaults can only tighten: no mode is Strict, no capabilities are none.
    assert (second.tier, second.sandbox, second.capabilities) == (
        SecurityTier.TIER2,
        SandboxMode.STRICT,
        (),
    )


@pytest.mark.parametrize("name", [*SecurityTier.accepted_names(), "None", "Tier1", "DOCKER"])
def test_every_tier_name(name):
    assert one(agent_text(tier=name)).tier is SecurityTier.parse(name)


@pytest.mark.parametrize("mode", ["Strict", "moderate", "PERMISSIVE"])
def test_modes_any_case(mode):
    assert one(agent_text(mode=mode)).sandbox.value.lower() == mode.lower()


def test_run_code_long_string_is_dedented_and_literal():
    text = agent_text(
        body='run_code("python3", """\n'
        "      import os\n"
        '      print("a \\\\n # not a comment")\n'
        '    """)'
    )
    [action] = one(text).triggers["t"].actions
    assert action.language == "python3"
    assert action.code == 'import os\nprint("a \\\\n # not a comment")\n'
    assert action.summary == 'run_code("python3", """import os …""")'


def test_needs_and_emit_references():
    text = agent_text(
        caps=("network",),
        body='execute("x", needs: ["network"]) '
        'emit("out", result.stdout) emit("who", payload.user.name)',
    )
    run, out, who = one(text).triggers["t"].actions
    assert run.needs == ("network",)
    assert out.value == Ref(("result", "stdout")) and who.value == Ref(("payload", "user", "name"))


# -- grammar: invalid ------------------------------------------------------------------
def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(text)
    return str(info.value)


def test_syntax_error_names_line_column_and_shows_a_caret():
    message = error_of("agent X {\n  security { tier None }\n}")
    assert message == (
        "line 2, column 19: unexpected 'None'; expected ':'\n"
        "      security { tier None }\n"
        "                      ^"
    )


def test_syntax_error_at_the_end_of_the_text():
    message = error_of("agent X {")
    assert message.startswith(
        "line 1, column 10: the text ends too soon; expected one of "
        "'metadata', 'on', 'security', '}'"
    )
    assert message.endswith("\n    agent X {\n             ^")


def test_caret_follows_tabs():
    message = error_of("\tagent X { ] }")
    assert message.splitlines()[1:] == ["    \tagent X { ] }", "    \t          ^"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('agent X { metadata { a: "b } }', "line 1, column 25: unterminated string"),
        (
            'agent X { security { tier: None } on trigger t { execute("x" } }',
            "line 1, column 62: unexpected '}'; expected one of ')', ','",
        ),
        (
            'agent X { security { tier: None } on trigger t { execute("a") @ } }',
            "line 1, column 63: unexpected character '@'",
        ),
        (
            'agent X { security { tier: None } on trigger t { execute("a\\qb") } }',
            "line 1, column 60: bad escape in string",
        ),
        ("agent X { metadata { a: 1 } }", "line 1, column 7: agent X names no tier"),
        (
            "agent X { security { tier: None tire: 1 } }",
            "line 1, column 33: unknown security setting 'tire'; "
            "accepted: tier, sandbox, capabilities",
        ),
        (
            'agent X { security { tier: None capabilities: "network" } }',
            "capabilities must be a list",
        ),
        (
            "agent X { security { tier: None } }\nagent X { security { tier: None } }",
            "line 2, column 7: agent X is defined twice",
        ),
        (
            'agent X { security { tier: None } on trigger t {} on trigger "t" {} }',
            "trigger 't' is defined twice",
        ),
        ("agent X { security { tier: None } security { tier: None } }", "a second security block"),
        (
            "agent X { metadata { a: 1 a: 2 } security { tier: None } }",
            "line 1, column 27: a is given twice in metadata",
        ),
        (
            'agent X { security { tier: None } }\n"""a\nb"""',
            'line 2, column 1: unexpected \'"""a b"""\'; expected \'agent\'',
        ),
        (
            'agent X { security { tier: None } on trigger t { launch("x") } }',
            "unknown action 'launch'; accepted: execute_native, execute, run_code, emit",
        ),
        (
            'agent X { security { tier: None } on trigger t { execute("x", "y") } }',
            "execute takes 1 argument: execute(command, needs: [...])",
        ),
        (
            'agent X { security { tier: None } on trigger t { execute("x", retries: 3) } }',
            "execute takes no argument 'retries'",
        ),
        (
            "agent X { security { tier: None } on trigger t { execute(payload.cmd) } }",
            "execute's command must be a string literal",
        ),
        (
            'agent X { security { tier: None } on trigger t { emit("a", result.stdout) } }',
            "emit reads result.FIELD, but no action runs before it",
        ),
        (
            'agent X { security { tier: None } on trigger t { execute("x") emit("a", stdout) } }',
            "unknown value 'stdout'",
        ),
        (
            'agent X { security { tier: None } on trigger t { run_code("cobol", "x") } }',
            "unknown language 'cobol'; accepted: python3",
        ),
    ],
)
def test_invalid_agents(text, expected):
    message = error_of(text)
    assert expected in message.splitlines()[0]
    assert message.splitlines()[-1].strip() == "^"


def test_unknown_tier_lists_the_accepted_names():
    first = error_of(agent_text(tier="Tier9")).splitlines()[0]
    assert first.startswith("line 2, column 20: unknown security tier 'Tier9'; accepted")
    for name in SecurityTier.accepted_names():
        assert name in first


def test_unknown_mode_lists_the_modes():
    first = error_of(agent_text(mode="Lax")).splitlines()[0]
    assert first.endswith(
        "unknown sandbox mode 'Lax'; accepted (any case): Strict, Moderate, Permissive"
    )


@pytest.mark.parametrize("where", ["capabilities", "needs"])
def test_unknown_capability_lists_the_known_ones(where):
    if where == "capabilities":
        text = agent_text(caps=("network", "gpu"))
    else:
        text = agent_text(body='execute("x", needs: ["gpu"])')
    first = error_of(text).splitlines()[0]
    assert first.endswith("unknown capability 'gpu'; known: network, local_filesystem")


# -- running at tier None ------------------------------------------------------------
def test_seed_agent_end_to_end(orch, project, workdir, audit_path):
    """The seed's flow: process.py in the working directory, the seed's agent triggered.
    Its command starts where the seed's native runner starts one, in the working
    directory (here, the run's own directory, where its files are shown)."""
    (project / "process.py").unlink()  # the working directory's alone
    seed_script(workdir)
    agent = one(SEED, orch, project)
    payload = {"items": [1, 2, 3], **HOSTILE}
    [result] = agent.trigger("local_processing", payload=payload)
    assert isinstance(result, ExecutionResult) and result.success, result.stderr
    assert result.tier is SecurityTier.NONE
    assert result.stdout == "processed 3 items\n"
    # Permissive + local_filesystem: the notebook directory, read-write, in the
    # environment; the command ran in a private directory of the working directory.
    written = json.loads((project / "processed.json").read_text())
    assert written["payload"] == payload
    assert written["cwd"].startswith(f"{workdir}/run-")
    assert sorted(p.name for p in workdir.iterdir() if not p.name.startswith("run-")) == [
        "process.py"
    ]
    assert not list(project.glob("CANARY"))
    [record] = audit(audit_path)
    assert (record["tier"], record["outcome"]) == ("None", "success")
    # The seed's network capability is not granted where the policy forbids it.
    assert result.limits.network is False


def test_without_local_filesystem_the_command_runs_in_its_private_directory(orch, project):
    text = SEED.replace('["local_filesystem", "network"]', '["network"]')
    [result] = one(text, orch, project).trigger("local_processing", payload={"items": []})
    assert not result.success and result.exit_code == 2
    assert "process.py" in result.stderr and not (project / "processed.json").exists()


def test_strict_mode_mounts_nothing_even_with_the_capability(orch, project):
    agent = one(agent_text(mode="Strict", body='execute("pwd")'), orch, project)
    [result] = agent.trigger("t")
    assert result.success and result.stdout.strip() != str(project)
    assert not agent.permissions().filesystem.allowed
    assert agent.permissions().filesystem.reason == "Strict mode mounts nothing"


def test_moderate_at_tier_none_says_read_only_is_not_enforced(orch, project, workdir):
    agent = one(
        agent_text(mode="Moderate", body='execute("pwd; ls \\"$SYMBI_NOTEBOOK_DIR\\"")'),
        orch,
        project,
    )
    [result] = agent.trigger("t")
    where, listed = result.stdout.splitlines()
    assert where.startswith(f"{workdir}/run-") and listed == "process.py", result.stderr
    verdict = agent.permissions().filesystem
    assert verdict.allowed and "read-only; not enforced at tier None" in verdict.reason


def test_run_code_finds_the_notebook_directory_in_the_environment(orch, project):
    body = (
        'run_code("python3", """\n import os\n d = os.environ["SYMBI_NOTEBOOK_DIR"]\n'
        ' print(d == os.getcwd(), sorted(os.listdir(d)))\n """)'
    )
    [result] = one(agent_text(body=body), orch, project).trigger("t")
    assert result.stdout == "False ['process.py']\n"


def test_mode_limits_stay_within_the_ceilings(orch, project):
    agent = one(agent_text(mode="Strict", body='execute("true")'), orch, project)
    [result] = agent.trigger("t")
    assert (
        result.limits.max_memory_mb,
        result.limits.timeout_seconds,
        result.limits.max_processes,
    ) == (256, 30, 32)
    orch.max_memory_mb = 128
    orch.max_execution_time_seconds = 10
    [result] = agent.trigger("t")
    assert (result.limits.max_memory_mb, result.limits.timeout_seconds) == (128, 10)


def test_mode_limits_are_configurable_and_still_within_the_ceilings(workdir, audit_path, project):
    from traitlets.config import Config

    config = Config()
    config.SandboxOrchestrator.allow_native_execution = True
    config.SandboxOrchestrator.working_directory = str(workdir)
    config.SandboxOrchestrator.audit_log_path = str(audit_path)
    config.SandboxOrchestrator.max_execution_time_seconds = 20
    config.SandboxModeLimits.strict = {"max_memory_mb": 96, "timeout_seconds": 60}
    orch = SandboxOrchestrator(config=config)
    try:
        agent = one(agent_text(mode="Strict", body='execute("true")'), orch, project)
        [result] = agent.trigger("t")
        # as configured, the wall clock lowered to the ceiling; left out: the ceiling
        assert (
            result.limits.max_memory_mb,
            result.limits.timeout_seconds,
            result.limits.max_processes,
        ) == (96, 20, 256)
        assert "96 MiB" in render_card_text(agent)
    finally:
        orch.close()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"max_memory": 1}, "unknown limit max_memory; accepted: max_memory_mb"),
        ({"network": True}, "unknown limit network"),
        ({"max_processes": -1}, "max_processes must be a positive number"),
    ],
)
def test_bad_mode_limits_are_refused_with_the_accepted_names(value, message):
    from traitlets import TraitError

    from symbi_jupyter.agents import SandboxModeLimits

    with pytest.raises(TraitError, match=re.escape(message)):
        SandboxModeLimits(moderate=value)


@pytest.mark.parametrize("language", ["sh", "python3"])
def test_hostile_payload_arrives_intact_and_is_not_executed(orch, project, language):
    code = (
        'printf "%s" "$SYMBI_PAYLOAD"'
        if language == "sh"
        else 'import os, sys; sys.stdout.write(os.environ["SYMBI_PAYLOAD"])'
    )
    body = (
        f"execute({json.dumps(code)})"
        if language == "sh"
        else f'run_code("python3", {json.dumps(code)})'
    )
    agent = one(agent_text(body=body), orch, project)
    [result] = agent.trigger("t", payload=HOSTILE)
    assert result.success, result.stderr
    assert json.loads(result.stdout) == HOSTILE
    assert not list(project.glob("CANARY"))


def test_emit_records_literals_payload_and_results(orch, project):
    body = (
        'execute("echo hello") emit("greeting", result.stdout) '
        'emit("code", result.exit_code) emit("user", payload.user) '
        'emit("both", [payload.user.name, result.tier, 1.5])'
    )
    agent = one(agent_text(body=body), orch, project)
    results = agent.trigger("t", payload={"user": {"name": "ada"}})
    assert [type(r) for r in results] == [ExecutionResult, Emitted, Emitted, Emitted, Emitted]
    assert [(e.name, e.value) for e in results[1:]] == [
        ("greeting", "hello\n"),
        ("code", 0),
        ("user", {"name": "ada"}),
        ("both", ["ada", "None", 1.5]),
    ]
    assert str(results[4]) == '[emit] A.t both = ["ada", "None", 1.5]'
    assert "<b>both</b>" in results[4]._repr_html_()
    with pytest.raises(ConfigError, match=r"the payload has no payload\.user"):
        agent.trigger("t", payload={})


def test_a_failing_action_ends_the_trigger(orch, project):
    agent = one(
        agent_text(body='execute("echo one; exit 3") execute("echo two") emit("after", 1)'),
        orch,
        project,
    )
    [result] = agent.trigger("t")
    assert result.exit_code == 3 and result.stdout == "one\n"


def test_native_off_is_refused_by_the_orchestrator(project, audit_path):
    orch = SandboxOrchestrator(audit_log_path=str(audit_path))
    agent = one(SEED, orch, project)
    assert not agent.permissions().tier.allowed
    with pytest.raises(PolicyViolation, match="allow_native_execution"):
        agent.trigger("local_processing", payload={"items": []})
    assert not (project / "processed.json").exists()
    [record] = audit(audit_path)
    assert record["outcome"] == "refused"


def test_execute_native_is_refused_at_tier1_before_anything_runs(orch, project, audit_path):
    text = agent_text(tier="Tier1", body='execute("touch first") execute_native("echo hi")')
    agent = one(text, orch, project)
    with pytest.raises(PolicyViolation) as info:
        agent.trigger("t")
    assert str(info.value) == (
        'agent A: execute_native("echo hi") is refused: execute_native runs code natively '
        "(tier None), but agent A runs at Tier1 (Docker); use execute(...) to run at its tier"
    )
    # Not even the first action ran; the refusal itself is audited.
    [record] = audit(audit_path)
    assert record["outcome"] == "refused" and record["tier"] == "Tier1"
    assert record["agent"] == "A" and record["trigger"] == "t"
    assert "execute_native" in record["error"]


def test_a_capability_the_agent_lacks_is_refused_by_name(orch, project, audit_path):
    for need_name in ("network", "local_filesystem"):
        agent = one(
            agent_text(caps=(), body=f'execute("true", needs: ["{need_name}"])'), orch, project
        )
        with pytest.raises(
            PolicyViolation, match=f"needs the {need_name} capability, which agent A lacks"
        ):
            agent.trigger("t")
    agent = one(
        agent_text(mode="Strict", caps=("network",), body='execute("true", needs: ["network"])'),
        orch,
        project,
    )
    with pytest.raises(PolicyViolation, match="Strict mode never permits"):
        agent.trigger("t")
    records = audit(audit_path)  # three refusals, nothing run
    assert [r["outcome"] for r in records] == ["refused"] * 3


# -- what execute_native starts: the allowlist, no shell in between ------------------
# The seed guide's Option 1: [security] and [security.native_execution] of config.toml.
OPTION_1 = """\
[security]
allow_native_execution = true

[security.native_execution]
enforce_resource_limits = true
max_memory_mb = 2048
max_execution_time_seconds = 300
working_directory = "{workdir}"
allowed_executables = ["python3", "node", "bash"]
"""


@pytest.fixture
def option_1(workdir, audit_path, tmp_path):
    from symbi_jupyter.config import load_symbiont_config

    path = tmp_path / "config.toml"
    path.write_text(OPTION_1.format(workdir=workdir))
    o = SandboxOrchestrator(config=load_symbiont_config(path), audit_log_path=str(audit_path))
    yield o
    o.close()


def action_verdict(agent: Agent):
    [[(_, verdict)]] = agent.permissions().actions.values()
    return verdict


def test_seed_agent_runs_under_the_seeds_option_1_allowlist(option_1, project, workdir, audit_path):
    seed_script(workdir)
    agent = one(SEED, option_1, project)
    assert option_1.allowed_executables == ["python3", "node", "bash"]
    # The card and the run agree: python3 is on the list, and python3 is what runs.
    verdict = action_verdict(agent)
    assert verdict.allowed, verdict.reason
    assert '✓ execute_native("python3 process.py")' in render_card_text(agent)
    [result] = agent.trigger("local_processing", payload={"items": [1, 2]})
    assert result.success, result.stderr
    assert result.stdout == "processed 2 items\n"
    assert os.path.basename(result.executable).startswith("python3")
    [record] = audit(audit_path)
    assert record["argv"] == ["python3", "process.py"] and record["outcome"] == "success"


def test_the_card_checks_the_interpreter_of_execute_and_run_code_at_tier_none(option_1, project):
    # execute is a shell command: at tier None it needs sh, which Option 1 leaves out.
    body = 'execute("true") run_code("node", "1")'
    agent = one(agent_text(body=body), option_1, project)
    [(_, shell), (_, node)] = agent.permissions().actions["t"]
    assert not shell.allowed and "executable 'sh' resolves to" in shell.reason
    assert node.allowed or "executable 'node' was not found" in node.reason
    with pytest.raises(PolicyViolation) as info:
        agent.trigger("t")
    assert str(info.value) in shell.reason


def test_an_sh_allowlist_does_not_let_execute_native_start_python3(orch, project, audit_path):
    orch.allowed_executables = ["sh"]
    agent = one(SEED, orch, project)
    verdict = action_verdict(agent)
    assert not verdict.allowed
    assert "executable 'python3' resolves to" in verdict.reason
    assert "not on the allowlist (SandboxOrchestrator.allowed_executables = ['sh']" in (
        verdict.reason
    )
    with pytest.raises(PolicyViolation) as info:
        agent.trigger("local_processing", payload={"items": []})
    assert str(info.value) in verdict.reason  # the card said what the run says
    assert not (project / "processed.json").exists()
    [record] = audit(audit_path)
    assert record["outcome"] == "refused" and "'python3'" in record["error"]


@pytest.mark.parametrize(
    ("command", "syntax"),
    [
        ("python3 process.py | tee CANARY", "'|' is shell syntax (a pipe)"),
        ("python3 process.py > CANARY", "'>' is shell syntax (a redirection)"),
        ("python3 process.py; touch CANARY", "';' is shell syntax (a command separator)"),
        ("python3 process.py && touch CANARY", "'&' is shell syntax"),
        ("python3 $(touch CANARY)", "'$' is shell syntax (an expansion)"),
        ('python3 "`touch CANARY`"', "'`' is shell syntax (a command substitution)"),
        ("python3 *.py", "'*' is shell syntax (a glob)"),
        ("python3 process.py\ntouch CANARY", "'\\n' is shell syntax (a second line)"),
    ],
)
def test_shell_syntax_in_execute_native_is_refused_with_the_bash_advice(
    orch, project, audit_path, command, syntax
):
    agent = one(agent_text(body=f"execute_native({json.dumps(command)})"), orch, project)
    verdict = action_verdict(agent)
    assert not verdict.allowed and verdict.reason.startswith(syntax)
    assert 'write the shell explicitly, bash -c "..."' in verdict.reason
    with pytest.raises(PolicyViolation) as info:
        agent.trigger("t", payload={"items": []})
    assert str(info.value).endswith(verdict.reason)
    assert not (project / "CANARY").exists() and not (project / "processed.json").exists()
    [record] = audit(audit_path)  # refused before anything ran, and audited
    assert record["outcome"] == "refused" and record["agent"] == "A"


def test_bash_c_is_allowed_only_where_bash_is(orch, project, workdir):
    # Single quotes keep the $ for bash; the pipe is bash's, written explicitly.
    body = 'execute_native("bash -c \'echo \\"$SYMBI_AGENT\\" | tr a-z A-Z; pwd\'")'
    orch.allowed_executables = ["bash"]
    agent = one(agent_text(body=body), orch, project)
    assert action_verdict(agent).allowed
    [result] = agent.trigger("t")
    assert result.success, result.stderr
    first, started = result.stdout.splitlines()
    assert first == "A"
    assert started.startswith(f"{workdir}/run-")  # where native runs start, as the seed's
    orch.allowed_executables = ["python3", "sh"]
    agent = one(agent_text(body=body), orch, project)
    verdict = action_verdict(agent)
    assert not verdict.allowed and "executable 'bash' resolves to" in verdict.reason
    with pytest.raises(PolicyViolation, match=r"executable 'bash' resolves to .* not on the allow"):
        agent.trigger("t")


def test_execute_native_words_and_quotes_reach_the_program_as_written(orch, project, audit_path):
    # No shell: quotes group words, and nothing in them is expanded or split again.
    body = (
        'execute_native("python3 -c \\"import sys; print(sys.argv[1:])\\" '
        "'a b' \\\"c  d\\\" 'it''s' \\\\* x~ a#b\")"
    )
    [result] = one(agent_text(body=body), orch, project).trigger("t")
    assert result.success, result.stderr
    assert result.stdout == "['a b', 'c  d', 'its', '*', 'x~', 'a#b']\n"
    # The audit says what ran: the argument vector, no shell, no code file.
    [record] = audit(audit_path)
    assert record["argv"][0] == "python3" and record["argv"][3:] == [
        "a b",
        "c  d",
        "its",
        "*",
        "x~",
        "a#b",
    ]
    assert (record["language"], result.language) == ("command", "command")


def _loaded_within(text: str, seconds: float = 60.0):
    """``load(text)``'s agents or error; the bound only guards against a hang."""
    outcome: list = []

    def target() -> None:
        try:
            outcome.append(load(text))
        except BaseException as exc:  # handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"load() had not finished after {seconds} s"
    return outcome[0]


def test_a_long_trigger_loads_in_linear_time():
    """100 000 emits (1.3 MB) took 541 s when each action rescanned those before it."""
    body = "\n".join('emit("x", 1)' for _ in range(100_000))
    text = f'agent A {{\n security {{ tier: None }}\n on trigger "t" {{\n{body}\n}}\n}}\n'
    (agent,) = _loaded_within(text)
    assert len(agent.triggers["t"].actions) == 100_000


def test_deep_nesting_is_a_config_error_with_its_place():
    deep = "[" * 2000 + "]" * 2000
    error = _loaded_within(f"agent A {{\n security {{ tier: None }}\n metadata {{ x: {deep} }}\n}}")
    assert isinstance(error, ConfigError), repr(error)
    first, shown, caret = str(error).splitlines()
    assert first == "line 3, column 48: lists nest more than 32 deep here"
    assert len(shown) < 120 and caret.strip() == "^"  # a window of the long line
    assert one(f"agent A {{ security {{ tier: None }} metadata {{ x: {'[' * 32}{']' * 32} }} }}")


def test_an_agent_text_past_the_size_limit_is_refused_before_parsing():
    text = "agent A { security { tier: None } }\n" + "// " + "x" * (2 * 1024 * 1024) + "\n"
    with pytest.raises(ConfigError, match="more than the 2097152 read; split it"):
        load(text)


def test_unknown_triggers(orch):
    with pytest.raises(ConfigError, match="no trigger 'nope'; its triggers: 'local_processing'"):
        one(SEED).bind(orch).trigger("nope")


# agents.load(text) then trigger in a process of its own, as a script does: what ran.
DEFAULT_RUN = """\
import atexit, json, sys
from symbi_jupyter import SandboxOrchestrator, agents, orchestrator

TEXT = '''
agent Probe {
  security { tier: None sandbox: Permissive }
  on trigger "t" { run_code("python3", "print('ran')") }
}
'''
seen = {}


def at_exit():
    # Registered before the default orchestrator exists, so it runs after that one's
    # own exit handler.
    seen["sandboxes_at_exit"] = len(orchestrator._default.active_sandboxes())
    print(json.dumps(seen), flush=True)


atexit.register(at_exit)
[probe] = agents.load(TEXT)
seen["made_at_load"] = orchestrator._default is not None
[ran] = probe.trigger("t")
seen["default"] = [ran.stdout, ran.limits.max_memory_mb]
seen["same"] = orchestrator.default_orchestrator() is orchestrator._default
seen["sandboxes_after_run"] = len(orchestrator._default.active_sandboxes())
explicit = SandboxOrchestrator(
    allow_native_execution=True, max_memory_mb=200, working_directory=sys.argv[1]
)
[mine] = agents.load(TEXT, orchestrator=explicit)
[ran] = mine.trigger("t")
seen["explicit"] = [ran.stdout, ran.limits.max_memory_mb]
explicit.close()
"""


def test_load_without_an_orchestrator_runs_through_the_default_one(tmp_path, workdir):
    """agents.load(text) then trigger, as the seed does: the default orchestrator is
    configured from $SYMBIONT_CONFIG (native on, a memory ceiling), made on first use,
    closed at exit; orchestrator= wins over it."""
    toml = tmp_path / "config.toml"
    toml.write_text(
        f'[native_execution]\nenabled = true\nworking_directory = "{workdir}"\n'
        "max_memory_mb = 300\n"
    )
    env = {**os.environ, "SYMBIONT_CONFIG": str(toml)}
    done = subprocess.run(
        [sys.executable, "-c", DEFAULT_RUN, str(workdir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["made_at_load"] is False  # made when the trigger needed it
    assert seen["default"] == ["ran\n", 300]  # the Permissive 2048 MB, lowered by config.toml
    assert seen["same"] is True
    assert seen["explicit"] == ["ran\n", 200]
    assert (seen["sandboxes_after_run"], seen["sandboxes_at_exit"]) == (1, 0)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({1, 2}, "must be JSON data"),
        ({"x": float("nan")}, "must be JSON data"),
        ({"big": "x" * 200_000}, "at most 100000 travel in $SYMBI_PAYLOAD"),
    ],
)
def test_payload_must_be_json_and_small(orch, payload, message):
    with pytest.raises(ConfigError) as info:
        one(SEED, orch).trigger("local_processing", payload=payload)
    assert message in str(info.value)


# -- the network ---------------------------------------------------------------------
@pytest.fixture
def listener():
    """A TCP port on the host's loopback that accepts connections."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


PROBE = (
    'run_code("python3", """\n  import json, os, socket\n'
    '  port = json.loads(os.environ["SYMBI_PAYLOAD"])["port"]\n'
    '  try:\n      socket.create_connection(("127.0.0.1", port), timeout=5).close()\n'
    '      print("connected")\n  except OSError:\n      print("blocked")\n  """)'
)


def probe(orch, project, port, caps=("network",), mode="Permissive", needs=False, limits=None):
    body = PROBE.replace('""")', '""", needs: ["network"])') if needs else PROBE
    [result] = one(agent_text(caps=caps, mode=mode, body=body), orch, project).trigger(
        "t", payload={"port": port}, limits=limits
    )
    return result


def test_network_only_with_the_capability_and_the_policy(orch, project, listener):
    without = probe(orch, project, listener, caps=())
    need(
        without.enforcement.get("network") == "empty network namespace",
        f"the network is not isolated at tier None here: {without.enforcement.get('network')}",
    )
    assert without.stdout == "blocked\n" and without.limits.network is False
    # The capability grants nothing the policy forbids: no network, and no error.
    assert probe(orch, project, listener).stdout == "blocked\n"
    # Asked for explicitly, the orchestrator refuses it as it refuses any request.
    with pytest.raises(PolicyViolation, match="allow_network = True"):
        probe(orch, project, listener, needs=True)
    orch.allow_network = True
    granted = probe(orch, project, listener)
    assert granted.stdout == "connected\n" and granted.limits.network is True
    assert probe(orch, project, listener, caps=()).stdout == "blocked\n"
    assert probe(orch, project, listener, mode="Strict").stdout == "blocked\n"


def test_network_flags_withdraw_the_network_and_never_grant_it(orch, project, listener):
    orch.allow_network = True
    withdrawn = probe(orch, project, listener, limits=ResourceLimits(network=False))
    need(
        withdrawn.enforcement.get("network") == "empty network namespace",
        f"the network is not isolated at tier None here: {withdrawn.enforcement.get('network')}",
    )
    assert withdrawn.stdout == "blocked\n" and withdrawn.limits.network is False
    # --network asks; it grants nothing the capability does not.
    ungranted = probe(orch, project, listener, caps=(), limits=ResourceLimits(network=True))
    assert ungranted.stdout == "blocked\n" and ungranted.limits.network is False
    kept = probe(orch, project, listener, limits=ResourceLimits(network=True))
    assert kept.stdout == "connected\n"


# -- the card ------------------------------------------------------------------------
def test_card_says_what_the_policy_permits(orch, project):
    text = SEED.replace(
        'execute_native("python3 process.py")',
        'execute_native("python3 process.py") emit("done", result.success)',
    )
    text += agent_text(
        name="Boxed", tier="docker", mode="Strict", caps=(), body='execute_native("id")'
    )
    orch.max_cpu_cores = 4
    worker, boxed = load(text, orchestrator=orch, directory=str(project))
    card = render_card_text(worker)
    assert card.splitlines()[:6] == [
        "agent NativeWorker",
        '  metadata      name: "Local Development Agent" · version: "1.0.0"',
        "  tier          None (Native - No Isolation)",
        "  sandbox       Permissive · 2048 MiB memory · 300 s CPU · 300 s wall · "
        "4 CPU cores · 256 processes · file size 100 MiB · disk 1024 MiB · "
        "output 10.0 MiB per stream",
        "  capabilities  local_filesystem, network",
        f"  directory     {project}",
    ]
    assert '    on "local_processing"' in card
    assert (
        '      ✓ execute_native("python3 process.py"): runs at None (Native - No Isolation)' in card
    )
    assert '      · emit("done", result.success)' in card
    assert "    ✓ tier None: native execution is allowed (no isolation)" in card
    assert (
        "    ✗ network: the policy forbids it (SandboxOrchestrator.allow_network = False)" in card
    )
    boxed_card = render_card_text(boxed)
    assert '✗ execute_native("id"): execute_native runs code natively' in boxed_card
    assert "✗ local_filesystem: no local_filesystem capability" in boxed_card
    assert "256 MiB memory" in boxed_card
    html = render_card_html(worker)
    assert html.startswith('<div class="symbi-agent" data-agent="NativeWorker"')
    assert "Local Development Agent" in html and "✗</span> <b>network</b>" in html


def test_card_escapes_html_and_hides_the_directory_when_stable(orch, project):
    agent = one(
        'agent X { metadata { note: "<script>alert(1)</script>" } security { tier: None } }',
        orch,
        project,
    )
    html = render_card_html(agent)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert str(project) in render_card_text(agent)
    display = ResultDisplay.instance()
    display.stable = True
    try:
        assert str(project) not in render_card_text(agent)
        assert str(project) not in render_card_html(agent)
    finally:
        display.stable = False


def test_a_directory_that_cannot_be_mounted_is_on_the_card(orch, tmp_path):
    text = agent_text(tier="docker", mode="Moderate")
    refused = one(text, orch, "/root").permissions().filesystem
    assert not refused.allowed
    assert refused.reason == (
        "the notebook directory cannot be mounted: volume "
        "'/root:/notebook:ro' reaches /root, which is refused"
    )
    missing = one(text, orch, tmp_path / "gone").permissions().filesystem
    assert not missing.allowed and missing.reason.endswith("does not exist")


def test_an_unbound_card_shows_the_default_orchestrators_policy(monkeypatch):
    card = render_card_text(one(SEED))
    assert "\n  policy (default orchestrator)\n    ✗ tier None: native execution" in card
    assert ">policy (default orchestrator)</th>" in render_card_html(one(SEED))
    forget_default_orchestrator()
    monkeypatch.setenv("SYMBIONT_ALLOW_NATIVE_EXECUTION", "true")  # configured as the magics'
    assert "\n    ✓ tier None: native execution is allowed" in render_card_text(one(SEED))


# -- container tiers -----------------------------------------------------------------
CONTAINER_TIERS = {"docker": SecurityTier.TIER1, "gvisor": SecurityTier.TIER2}


@pytest.fixture
def corch(audit_path):
    o = SandboxOrchestrator(audit_log_path=str(audit_path))
    yield o
    o.close()


@pytest.fixture(params=list(CONTAINER_TIERS))
def ctier(request, corch) -> str:
    availability = corch.sandbox(CONTAINER_TIERS[request.param]).availability()
    need(availability.ok, availability.reason, tier=request.param)
    return request.param


LOOK = (
    'execute("pwd; if [ -r process.py ]; then echo visible; fi; '
    'if echo x > written.txt; then echo wrote; fi")'
)


@pytest.mark.parametrize(
    ("mode", "caps", "expected", "on_host"),
    [
        pytest.param("Moderate", ("local_filesystem",), "/notebook\nvisible\n", False, id="ro"),
        pytest.param(
            "Permissive", ("local_filesystem",), "/notebook\nvisible\nwrote\n", True, id="rw"
        ),
        # Without the mount, the command starts in the run's own tmpfs.
        pytest.param("Permissive", (), "/workspace\nwrote\n", False, id="no-capability"),
        pytest.param("Strict", ("local_filesystem",), "/workspace\nwrote\n", False, id="strict"),
    ],
)
def test_container_mounts_follow_the_mode(corch, ctier, project, mode, caps, expected, on_host):
    agent = one(agent_text(tier=ctier, mode=mode, caps=caps, body=LOOK), corch, project)
    [result] = agent.trigger("t")
    assert result.success and result.stdout == expected, result.stderr
    assert (project / "written.txt").exists() == on_host
    if mode == "Moderate":
        assert "Read-only file system" in result.stderr
    # The mount was for that run only, in a container of its own.
    sandbox = corch.sandbox(CONTAINER_TIERS[ctier])
    assert sandbox.volumes == [] and sandbox.pool_size == 1
    assert result.startup_seconds > 0  # not a pooled container


def test_container_hostile_payload(corch, ctier, project):
    body = 'run_code("python3", "import os, sys; sys.stdout.write(os.environ[\'SYMBI_PAYLOAD\'])")'
    [result] = one(agent_text(tier=ctier, caps=(), body=body), corch, project).trigger(
        "t", payload=HOSTILE
    )
    assert result.success and json.loads(result.stdout) == HOSTILE


def test_container_network_needs_capability_and_policy(corch, project):
    availability = corch.sandbox(SecurityTier.TIER1).availability()
    need(availability.ok, availability.reason, tier="docker")
    body = 'run_code("python3", "import os; print(sorted(os.listdir(\'/sys/class/net\')))")'
    with_cap = one(agent_text(tier="docker", caps=("network",), body=body), corch, project)
    without = one(agent_text(tier="docker", caps=(), body=body), corch, project)
    assert with_cap.trigger("t")[0].stdout == "['lo']\n"  # the policy forbids it
    corch.allow_network = True
    granted = with_cap.trigger("t")[0]
    assert granted.limits.network is True and "eth0" in granted.stdout
    assert without.trigger("t")[0].stdout == "['lo']\n"


# -- the magics ----------------------------------------------------------------------
@pytest.fixture
def ip(ip, project: Path):
    """The shared shell, with agents' notebook directory in this test's project."""
    ip.run_line_magic("config", f"AgentMagics.notebook_directory = '{project}'")
    return ip


run = run_cell


def test_magics_define_and_trigger(ip, project, workdir):
    ip.run_line_magic("config", "SandboxOrchestrator.allow_native_execution = True")
    seed_script(workdir)
    cell = "%%symbi_agent -o defined\n" + SEED.replace(
        'execute_native("python3 process.py")',
        'execute_native("python3 process.py") emit("items", payload.items)',
    )
    cell += agent_text(name="Other", tier="docker", caps=())
    result, cap = run(ip, cell)
    assert result.success
    assert [a.name for a in ip.user_ns["defined"]] == ["NativeWorker", "Other"]
    cards = [o.data for o in cap.outputs]
    assert len(cards) == 2 and cards[0]["text/plain"].startswith("agent NativeWorker")
    assert 'data-agent="Other"' in cards[1]["text/html"]

    result, cap = run(
        ip,
        "%symbi_trigger NativeWorker local_processing -o out "
        '--payload \'{"items": ["a b", "$(id)"]}\'',
    )
    assert result.success
    assert cap.stdout.startswith("processed 2 items\n")
    stats, emitted = (o.data["text/plain"] for o in cap.outputs)
    assert stats.startswith("[symbi] None (native) · exit 0")
    assert emitted == '[emit] NativeWorker.local_processing items = ["a b", "$(id)"]'
    assert json.loads((project / "processed.json").read_text())["payload"] == {
        "items": ["a b", "$(id)"]
    }
    assert isinstance(ip.user_ns["out"][0], ExecutionResult)


def test_mode_limits_are_set_with_config_in_ipython(ip):
    ip.run_line_magic("config", "SandboxOrchestrator.allow_native_execution = True")
    ip.run_line_magic("config", 'SandboxModeLimits.permissive = {"max_memory_mb": 77}')
    result, _ = run(ip, "%%symbi_agent -o defined\n" + agent_text(body='execute("true")'))
    assert result.success
    [ran] = ip.user_ns["defined"][0].trigger("t")
    assert ran.limits.max_memory_mb == 77


def test_agent_magics_share_the_symbi_orchestrator(ip):
    symbi = ip.magics_manager.registry["SymbiMagics"]
    agents = ip.magics_manager.registry["AgentMagics"]
    assert agents.orchestrator is symbi.orchestrator
    # agents.load(text) in the notebook too: %config reaches them
    ip.run_line_magic("config", "SandboxOrchestrator.allow_native_execution = True")
    [ran] = one(agent_text(body='run_code("python3", "print(7)")')).trigger("t")
    assert ran.stdout == "7\n" and ran.tier is SecurityTier.NONE
    assert agents in ip.configurables
    ip.run_line_magic("config", "AgentMagics.show_cards = False")
    result, cap = run(ip, "%%symbi_agent\n" + SEED)
    assert result.success and not cap.outputs


@pytest.mark.parametrize(
    ("cell", "error", "first_line"),
    [
        (
            "%%symbi_agent\nagent X {\n  security { tier None }\n}",
            ConfigError,
            "ConfigError: line 2, column 19: unexpected 'None'; expected ':'",
        ),
        (
            "%%symbi_agent\n" + agent_text(tier="tier9"),
            ConfigError,
            "ConfigError: line 2, column 20: unknown security tier 'tier9'",
        ),
        (
            "%symbi_trigger Nobody go",
            ConfigError,
            "ConfigError: no agent named 'Nobody'; defined with %%symbi_agent: none yet",
        ),
    ],
)
def test_bad_input_shows_no_traceback(ip, cell, error, first_line):
    result, cap = run(ip, cell)
    assert isinstance(result.error_in_exec, error)
    assert "Traceback" not in cap.stdout + cap.stderr
    shown = re.sub(r"\x1b\[[0-9;]*m", "", cap.stdout)
    assert shown.splitlines()[0].startswith(first_line)


def test_trigger_errors(ip):
    ip.run_line_magic("config", "SandboxOrchestrator.allow_native_execution = True")
    run(ip, "%%symbi_agent --quiet\n" + SEED)
    result, cap = run(ip, "%symbi_trigger NativeWorker local_processing --payload '{oops'")
    assert isinstance(result.error_in_exec, ConfigError) and "--payload is not JSON" in cap.stdout
    result, _ = run(ip, "%symbi_trigger NativeWorker")
    assert type(result.error_in_exec).__name__ == "UsageError"
    result, _ = run(ip, "%symbi_trigger NativeWorker local_processing --payload '{")
    assert type(result.error_in_exec).__name__ == "UsageError"
    run(
        ip,
        "%%symbi_agent --quiet\n"
        + agent_text(name="Docked", tier="docker", body='execute_native("id")'),
    )
    result, cap = run(ip, "%symbi_trigger Docked t")
    assert isinstance(result.error_in_exec, PolicyViolation) and "Traceback" not in cap.stdout
    # --no-raise-error: the refusal is the cell's stderr, and the cell succeeds
    result, cap = run(ip, "%symbi_trigger Docked t --no-raise-error")
    assert result.success and "PolicyViolation" in cap.stderr and cap.stdout == ""


# A Permissive agent (2048 MB) whose action takes 300 MB.
EATER = agent_text(
    name="NativeWorker",
    trigger="local_processing",
    body='run_code("python3", """\n  hoard = bytearray(300 * 1024 * 1024)\n  print("ate")\n  """)',
)


def test_trigger_limit_flags_lower_the_modes_limits(ip):
    ip.run_line_magic("config", "SandboxOrchestrator.allow_native_execution = True")
    run(ip, "%%symbi_agent --quiet\n" + EATER)
    result, cap = run(ip, "%symbi_trigger NativeWorker local_processing -o out")
    assert result.success and cap.stdout == "ate\n"
    result, cap = run(
        ip, "%symbi_trigger NativeWorker local_processing --max-memory 100 --timeout 20 -o out"
    )
    assert result.success, result.error_in_exec
    [ran] = ip.user_ns["out"]
    assert ran.killed_by == "memory" and "ate" not in cap.stdout
    assert (ran.limits.max_memory_mb, ran.limits.timeout_seconds) == (100, 20)
    assert "stopped: memory limit (100 MiB)" in cap.outputs[0].data["text/plain"]


def test_trigger_limit_flags_never_raise_the_modes_limits(ip, audit_path):
    ip.run_line_magic("config", "SandboxOrchestrator.allow_native_execution = True")
    ip.run_line_magic("config", "SandboxOrchestrator.max_memory_mb = 512")
    run(ip, "%%symbi_agent --quiet\n" + agent_text(mode="Strict", body='execute("true")'))
    result, _ = run(ip, "%symbi_trigger A t --max-memory 400 --timeout 300 --max-cpu 2 -o out")
    assert result.success, result.error_in_exec
    [ran] = ip.user_ns["out"]
    # Strict's 256 MB, 30 s and one core hold: the flags only lower them.
    assert (ran.limits.max_memory_mb, ran.limits.timeout_seconds, ran.limits.max_cpu_cores) == (
        256,
        30,
        1,
    )
    # Above the operator's ceiling, the orchestrator refuses before anything runs.
    result, cap = run(ip, "%symbi_trigger A t --max-memory 4096")
    assert isinstance(result.error_in_exec, PolicyViolation)
    assert "Traceback" not in cap.stdout + cap.stderr
    assert "max_memory_mb=4096 MB exceeds the policy ceiling of 512 MB" in cap.stdout
    refused = audit(audit_path)[-1]
    assert (refused["outcome"], refused["agent"], refused["trigger"]) == ("refused", "A", "t")
    assert len(audit(audit_path)) == 2  # the run before, and this refusal


def test_help_lists_the_flags(ip):
    assert "--payload" in ip.find_line_magic("symbi_trigger").__doc__
    assert "--max-memory MB" in ip.find_line_magic("symbi_trigger").__doc__
    assert "--quiet" in ip.find_cell_magic("symbi_agent").__doc__


def test_the_grammar_ships_in_the_package():
    import symbi_jupyter.agents.parser as parser

    assert parser.GRAMMAR.name == "agent.lark" and parser.GRAMMAR.is_file()
    assert os.path.dirname(parser.GRAMMAR) == os.path.dirname(parser.__file__)

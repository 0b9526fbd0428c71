"""Every configuration source reaching the real SandboxOrchestrator, and their order."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from traitlets.config import Config

from symbi_jupyter import ConfigError, PolicyViolation, SecurityTier
from symbi_jupyter.config import load_symbiont_config
from symbi_jupyter.orchestrator import SandboxOrchestrator

DATA = Path(__file__).parent / "data"


def test_seed_example_loads_unchanged(monkeypatch):
    monkeypatch.setenv("SYMBIONT_CONFIG", str(DATA / "symbiont-config.toml"))
    orch = SandboxOrchestrator()
    assert orch.allow_native_execution is True
    assert orch.default_sandbox_tier == "Tier1"
    assert orch.max_memory_mb == 2048  # [native_execution] wins over [security.native_...]
    assert orch.max_cpu_cores == 4.0  # only [security.native_execution] sets it
    assert orch.working_directory == "/tmp/symbiont-native"
    assert orch.default_language == "python3"
    assert orch.allowed_executables == ["python3", "python", "bash", "sh", "node"]
    assert orch.max_cpu_seconds == 300 and orch.max_execution_time_seconds == 300


def test_load_symbiont_config_feeds_the_constructor():
    orch = SandboxOrchestrator(config=load_symbiont_config(DATA / "symbiont-config.toml"))
    assert orch.allow_native_execution and orch.max_cpu_cores == 4.0


def test_environment_switches_native_on(monkeypatch, workdir, audit_path):
    monkeypatch.setenv("SYMBIONT_ALLOW_NATIVE_EXECUTION", "true")
    monkeypatch.setenv("SYMBIONT_NATIVE_WORKING_DIR", str(workdir))
    monkeypatch.setenv("SYMBIONT_NATIVE_MAX_MEMORY_MB", "300")
    monkeypatch.setenv("SYMBIONT_DEFAULT_SANDBOX_TIER", "native")
    orch = SandboxOrchestrator(audit_log_path=str(audit_path))
    try:
        res = orch.execute_code(None, "print('via env')")
        assert res.stdout == "via env\n" and res.tier is SecurityTier.NONE
        assert res.limits.max_memory_mb == 300
    finally:
        orch.close()


@pytest.mark.parametrize("passthrough", [True, False])
def test_env_passthrough_from_config_toml(tmp_path, monkeypatch, workdir, audit_path, passthrough):
    """A host variable reaches native code only when config.toml names it."""
    monkeypatch.setenv("SYMBI_TEST_HOST_VALUE", "from the host")
    toml = tmp_path / "config.toml"
    toml.write_text(
        f'[native_execution]\nenabled = true\nworking_directory = "{workdir}"\n'
        + ('env_passthrough = ["SYMBI_TEST_HOST_VALUE"]\n' if passthrough else "")
    )
    monkeypatch.setenv("SYMBIONT_CONFIG", str(toml))
    orch = SandboxOrchestrator(audit_log_path=str(audit_path))
    try:
        res = orch.execute_code(
            "none", "import os; print(os.environ.get('SYMBI_TEST_HOST_VALUE', 'absent'))"
        )
    finally:
        orch.close()
    assert res.stdout == ("from the host\n" if passthrough else "absent\n")


def test_bad_environment_value_is_config_error(monkeypatch):
    monkeypatch.setenv("SYMBIONT_NATIVE_MAX_MEMORY_MB", "lots")
    with pytest.raises(ConfigError, match="SYMBIONT_NATIVE_MAX_MEMORY_MB"):
        SandboxOrchestrator()


def test_bad_tier_in_config_is_config_error():
    c = Config()
    c.SandboxOrchestrator.default_sandbox_tier = "tier7"
    with pytest.raises(ConfigError, match="accepted"):
        SandboxOrchestrator(config=c)


def test_native_stays_off_without_configuration(workdir, audit_path):
    orch = SandboxOrchestrator(working_directory=str(workdir), audit_log_path=str(audit_path))
    with pytest.raises(PolicyViolation):
        orch.execute_code("none", "print(1)")


def write_layers(tmp_path: Path, monkeypatch, layers: set[str]) -> Config:
    """Set max_memory_mb in each chosen layer to a value that names the layer."""
    if "toml" in layers:
        toml = tmp_path / "config.toml"
        toml.write_text("[native_execution]\nmax_memory_mb = 1001\n")
        monkeypatch.setenv("SYMBIONT_CONFIG", str(toml))
    if "jupyter" in layers:
        jdir = tmp_path / "jupyter"
        jdir.mkdir(exist_ok=True)
        (jdir / "jupyter_symbi_config.py").write_text(
            "c.SandboxOrchestrator.max_memory_mb = 1002\n"
        )
        monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(jdir))
    base = Config()
    if "base" in layers:
        base.SandboxOrchestrator.max_memory_mb = 1003
    if "env" in layers:
        monkeypatch.setenv("SYMBIONT_NATIVE_MAX_MEMORY_MB", "1004")
    return base


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        (set(), 2048),
        ({"toml"}, 1001),
        ({"toml", "jupyter"}, 1002),
        ({"toml", "jupyter", "base"}, 1003),
        ({"toml", "jupyter", "base", "env"}, 1004),
        ({"toml", "env"}, 1004),
        ({"jupyter", "toml"}, 1002),
        ({"base", "toml"}, 1003),
    ],
)
def test_precedence(tmp_path, monkeypatch, layers, expected):
    base = write_layers(tmp_path, monkeypatch, layers)
    assert SandboxOrchestrator(config=base).max_memory_mb == expected
    # Constructor keywords beat every file and variable.
    assert SandboxOrchestrator(config=base, max_memory_mb=1005).max_memory_mb == 1005


def test_ipython_config_py_and_percent_config(tmp_path, monkeypatch):
    """A real ipython process with a profile's ipython_config.py; %config beats it."""
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "ipython_config.py").write_text(
        "c.SandboxOrchestrator.max_memory_mb = 1111\n"
        "c.SandboxOrchestrator.allowed_executables = ['python3']\n"
        "c.InteractiveShellApp.extensions = ['symbi_jupyter']\n"
    )
    write_layers(tmp_path, monkeypatch, {"toml"})
    script = tmp_path / "probe.ipy"
    script.write_text(
        "m = get_ipython().magics_manager.registry['SymbiMagics']\n"
        "print('before', m.orchestrator.max_memory_mb, m.orchestrator.allowed_executables)\n"
        "%config SandboxOrchestrator.max_memory_mb = 512\n"
        "print('after', m.orchestrator.max_memory_mb)\n"
    )
    ipython = Path(sys.executable).with_name("ipython")
    out = subprocess.run(
        [str(ipython), f"--profile-dir={profile}", "--no-banner", "--colors=NoColor", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "before 1111.0 ['python3']" in out
    assert "after 512.0" in out


@pytest.mark.parametrize(
    ("trait", "value", "message"),
    [
        ("worker_max_message_mb", 0.5, "from 1 to 256, not 0.5"),
        ("worker_max_message_mb", 1024, "from 1 to 256, not 1024"),
        ("worker_max_depth", 4, "from 8 to 512, not 4"),
        ("worker_max_depth", 100_000, "from 8 to 512, not 100000"),
    ],
)
def test_worker_protocol_bounds_stay_within_reason(trait, value, message):
    with pytest.raises(ConfigError, match=message):
        SandboxOrchestrator(config=Config({"SandboxOrchestrator": {trait: value}}))


def test_a_session_reads_with_the_configured_bounds(workdir, audit_path):
    """A message nested past worker_max_depth ends the worker, with the bound named."""
    config = Config({"SandboxOrchestrator": {"worker_max_depth": 8}})
    orch = SandboxOrchestrator(
        config=config,
        allow_native_execution=True,
        working_directory=str(workdir),
        audit_log_path=str(audit_path),
    )
    try:
        session = orch.open_session(SecurityTier.NONE)
        nested = "display({'application/json': [[[[[[[[[[1]]]]]]]]]]}, raw=True)"
        outcome = session.execute(nested, lambda message: None)
        assert outcome.session_lost and "nested more than 8 deep" in outcome.session_lost
        assert outcome.result.killed_by == "protocol"
        session.close()
    finally:
        orch.close()


# -- [native_execution] default_executable as a path (the seed's troubleshooting) -----
def _native_toml(tmp_path: Path, workdir: Path, default_executable: str, allowed: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        "[native_execution]\nenabled = true\n"
        f'working_directory = "{workdir}"\n'
        f'default_executable = "{default_executable}"\n'
        f"allowed_executables = {allowed}\n"
    )
    return path


def test_default_executable_may_be_the_path_of_an_allowed_interpreter(
    tmp_path, workdir, audit_path
):
    need_file = Path("/usr/bin/python3")
    if not need_file.exists():
        pytest.skip("no /usr/bin/python3 on this host")
    cfg = load_symbiont_config(_native_toml(tmp_path, workdir, str(need_file), '["python3"]'))
    orch = SandboxOrchestrator(config=cfg, audit_log_path=str(audit_path))
    try:
        assert (orch.default_language, orch.default_executable) == ("python3", str(need_file))
        # A request naming no language runs that interpreter at tier None, not the
        # python3 first on PATH (this virtualenv's).
        res = orch.execute_code("none", "import sys; print(sys.executable)")
        assert res.success, res.stderr
        assert res.stdout == f"{need_file}\n"
        assert sys.executable != str(need_file)
    finally:
        orch.close()


@pytest.mark.parametrize(
    ("default_executable", "allowed", "says"),
    [
        # bash is an interpreter, but not on this file's allowlist
        ("/usr/bin/bash", '["python3"]', "not on the allowlist"),
        ("/nonexistent/python3", '["python3"]', "does not exist"),
        ("/usr/bin/perl", '["python3", "perl"]', "a language (python3, python, bash, sh, node)"),
    ],
)
def test_default_executable_refused_names_file_key_and_what_is_accepted(
    tmp_path, workdir, default_executable, allowed, says
):
    path = _native_toml(tmp_path, workdir, default_executable, allowed)
    with pytest.raises(ConfigError) as info:
        load_symbiont_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: [native_execution] default_executable = ")
    assert repr(default_executable) in message and says in message
    assert "allowed_executables" in message


def test_default_executable_trait_must_agree_with_the_default_language(workdir, audit_path):
    with pytest.raises(ConfigError, match=r"SandboxOrchestrator\.default_executable"):
        SandboxOrchestrator(default_executable="relative/python3")
    orch = SandboxOrchestrator(
        allow_native_execution=True,
        working_directory=str(workdir),
        audit_log_path=str(audit_path),
        default_executable="/usr/bin/bash",
    )
    try:
        with pytest.raises(ConfigError, match="a bash interpreter, but default_language"):
            orch.execute_code("none", "print(1)")
    finally:
        orch.close()

"""Symbiont config.toml, SYMBIONT_* variables and the layered load_config()."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from traitlets import Bool, Float, Int, List, Unicode
from traitlets.config import Config, Configurable

from symbi_jupyter.config import (
    ENV_CONFIG_FILE,
    ENV_VARIABLES,
    config_from_environ,
    load_config,
    load_symbiont_config,
)
from symbi_jupyter.errors import ConfigError
from symbi_jupyter.tiers import SecurityTier

DATA = Path(__file__).parent / "data" / "symbiont-config.toml"


class SandboxOrchestrator(Configurable):
    """Stand-in with the real trait names and types, to check the Config applies."""

    allow_native_execution = Bool(False).tag(config=True)
    default_sandbox_tier = Unicode("Tier1").tag(config=True)
    max_memory_mb = Float(512.0).tag(config=True)
    max_cpu_seconds = Float(60.0).tag(config=True)
    max_cpu_cores = Float(1.0).tag(config=True)
    max_execution_time_seconds = Float(60.0).tag(config=True)
    max_processes = Int(64).tag(config=True)
    working_directory = Unicode("/tmp/symbi").tag(config=True)
    allowed_executables = List(Unicode()).tag(config=True)
    enforce_resource_limits = Bool(True).tag(config=True)
    default_language = Unicode("python3").tag(config=True)


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- config.toml -------------------------------------------------------------------


def test_complete_example_lands_on_the_right_traits():
    cfg = load_symbiont_config(DATA)

    assert set(cfg) == {"SandboxOrchestrator", "MicroVMSandbox"}
    assert dict(cfg.SandboxOrchestrator) == {
        # [native_execution] enabled agrees with [security] allow_native_execution
        "allow_native_execution": True,
        "default_sandbox_tier": "Tier1",
        # only in [security.native_execution]
        "max_cpu_cores": 4.0,
        # in both tables: [native_execution] wins
        "enforce_resource_limits": True,
        "max_memory_mb": 2048.0,
        "max_execution_time_seconds": 300.0,
        "working_directory": "/tmp/symbiont-native",
        "allowed_executables": ["python3", "python", "bash", "sh", "node"],
        # only in [native_execution]
        "max_cpu_seconds": 300.0,
        "default_language": "python3",
    }
    assert dict(cfg.MicroVMSandbox) == {
        "kernel_image_path": "/var/lib/symbiont/firecracker/vmlinux",
        "rootfs_path": "/var/lib/symbiont/firecracker/rootfs.ext4",
        "vcpus": 1,
        "mem_mib": 512,
        "rootfs_read_only": True,
        "firecracker_binary": "/usr/local/bin/firecracker",
    }


def test_complete_example_configures_a_configurable():
    orch = SandboxOrchestrator(config=load_symbiont_config(DATA))
    assert orch.allow_native_execution is True
    assert orch.max_memory_mb == 2048.0
    assert orch.allowed_executables == ["python3", "python", "bash", "sh", "node"]
    assert orch.default_language == "python3"
    assert orch.max_processes == 64  # not in the file: trait default


def test_accepts_a_pathlike_and_a_str(tmp_path):
    path = write(tmp_path, "[security]\nallow_native_execution = true\n")
    assert load_symbiont_config(path) == load_symbiont_config(str(path))


SINGLE_KEYS = [
    # (table, key, TOML value, section, trait, expected)
    ("security", "allow_native_execution", "true", "SandboxOrchestrator",
     "allow_native_execution", True),
    ("security", "default_sandbox_tier", '"None"', "SandboxOrchestrator",
     "default_sandbox_tier", "None"),
    ("security.native_execution", "enforce_resource_limits", "false", "SandboxOrchestrator",
     "enforce_resource_limits", False),
    ("security.native_execution", "max_memory_mb", "2048", "SandboxOrchestrator",
     "max_memory_mb", 2048.0),
    ("security.native_execution", "max_cpu_cores", "4.0", "SandboxOrchestrator",
     "max_cpu_cores", 4.0),
    ("security.native_execution", "max_execution_time_seconds", "300", "SandboxOrchestrator",
     "max_execution_time_seconds", 300.0),
    ("security.native_execution", "working_directory", '"/srv/native"', "SandboxOrchestrator",
     "working_directory", "/srv/native"),
    ("security.native_execution", "allowed_executables", '["python3", "node"]',
     "SandboxOrchestrator", "allowed_executables", ["python3", "node"]),
    ("security.native_execution", "env_passthrough", '["HTTPS_PROXY"]',
     "SandboxOrchestrator", "env_passthrough", ["HTTPS_PROXY"]),
    ("native_execution", "enabled", "true", "SandboxOrchestrator",
     "allow_native_execution", True),
    ("native_execution", "default_executable", '"bash"', "SandboxOrchestrator",
     "default_language", "bash"),
    ("native_execution", "working_directory", '"/tmp/symbiont-native"', "SandboxOrchestrator",
     "working_directory", "/tmp/symbiont-native"),
    ("native_execution", "enforce_resource_limits", "true", "SandboxOrchestrator",
     "enforce_resource_limits", True),
    ("native_execution", "max_memory_mb", "512.5", "SandboxOrchestrator",
     "max_memory_mb", 512.5),
    ("native_execution", "max_cpu_seconds", "30", "SandboxOrchestrator",
     "max_cpu_seconds", 30.0),
    ("native_execution", "max_execution_time_seconds", "45", "SandboxOrchestrator",
     "max_execution_time_seconds", 45.0),
    ("native_execution", "allowed_executables", '["python3"]', "SandboxOrchestrator",
     "allowed_executables", ["python3"]),
    ("native_execution", "env_passthrough", '["DATA_DIR", "API_URL"]', "SandboxOrchestrator",
     "env_passthrough", ["DATA_DIR", "API_URL"]),
    ("sandbox.firecracker", "kernel_image_path", '"/k/vmlinux"', "MicroVMSandbox",
     "kernel_image_path", "/k/vmlinux"),
    ("sandbox.firecracker", "rootfs_path", '"/k/rootfs.ext4"', "MicroVMSandbox",
     "rootfs_path", "/k/rootfs.ext4"),
    ("sandbox.firecracker", "vcpus", "2", "MicroVMSandbox", "vcpus", 2),
    ("sandbox.firecracker", "mem_mib", "64", "MicroVMSandbox", "mem_mib", 64),
    ("sandbox.firecracker", "rootfs_read_only", "false", "MicroVMSandbox",
     "rootfs_read_only", False),
    ("sandbox.firecracker", "firecracker_binary", '"/opt/fc/firecracker"', "MicroVMSandbox",
     "firecracker_binary", "/opt/fc/firecracker"),
]  # fmt: skip


@pytest.mark.parametrize(
    "table, key, value, section, trait, expected",
    SINGLE_KEYS,
    ids=[f"{t}.{k}" for t, k, *_ in SINGLE_KEYS],
)
def test_each_key_alone(tmp_path, table, key, value, section, trait, expected):
    cfg = load_symbiont_config(write(tmp_path, f"[{table}]\n{key} = {value}\n"))
    assert cfg == Config({section: {trait: expected}})
    assert type(cfg[section][trait]) is type(expected)


@pytest.mark.parametrize("name", [*SecurityTier.accepted_names(), "None", "TIER3", " Docker "])
def test_every_tier_name_is_stored_canonically(tmp_path, name):
    cfg = load_symbiont_config(write(tmp_path, f'[security]\ndefault_sandbox_tier = "{name}"\n'))
    assert cfg.SandboxOrchestrator.default_sandbox_tier == SecurityTier.parse(name).value


def test_native_execution_wins_whatever_the_order_in_the_file(tmp_path):
    path = write(
        tmp_path,
        "[native_execution]\nmax_memory_mb = 300\nworking_directory = '/new'\n"
        "[security.native_execution]\nmax_memory_mb = 100\nworking_directory = '/old'\n"
        "max_cpu_cores = 2\n",
    )
    orch = load_symbiont_config(path).SandboxOrchestrator
    assert (orch.max_memory_mb, orch.working_directory, orch.max_cpu_cores) == (300.0, "/new", 2.0)


def test_native_gate_must_agree(tmp_path):
    path = write(
        tmp_path, "[security]\nallow_native_execution = false\n[native_execution]\nenabled = true\n"
    )
    with pytest.raises(ConfigError) as info:
        load_symbiont_config(path)
    message = str(info.value)
    assert "[native_execution] enabled" in message
    assert "[security] allow_native_execution" in message

    agree = write(
        tmp_path,
        "[security]\nallow_native_execution = false\n[native_execution]\nenabled = false\n",
        name="agree.toml",
    )
    assert load_symbiont_config(agree).SandboxOrchestrator.allow_native_execution is False


def test_other_sections_and_symbiont_security_keys_are_ignored(tmp_path):
    path = write(
        tmp_path,
        'version = 2\n[api]\nport = 8080\n[database]\nvector_backend = "lancedb"\n'
        '[logging]\nlevel = "info"\n[storage]\ncontext_path = "./data"\n'
        "[telemetry.otlp]\nendpoint = 'x'\n[sandbox.docker]\nimage = 'python:3.12-slim'\n"
        "[security]\nenable_backups = true\nkey_provider = { Environment = { var_name = 'K' } }\n",
    )
    assert load_symbiont_config(path) == Config()


BAD_VALUES = [
    ("security", "allow_native_execution", '"yes"', "true or false"),
    ("security", "allow_native_execution", "1", "true or false"),
    ("security", "default_sandbox_tier", '"Tier9"', "tier1"),
    ("security", "default_sandbox_tier", "1", "tier1"),
    ("security.native_execution", "max_memory_mb", '"2048"', "positive number"),
    ("security.native_execution", "max_memory_mb", "-1", "positive number"),
    ("security.native_execution", "max_cpu_cores", "0", "positive number"),
    ("security.native_execution", "max_cpu_cores", "true", "positive number"),
    ("security.native_execution", "max_execution_time_seconds", "inf", "positive number"),
    ("security.native_execution", "working_directory", '"relative/dir"', "absolute path"),
    ("security.native_execution", "allowed_executables", '"python3"', "list of non-empty"),
    ("security.native_execution", "enforce_resource_limits", '"true"', "true or false"),
    ("native_execution", "enabled", '"true"', "true or false"),
    ("native_execution", "max_memory_mb", '"lots"', "positive number"),
    ("native_execution", "max_cpu_seconds", "-300", "positive number"),
    ("native_execution", "max_execution_time_seconds", "nan", "positive number"),
    ("native_execution", "default_executable", '""', "a language (python3"),
    ("native_execution", "default_executable", '"ruby"', "absolute path of its interpreter"),
    ("native_execution", "allowed_executables", "[1, 2]", "list of non-empty"),
    ("native_execution", "allowed_executables", '["python3", ""]', "list of non-empty"),
    ("native_execution", "working_directory", "7", "absolute path"),
    ("native_execution", "env_passthrough", '"HOME"', "environment variable names"),
    ("native_execution", "env_passthrough", '["A=B"]', "without '='"),
    ("security.native_execution", "env_passthrough", '["OK", ""]', "non-empty"),
    ("sandbox.firecracker", "vcpus", "1.5", "positive integer"),
    ("sandbox.firecracker", "vcpus", "0", "positive integer"),
    ("sandbox.firecracker", "mem_mib", "32", "at least 64"),
    ("sandbox.firecracker", "rootfs_read_only", '"no"', "true or false"),
    ("sandbox.firecracker", "kernel_image_path", "[]", "non-empty string"),
]


@pytest.mark.parametrize(
    "table, key, value, accepted",
    BAD_VALUES,
    ids=[f"{t}.{k}={v}" for t, k, v, _ in BAD_VALUES],
)
def test_bad_values_name_file_key_and_what_is_accepted(tmp_path, table, key, value, accepted):
    path = write(tmp_path, f"[{table}]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_symbiont_config(path)
    message = str(info.value)
    assert str(path) in message
    assert f"[{table}] {key}" in message
    assert accepted in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "table, accepted_key",
    [
        ("security", "default_sandbox_tier"),
        ("security.native_execution", "max_cpu_cores"),
        ("native_execution", "default_executable"),
        ("sandbox.firecracker", "mem_mib"),
    ],
)
def test_unknown_key_in_a_read_section(tmp_path, table, accepted_key):
    path = write(tmp_path, f"[{table}]\nmax_memroy_mb = 1\n")
    with pytest.raises(ConfigError) as info:
        load_symbiont_config(path)
    message = str(info.value)
    assert str(path) in message
    assert f"[{table}] unknown key 'max_memroy_mb'" in message
    assert accepted_key in message


def test_a_read_section_that_is_not_a_table(tmp_path):
    path = write(tmp_path, "[security]\nnative_execution = 3\n")
    with pytest.raises(ConfigError, match=r"\[security\.native_execution\] must be a table"):
        load_symbiont_config(path)


def test_invalid_toml(tmp_path):
    path = write(tmp_path, "[native_execution\nenabled = true\n")
    with pytest.raises(ConfigError) as info:
        load_symbiont_config(path)
    assert str(path) in str(info.value)
    assert "invalid TOML" in str(info.value)
    assert "line 1" in str(info.value)


def test_not_utf8(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(b'[api]\nhost = "\xff"\n')
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_symbiont_config(path)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_symbiont_config(path)
    assert str(path) in str(info.value)
    assert "no such file" in str(info.value)


def test_a_directory_is_not_a_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_symbiont_config(tmp_path)


# --- SYMBIONT_* variables ----------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        *[(w, True) for w in ("true", "TRUE", "True", "1", "yes", "YES", "on", "On", " true ")],
        *[(w, False) for w in ("false", "FALSE", "0", "no", "No", "off", "OFF")],
    ],
)
def test_env_allow_native_execution(raw, expected):
    cfg = config_from_environ({"SYMBIONT_ALLOW_NATIVE_EXECUTION": raw})
    assert cfg == Config({"SandboxOrchestrator": {"allow_native_execution": expected}})


@pytest.mark.parametrize(
    "name, raw, trait, expected",
    [
        ("SYMBIONT_DEFAULT_SANDBOX_TIER", "None", "default_sandbox_tier", "None"),
        ("SYMBIONT_DEFAULT_SANDBOX_TIER", "gvisor", "default_sandbox_tier", "Tier2"),
        ("SYMBIONT_DEFAULT_SANDBOX_TIER", "MICROVM", "default_sandbox_tier", "Tier3"),
        ("SYMBIONT_NATIVE_MAX_MEMORY_MB", "2048", "max_memory_mb", 2048.0),
        ("SYMBIONT_NATIVE_MAX_MEMORY_MB", "256.5", "max_memory_mb", 256.5),
        ("SYMBIONT_NATIVE_MAX_CPU_CORES", "4.0", "max_cpu_cores", 4.0),
        ("SYMBIONT_NATIVE_MAX_CPU_CORES", "0.5", "max_cpu_cores", 0.5),
        ("SYMBIONT_NATIVE_WORKING_DIR", "/tmp/symbiont-native", "working_directory",
         "/tmp/symbiont-native"),
    ],
)  # fmt: skip
def test_env_values(name, raw, trait, expected):
    cfg = config_from_environ({name: raw})
    assert cfg == Config({"SandboxOrchestrator": {trait: expected}})


@pytest.mark.parametrize(
    "name, raw",
    [
        ("SYMBIONT_ALLOW_NATIVE_EXECUTION", "maybe"),
        ("SYMBIONT_ALLOW_NATIVE_EXECUTION", "2"),
        ("SYMBIONT_DEFAULT_SANDBOX_TIER", "Tier4"),
        ("SYMBIONT_NATIVE_MAX_MEMORY_MB", "2GB"),
        ("SYMBIONT_NATIVE_MAX_MEMORY_MB", "-5"),
        ("SYMBIONT_NATIVE_MAX_MEMORY_MB", "nan"),
        ("SYMBIONT_NATIVE_MAX_CPU_CORES", "0"),
        ("SYMBIONT_NATIVE_MAX_CPU_CORES", "inf"),
        ("SYMBIONT_NATIVE_WORKING_DIR", "relative/dir"),
    ],
)
def test_env_bad_values_name_the_variable(name, raw):
    with pytest.raises(ConfigError) as info:
        config_from_environ({name: raw})
    assert name in str(info.value)
    assert repr(raw) in str(info.value)


def test_env_tier_error_lists_the_accepted_names():
    with pytest.raises(ConfigError, match="firecracker"):
        config_from_environ({"SYMBIONT_DEFAULT_SANDBOX_TIER": "vm"})


def test_env_empty_is_unset_and_others_are_not_read():
    environ = {name: "" for name in ENV_VARIABLES}
    environ |= {"SYMBIONT_ENV": "production", "SYMBIONT_ALLOW_UNISOLATED": "1", "HOME": "/root"}
    assert config_from_environ(environ) == Config()


def test_env_defaults_to_os_environ(monkeypatch):
    monkeypatch.setenv("SYMBIONT_NATIVE_MAX_CPU_CORES", "3")
    assert config_from_environ().SandboxOrchestrator.max_cpu_cores == 3.0


# --- load_config: the layers ----------------------------------------------------------


@pytest.fixture
def layers(tmp_path, monkeypatch):
    """A clean environment whose Jupyter config dir is a fresh temp dir; returns a
    function that sets max_memory_mb (or other traits) in one named layer."""
    for name in (*ENV_VARIABLES, ENV_CONFIG_FILE, "JUPYTER_CONFIG_PATH", "JUPYTER_NO_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    jupyter_dir = tmp_path / "jupyter"
    jupyter_dir.mkdir()
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(jupyter_dir))
    # The user's dir above the venv's etc/jupyter, as outside a virtualenv.
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "0")

    base = Config()

    def set_layer(layer: str, **traits) -> Config:
        if layer == "toml":
            body = "".join(f"{k} = {json.dumps(v)}\n" for k, v in traits.items())
            path = write(tmp_path, "[native_execution]\n" + body, name="symbiont.toml")
            monkeypatch.setenv(ENV_CONFIG_FILE, str(path))
        elif layer == "jupyter":
            body = "".join(f"c.SandboxOrchestrator.{k} = {v!r}\n" for k, v in traits.items())
            (jupyter_dir / "jupyter_symbi_config.py").write_text(body, encoding="utf-8")
        elif layer == "base":
            base.SandboxOrchestrator.update(traits)
        elif layer == "env":
            names = {
                "max_memory_mb": "SYMBIONT_NATIVE_MAX_MEMORY_MB",
                "max_cpu_cores": "SYMBIONT_NATIVE_MAX_CPU_CORES",
                "working_directory": "SYMBIONT_NATIVE_WORKING_DIR",
            }
            for k, v in traits.items():
                monkeypatch.setenv(names[k], str(v))
        return base

    set_layer.jupyter_dir = jupyter_dir
    set_layer.base = base
    return set_layer


LAYERS = {"toml": 100.0, "jupyter": 200.0, "base": 300.0, "env": 400.0}  # lowest first


@pytest.mark.parametrize(
    "low, high", list(itertools.combinations(LAYERS, 2)), ids=lambda name: name
)
def test_precedence_of_each_pair(layers, low, high):
    layers(low, max_memory_mb=LAYERS[low])
    base = layers(high, max_memory_mb=LAYERS[high])
    assert load_config(base).SandboxOrchestrator.max_memory_mb == LAYERS[high]


@pytest.mark.parametrize("only", list(LAYERS))
def test_each_layer_alone(layers, only):
    base = layers(only, max_memory_mb=LAYERS[only])
    assert load_config(base).SandboxOrchestrator.max_memory_mb == LAYERS[only]


def test_all_layers_at_once(layers):
    for layer, value in LAYERS.items():
        base = layers(layer, max_memory_mb=value)
    cfg = load_config(base)
    assert cfg.SandboxOrchestrator.max_memory_mb == LAYERS["env"]
    # Above all layers: constructor kwargs, applied by traitlets itself.
    assert SandboxOrchestrator(config=cfg).max_memory_mb == 400.0
    assert SandboxOrchestrator(config=cfg, max_memory_mb=50.0).max_memory_mb == 50.0


def test_no_layer_leaves_the_trait_default(layers):
    cfg = load_config()
    assert "max_memory_mb" not in cfg.SandboxOrchestrator
    assert SandboxOrchestrator(config=cfg).max_memory_mb == 512.0


def test_different_traits_from_different_layers_all_apply(layers):
    layers("toml", max_cpu_seconds=30)
    layers("jupyter", max_processes=16)
    layers("base", default_language="bash")
    base = layers("env", max_cpu_cores=2)
    orch = SandboxOrchestrator(config=load_config(base))
    assert (orch.max_cpu_seconds, orch.max_processes, orch.default_language) == (30, 16, "bash")
    assert orch.max_cpu_cores == 2.0


def test_base_append_extends_the_symbiont_list(layers):
    # What `c.SandboxOrchestrator.allowed_executables.append(...)` in ipython_config.py does.
    layers("toml", allowed_executables=["python3", "bash"])
    base = Config()
    base.SandboxOrchestrator.allowed_executables.append("node")
    cfg = load_config(base)
    assert SandboxOrchestrator(config=cfg).allowed_executables == ["python3", "bash", "node"]


def test_base_is_not_modified(layers):
    base = layers("base", max_memory_mb=300.0)
    layers("env", max_memory_mb=400.0, max_cpu_cores=2.0)
    before = json.dumps(base, sort_keys=True)
    assert load_config(base).SandboxOrchestrator.max_cpu_cores == 2.0
    assert json.dumps(base, sort_keys=True) == before


def test_explicit_environ_replaces_os_environ(layers, tmp_path):
    layers("env", max_memory_mb=400.0)  # in os.environ: must be ignored
    path = write(tmp_path, "[native_execution]\nmax_cpu_seconds = 12\n", name="other.toml")
    cfg = load_config(environ={ENV_CONFIG_FILE: str(path), "SYMBIONT_NATIVE_MAX_CPU_CORES": "3"})
    assert dict(cfg.SandboxOrchestrator) == {"max_cpu_seconds": 12.0, "max_cpu_cores": 3.0}


def test_json_beats_py_in_the_same_dir(layers):
    layers("jupyter", max_memory_mb=200.0)
    (layers.jupyter_dir / "jupyter_symbi_config.json").write_text(
        json.dumps({"SandboxOrchestrator": {"max_memory_mb": 250.0}}), encoding="utf-8"
    )
    assert load_config().SandboxOrchestrator.max_memory_mb == 250.0


def test_jupyter_config_path_beats_the_user_dir(layers, tmp_path, monkeypatch):
    layers("jupyter", max_memory_mb=200.0, max_cpu_seconds=9.0)
    explicit = tmp_path / "explicit"
    explicit.mkdir()
    (explicit / "jupyter_symbi_config.py").write_text(
        "c.SandboxOrchestrator.max_memory_mb = 222.0\n", encoding="utf-8"
    )
    monkeypatch.setenv("JUPYTER_CONFIG_PATH", str(explicit))
    orch = load_config().SandboxOrchestrator
    assert orch.max_memory_mb == 222.0
    assert orch.max_cpu_seconds == 9.0  # the lower-priority dir still contributes


def test_a_broken_jupyter_config_file_names_the_file(layers):
    path = layers.jupyter_dir / "jupyter_symbi_config.py"
    path.write_text("c.SandboxOrchestrator.max_memory_mb = (\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config()
    assert str(path) in str(info.value)


def test_symbiont_config_variable_naming_a_missing_file(layers, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_CONFIG_FILE, str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match=r"nope\.toml: no such file"):
        load_config()


def test_symbiont_config_errors_surface_through_load_config(layers, tmp_path, monkeypatch):
    path = write(tmp_path, "[native_execution]\nmax_memory_mb = 'lots'\n")
    monkeypatch.setenv(ENV_CONFIG_FILE, str(path))
    with pytest.raises(ConfigError, match=r"\[native_execution\] max_memory_mb"):
        load_config()


def test_the_example_file_through_load_config(layers, monkeypatch):
    monkeypatch.setenv(ENV_CONFIG_FILE, str(DATA))
    monkeypatch.setenv("SYMBIONT_DEFAULT_SANDBOX_TIER", "gvisor")
    orch = SandboxOrchestrator(config=load_config())
    assert orch.default_sandbox_tier == "Tier2"
    assert orch.working_directory == "/tmp/symbiont-native"

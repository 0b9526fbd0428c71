"""Symbiont configuration (``config.toml``, ``SYMBIONT_*`` variables) as a traitlets ``Config``.

Everything here produces a :class:`traitlets.config.Config` whose ``SandboxOrchestrator``
section (and ``MicroVMSandbox`` for the Firecracker keys) sets the orchestrator's traits,
so Symbiont's settings and Jupyter's own configuration go through one mechanism.

:func:`load_config` layers the sources. Precedence, lowest to highest:

=====  ======================================================================
1      trait defaults (native execution off, ...)
2      the Symbiont ``config.toml`` named by ``$SYMBIONT_CONFIG``, if set
3      ``jupyter_symbi_config.py`` / ``.json`` on ``jupyter_config_path()``;
       system dirs first, the user's dir last, so the user's wins; in one dir
       ``.json`` wins over ``.py`` (as in ``traitlets.config.Application``)
4      ``base``, e.g. the IPython shell's config from ``ipython_config.py``
5      ``SYMBIONT_*`` environment variables (see :func:`config_from_environ`)
6      constructor keyword arguments, then ``%config`` (applied by traitlets)
=====  ======================================================================

Every bad value raises :class:`~symbi_jupyter.errors.ConfigError` with a one-line
message that names the file or variable, the key, and what is accepted.
"""

from __future__ import annotations

import copy
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

from traitlets.config import Config
from traitlets.config.loader import ConfigFileNotFound, JSONFileConfigLoader, PyFileConfigLoader

from . import policy
from .errors import ConfigError, PolicyViolation
from .tiers import SecurityTier

ORCHESTRATOR = "SandboxOrchestrator"
MICROVM = "MicroVMSandbox"

#: Base name of the traitlets config files searched on ``jupyter_config_path()``.
JUPYTER_CONFIG_NAME = "jupyter_symbi_config"

#: Names this module reads from the environment.
ENV_CONFIG_FILE = "SYMBIONT_CONFIG"
ENV_VARIABLES = (
    "SYMBIONT_ALLOW_NATIVE_EXECUTION",
    "SYMBIONT_DEFAULT_SANDBOX_TIER",
    "SYMBIONT_NATIVE_MAX_MEMORY_MB",
    "SYMBIONT_NATIVE_MAX_CPU_CORES",
    "SYMBIONT_NATIVE_WORKING_DIR",
    "SYMBIONT_CLUSTER_ADDRESS",
)

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


class _Invalid(ValueError):
    """A value that does not fit; the argument says what is accepted."""


# Validators: return the value to store in the Config, or raise _Invalid(accepted).


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise _Invalid("true or false")


def _positive(value: Any) -> float:
    # bool is an int subclass; `true` is never a quantity.
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value) and value > 0:
            return float(value)
    raise _Invalid("a positive number")


def _positive_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise _Invalid("a positive integer")


def _mem_mib(value: Any) -> int:
    # Firecracker refuses guests below 64 MiB; say so here rather than at boot.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 64:
        return value
    raise _Invalid("an integer of at least 64 (MiB)")


def _string(value: Any) -> str:
    if isinstance(value, str) and value:
        return value
    raise _Invalid("a non-empty string")


def _abs_path(value: Any) -> str:
    if isinstance(value, str) and os.path.isabs(value):
        return value
    raise _Invalid("an absolute path")


def _string_list(value: Any) -> list[str]:
    if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        return list(value)
    raise _Invalid("a list of non-empty strings")


def _env_names(value: Any) -> list[str]:
    # As policy.check_env takes names: what a process environment can carry.
    if isinstance(value, list) and all(
        isinstance(v, str) and v and not set(v) & {"=", "\0", "\n"} for v in value
    ):
        return list(value)
    raise _Invalid("a list of environment variable names (non-empty, without '=')")


class _Several(dict):
    """A value that sets several traits of its section: trait -> value."""


def _default_executable(value: Any) -> str | _Several:
    # Symbiont's interpreter: a language's name, or the path of its interpreter.
    if isinstance(value, str) and value.strip().lower() in policy.LANGUAGES:
        return value
    if isinstance(value, str):
        try:
            language = policy.interpreter_language(value)
        except ConfigError:
            pass
        else:
            return _Several(default_language=language, default_executable=value)
    raise _Invalid(
        "a language (" + ", ".join(policy.LANGUAGES) + ") or the absolute path of "
        "its interpreter on allowed_executables, e.g. /usr/bin/python3"
    )


def _cluster_address(value: Any) -> str:
    from .cluster import check_address

    if isinstance(value, str):
        try:
            return check_address(value)
        except ConfigError:
            pass
    raise _Invalid("the head's HOST:PORT, e.g. 127.0.0.1:6379")


def _tier(value: Any) -> str:
    try:
        return SecurityTier.parse(value).value
    except ConfigError:
        raise _Invalid(
            "a tier name (any case): " + ", ".join(SecurityTier.accepted_names())
        ) from None


_Spec = dict[str, tuple[str, str, Callable[[Any], Any]]]

# TOML table -> {key: (Config section, trait, validator)}. Applied in this order, so a
# later table overrides an earlier one: [native_execution] beats [security.native_execution].
_TABLES: dict[tuple[str, ...], _Spec] = {
    ("security",): {
        "allow_native_execution": (ORCHESTRATOR, "allow_native_execution", _bool),
        "default_sandbox_tier": (ORCHESTRATOR, "default_sandbox_tier", _tier),
    },
    ("security", "native_execution"): {
        "enforce_resource_limits": (ORCHESTRATOR, "enforce_resource_limits", _bool),
        "max_memory_mb": (ORCHESTRATOR, "max_memory_mb", _positive),
        "max_cpu_cores": (ORCHESTRATOR, "max_cpu_cores", _positive),
        "max_execution_time_seconds": (ORCHESTRATOR, "max_execution_time_seconds", _positive),
        "max_disk_mb": (ORCHESTRATOR, "max_disk_mb", _positive),
        "working_directory": (ORCHESTRATOR, "working_directory", _abs_path),
        "allowed_executables": (ORCHESTRATOR, "allowed_executables", _string_list),
        "env_passthrough": (ORCHESTRATOR, "env_passthrough", _env_names),
    },
    ("native_execution",): {
        "enabled": (ORCHESTRATOR, "allow_native_execution", _bool),
        "default_executable": (ORCHESTRATOR, "default_language", _default_executable),
        "working_directory": (ORCHESTRATOR, "working_directory", _abs_path),
        "enforce_resource_limits": (ORCHESTRATOR, "enforce_resource_limits", _bool),
        "max_memory_mb": (ORCHESTRATOR, "max_memory_mb", _positive),
        "max_cpu_seconds": (ORCHESTRATOR, "max_cpu_seconds", _positive),
        "max_execution_time_seconds": (ORCHESTRATOR, "max_execution_time_seconds", _positive),
        "max_disk_mb": (ORCHESTRATOR, "max_disk_mb", _positive),
        "allowed_executables": (ORCHESTRATOR, "allowed_executables", _string_list),
        "env_passthrough": (ORCHESTRATOR, "env_passthrough", _env_names),
    },
    ("sandbox", "firecracker"): {
        "kernel_image_path": (MICROVM, "kernel_image_path", _string),
        "rootfs_path": (MICROVM, "rootfs_path", _string),
        "vcpus": (MICROVM, "vcpus", _positive_int),
        "mem_mib": (MICROVM, "mem_mib", _mem_mib),
        "rootfs_read_only": (MICROVM, "rootfs_read_only", _bool),
        "firecracker_binary": (MICROVM, "firecracker_binary", _string),
    },
    ("cluster",): {
        "address": (ORCHESTRATOR, "cluster_address", _cluster_address),
    },
}

# Keys of Symbiont's own complete config.toml example that live in [security] but are
# not ours (storage encryption and backups). Accepted and ignored, so a real Symbiont
# config loads; any other unknown key there is still an error (most likely a typo).
SYMBIONT_SECURITY_KEYS_IGNORED = frozenset(
    {"key_provider", "enable_compression", "enable_backups", "enable_safety_checks"}
)


def load_symbiont_config(path: str | os.PathLike[str]) -> Config:
    """Read a Symbiont ``config.toml`` and return the equivalent traitlets ``Config``.

    Read: ``[security]`` ``allow_native_execution``, ``default_sandbox_tier``;
    ``[security.native_execution]`` ``enforce_resource_limits``, ``max_memory_mb``,
    ``max_cpu_cores``, ``max_execution_time_seconds``, ``max_disk_mb``,
    ``working_directory``, ``allowed_executables``, ``env_passthrough``;
    ``[native_execution]`` ``enabled`` (→ ``allow_native_execution``),
    ``default_executable`` (a language → ``default_language``; the path of an
    interpreter on the allowlist → that and ``default_executable``),
    ``working_directory``, ``enforce_resource_limits``, ``max_memory_mb``,
    ``max_cpu_seconds``, ``max_execution_time_seconds``, ``max_disk_mb``,
    ``allowed_executables``, ``env_passthrough``; ``[sandbox.firecracker]`` (kept
    under ``MicroVMSandbox``); and ``[cluster]`` ``address`` (→ ``cluster_address``,
    the head of a Ray cluster that runs the executions).

    When ``[security.native_execution]`` and ``[native_execution]`` set the same trait,
    ``[native_execution]`` (Symbiont's complete form) wins. ``[security]
    allow_native_execution`` and ``[native_execution] enabled`` must agree when both
    are given: a contradiction about the native gate is an error, not a guess.

    Other top-level sections (``[api]``, ``[database]``, ``[logging]``, ``[storage]``,
    ...) are ignored. An unknown key in a section that is read, a wrong type, an
    unknown tier, a missing file or invalid TOML raise :class:`ConfigError`.
    """
    where = os.fspath(path)
    try:
        with open(where, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file (Symbiont config.toml)") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: invalid TOML: {_one_line(exc)}") from None

    cfg = Config()
    seen: dict[str, tuple[str, Any]] = {}  # trait -> (where it was set, value)
    for table_path, spec in _TABLES.items():
        table = _table(data, table_path, where)
        if table is None:
            continue
        section = ".".join(table_path)
        for key, value in table.items():
            if (*table_path, key) in _TABLES:
                continue  # a sub-table read on its own, e.g. [security.native_execution]
            if section == "security" and key in SYMBIONT_SECURITY_KEYS_IGNORED:
                continue
            if key not in spec:
                raise ConfigError(
                    f"{where}: [{section}] unknown key {key!r}; accepted: " + ", ".join(spec)
                )
            cfg_section, trait, check = spec[key]
            try:
                converted = check(value)
            except _Invalid as exc:
                raise ConfigError(
                    f"{where}: [{section}] {key} = {_show(value)} is not valid; expected {exc}"
                ) from None
            if trait == "allow_native_execution" and trait in seen:
                other, earlier = seen[trait]
                if earlier != converted:
                    raise ConfigError(
                        f"{where}: [{section}] {key} = {_show(value)} contradicts {other} = "
                        f"{_show(earlier)}; set both to the same value or remove one"
                    )
            seen[trait] = (f"[{section}] {key}", converted)
            if isinstance(converted, _Several):
                for name, one in converted.items():
                    cfg[cfg_section][name] = one
            else:
                cfg[cfg_section][trait] = converted
    _check_default_executable(cfg, where)
    return cfg


def _check_default_executable(cfg: Config, where: str) -> None:
    """A default executable given by path must be on the allowlist (this file's, else
    the default one): refused here, where the file and key can be named."""
    section = cfg.get(ORCHESTRATOR, {})  # not cfg[...]: that would add the section
    path = section.get("default_executable")
    if not path:
        return
    allowed = section.get("allowed_executables", list(policy.DEFAULT_ALLOWED_EXECUTABLES))
    try:
        policy.check_executable(path, allowed, policy.executable_search_path())
    except PolicyViolation as exc:
        raise ConfigError(
            f"{where}: [native_execution] default_executable = {_show(path)} is not valid: "
            f"{exc}; expected the path of an interpreter on allowed_executables"
        ) from None


def config_from_environ(environ: Mapping[str, str] | None = None) -> Config:
    """Return the ``Config`` set by Symbiont's ``SYMBIONT_*`` variables (tier-model 5.2).

    ``SYMBIONT_ALLOW_NATIVE_EXECUTION`` (true/false, 1/0, yes/no, on/off, any case),
    ``SYMBIONT_DEFAULT_SANDBOX_TIER`` (any tier name), ``SYMBIONT_NATIVE_MAX_MEMORY_MB``
    and ``SYMBIONT_NATIVE_MAX_CPU_CORES`` (positive numbers),
    ``SYMBIONT_NATIVE_WORKING_DIR`` (an absolute path), ``SYMBIONT_CLUSTER_ADDRESS``
    (the head's HOST:PORT). An empty variable counts as unset. ``SYMBIONT_ENV`` and
    ``SYMBIONT_ALLOW_UNISOLATED`` belong to the policy module.
    """
    env = os.environ if environ is None else environ
    cfg = Config()
    orch = cfg[ORCHESTRATOR]

    def get(name: str) -> str | None:
        value = env.get(name, "").strip()
        return value or None

    def bad(name: str, raw: str, accepted: str) -> ConfigError:
        return ConfigError(f"environment variable {name}={_show(raw)} is not valid; {accepted}")

    name = "SYMBIONT_ALLOW_NATIVE_EXECUTION"
    if (raw := get(name)) is not None:
        if raw.lower() in _TRUE:
            orch.allow_native_execution = True
        elif raw.lower() in _FALSE:
            orch.allow_native_execution = False
        else:
            raise bad(name, raw, "expected true/false, 1/0, yes/no or on/off")

    name = "SYMBIONT_DEFAULT_SANDBOX_TIER"
    if (raw := get(name)) is not None:
        try:
            orch.default_sandbox_tier = _tier(raw)
        except _Invalid as exc:
            raise bad(name, raw, f"expected {exc}") from None

    for name, trait, unit in (
        ("SYMBIONT_NATIVE_MAX_MEMORY_MB", "max_memory_mb", "MB"),
        ("SYMBIONT_NATIVE_MAX_CPU_CORES", "max_cpu_cores", "cores"),
    ):
        if (raw := get(name)) is not None:
            try:
                orch[trait] = _positive(float(raw))
            except (ValueError, _Invalid):
                raise bad(name, raw, f"expected a positive number ({unit})") from None

    name = "SYMBIONT_NATIVE_WORKING_DIR"
    if (raw := get(name)) is not None:
        if not os.path.isabs(raw):
            raise bad(name, raw, "expected an absolute path")
        orch.working_directory = raw

    name = "SYMBIONT_CLUSTER_ADDRESS"
    if (raw := get(name)) is not None:
        try:
            orch.cluster_address = _cluster_address(raw)
        except _Invalid as exc:
            raise bad(name, raw, f"expected {exc}") from None

    if not orch:
        del cfg[ORCHESTRATOR]
    return cfg


def load_jupyter_config_files(name: str = JUPYTER_CONFIG_NAME) -> Config:
    """Load ``NAME.py`` and ``NAME.json`` from every directory on ``jupyter_config_path()``,
    lowest priority first, merged so the highest-priority directory (the user's) wins.

    Returns an empty ``Config`` when ``jupyter_core`` is not installed.
    """
    try:
        from jupyter_core.paths import jupyter_config_path
    except ImportError:
        return Config()

    cfg = Config()
    # The same directory can appear twice (e.g. JUPYTER_CONFIG_PATH naming the user's
    # dir); keep its highest-priority position only.
    dirs = list(dict.fromkeys(jupyter_config_path()))
    for directory in reversed(dirs):
        for loader_class, ext in ((PyFileConfigLoader, ".py"), (JSONFileConfigLoader, ".json")):
            loader = loader_class(name + ext, path=directory)
            try:
                loaded = loader.load_config()
            except ConfigFileNotFound:
                continue
            except Exception as exc:
                # A config file is user code: any failure in it is a configuration error.
                where = os.path.join(directory, name + ext)
                raise ConfigError(f"{where}: {_one_line(exc)}") from exc
            cfg.merge(loaded)
    return cfg


def load_config(base: Config | None = None, *, environ: Mapping[str, str] | None = None) -> Config:
    """The layered configuration for the magics, the kernel and the orchestrator.

    Lowest to highest: trait defaults < ``$SYMBIONT_CONFIG`` (a Symbiont
    ``config.toml``; a missing file is an error) < ``jupyter_symbi_config.{py,json}``
    on ``jupyter_config_path()`` < ``base`` < ``SYMBIONT_*`` variables. ``environ``
    (default ``os.environ``) supplies ``SYMBIONT_*``; the Jupyter search path always
    comes from ``os.environ`` (``JUPYTER_CONFIG_DIR``, ``JUPYTER_CONFIG_PATH``, ...).
    ``base`` is not modified.
    """
    env = os.environ if environ is None else environ
    layers: list[Config] = []
    toml_path = env.get(ENV_CONFIG_FILE, "").strip()
    if toml_path:
        layers.append(load_symbiont_config(toml_path))
    layers.append(load_jupyter_config_files())
    if base is not None:
        # deepcopy: merge shares sub-Configs it adopts, and later layers would edit them.
        layers.append(copy.deepcopy(base))
    layers.append(config_from_environ(env))

    cfg = Config()
    for layer in layers:
        cfg.merge(layer)
    return cfg


def _table(data: dict[str, Any], table_path: tuple[str, ...], where: str) -> dict | None:
    node: Any = data
    for depth, part in enumerate(table_path):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
        if not isinstance(node, dict):
            name = ".".join(table_path[: depth + 1])
            raise ConfigError(f"{where}: [{name}] must be a table, not {_show(node)}")
    return node


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__

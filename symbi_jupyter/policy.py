"""Policy: pure functions of configuration and request that say yes or explain no.

Nothing here runs code; the orchestrator calls these before any sandbox is touched.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import stat
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .errors import ConfigError, PolicyViolation
from .tiers import SecurityTier

# SYMBIONT_ENV value -> deployment kind (tier-model.md section 2).
DEPLOYMENTS = {
    "": "development",
    "development": "development",
    "dev": "development",
    "local": "development",
    "staging": "staging",
    "stage": "staging",
    "preview": "staging",
    "production": "production",
    "prod": "production",
    "test": "test",
    "ci": "test",
}

# System trees no run directory may live in (prefix match); "/" itself is refused
# only as the bare root, not as a prefix (Symbiont's prefix "/" rejects everything).
BLOCKED_TREES = (
    "/etc",
    "/bin",
    "/sbin",
    "/usr",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/boot",
    "/dev",
    "/proc",
    "/sys",
    "/root",
    "/run",
    "/var/run",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/var/lib/kubelet",
    "/snap",
)

# Language -> (default executable name, code file name).
LANGUAGES = {
    "python3": ("python3", "cell.py"),
    "python": ("python3", "cell.py"),
    "bash": ("bash", "cell.sh"),
    "sh": ("sh", "cell.sh"),
    "node": ("node", "cell.js"),
}

#: ``SandboxOrchestrator.allowed_executables`` by default.
DEFAULT_ALLOWED_EXECUTABLES = ("python3", "python", "bash", "sh", "node")

NATIVE_HOWTO = (
    "native execution (tier None) is switched off. To allow it, set any of: "
    "the trait SandboxOrchestrator.allow_native_execution = True (in ipython_config.py "
    "or jupyter_symbi_config.py); in a notebook: "
    "%config SandboxOrchestrator.allow_native_execution = True; "
    "in Symbiont's config.toml: [native_execution] enabled = true "
    "(or [security] allow_native_execution = true); "
    "or the environment variable SYMBIONT_ALLOW_NATIVE_EXECUTION=true"
)


def deployment(environ: Mapping[str, str] | None = None) -> str:
    """The deployment kind named by ``SYMBIONT_ENV``; unknown values are an error."""
    env = os.environ if environ is None else environ
    value = env.get("SYMBIONT_ENV", "").strip().lower()
    if value not in DEPLOYMENTS:
        raise ConfigError(
            f"SYMBIONT_ENV={env.get('SYMBIONT_ENV')!r} is not a known deployment; use one "
            "of: development, dev, local, staging, stage, preview, production, prod, test, ci"
        )
    return DEPLOYMENTS[value]


def check_tier_allowed(
    tier: SecurityTier,
    allow_native: bool,
    environ: Mapping[str, str] | None = None,
    howto: str = NATIVE_HOWTO,
) -> None:
    """Refuse tier None unless native execution is on (``howto`` says how to switch it
    on), and in production unless ``SYMBIONT_ALLOW_UNISOLATED`` is ``1`` or ``true``."""
    env = os.environ if environ is None else environ
    kind = deployment(env)  # validated for every tier: a typo must not pass silently
    if tier is not SecurityTier.NONE:
        return
    if not allow_native:
        raise PolicyViolation(howto)
    if kind == "production" and env.get("SYMBIONT_ALLOW_UNISOLATED", "").strip().lower() not in (
        "1",
        "true",
    ):
        raise PolicyViolation(
            "tier None is refused in production (SYMBIONT_ENV="
            f"{env.get('SYMBIONT_ENV')}): unisolated execution needs "
            "SYMBIONT_ALLOW_UNISOLATED=1 (or true) as well as allow_native_execution"
        )


def language_spec(language: str) -> tuple[str, str]:
    """(default executable, code file name) for a language name."""
    spec = LANGUAGES.get(language.strip().lower())
    if spec is None:
        raise ConfigError(f"unknown language {language!r}; accepted: {', '.join(LANGUAGES)}")
    return spec


# Unquoted, these make a command more than words: what a shell would do with them.
_UNQUOTED = {
    "|": "a pipe",
    "&": "&& or a background job",
    ";": "a command separator",
    "<": "a redirection",
    ">": "a redirection",
    "(": "a subshell",
    ")": "a subshell",
    "$": "an expansion",
    "`": "a command substitution",
    "*": "a glob",
    "?": "a glob",
    "[": "a glob",
    "\n": "a second line",
}
# Within double quotes a shell still expands these.
_DOUBLE_QUOTED = {"$": "an expansion", "`": "a command substitution"}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: How to run what needs a shell, where a command runs without one.
BASH_ADVICE = (
    'write the shell explicitly, bash -c "..." (in single quotes where the script '
    "uses $), which runs only where bash is on SandboxOrchestrator.allowed_executables"
)


def _shell_syntax(text: str, meaning: str) -> PolicyViolation:
    return PolicyViolation(
        f"{text!r} is shell syntax ({meaning}), but the command runs without a shell, so "
        f"that the allowlist governs what it starts; {BASH_ADVICE}"
    )


def command_argv(command: str) -> list[str]:
    """Split ``command`` into an argument vector by the shell's word rules (blanks,
    single and double quotes, backslashes), to run it without a shell: so the
    allowlist governs what it starts. Anything more a shell would do (pipes,
    redirections, ``;``, ``&&``, ``$`` and backquotes, globs, ``~``, comments,
    assignments, a second line) is a :class:`PolicyViolation` that says to write the
    shell explicitly; an unterminated quote or an empty command a :class:`ConfigError`."""
    words: list[str] = []
    word: list[str] = []
    in_word = False
    plain = True  # nothing of the word so far was quoted or escaped
    i, n = 0, len(command)
    while i < n:
        c = command[i]
        if c in " \t":
            if in_word:
                words.append("".join(word))
                word, in_word, plain = [], False, True
            i += 1
            continue
        if c == "\\":
            if i + 1 == n:
                raise ConfigError(f"the command {command!r} ends in a backslash")
            if command[i + 1] != "\n":  # a backslash-newline continues the line
                word.append(command[i + 1])
                in_word, plain = True, False
            i += 2
            continue
        if c == "'":
            end = command.find("'", i + 1)
            if end < 0:
                raise ConfigError(f"the command {command!r} has an unterminated ' quote")
            word.append(command[i + 1 : end])
            i = end + 1
        elif c == '"':
            i = _double_quoted(command, i + 1, word)
        elif c in _UNQUOTED:
            raise _shell_syntax(c, _UNQUOTED[c])
        elif c in "#~" and not in_word:
            raise _shell_syntax(c, "a comment" if c == "#" else "the home directory")
        elif c == "=" and not words and plain and _NAME.fullmatch("".join(word)):
            raise _shell_syntax("".join(word) + "=", "a variable assignment")
        else:
            word.append(c)
            in_word = True
            i += 1
            continue
        in_word, plain = True, False  # a quoted part, even an empty one, makes a word
    if in_word:
        words.append("".join(word))
    if not words:
        raise ConfigError("the command is empty; name the program to run")
    return words


def _double_quoted(command: str, i: int, word: list[str]) -> int:
    """Add the double-quoted text from ``i`` to ``word``; where it ends."""
    n = len(command)
    while i < n:
        c = command[i]
        if c == '"':
            return i + 1
        if c == "\\" and i + 1 < n and command[i + 1] in '$`"\\\n':
            if command[i + 1] != "\n":
                word.append(command[i + 1])
            i += 2
            continue
        if c in _DOUBLE_QUOTED:
            raise _shell_syntax(c, _DOUBLE_QUOTED[c])
        word.append(c)
        i += 1
    raise ConfigError(f'the command {command!r} has an unterminated " quote')


def native_path() -> str:
    """The ``PATH`` of a native run: this Python's directory first, then the system's."""
    return os.pathsep.join(
        dict.fromkeys([os.path.dirname(sys.executable), "/usr/local/bin", "/usr/bin", "/bin"])
    )


def command_program(
    name: str, allowed: Iterable[str], env: Mapping[str, str], start_directory: str | None
) -> tuple[str, str]:
    """The program a command without a shell starts, found as the run would find it:
    a name on the run's ``PATH`` (``env``'s, else :func:`native_path`), a relative path
    from ``start_directory``. Checked like :func:`check_executable`, against the
    allowlist's names as found on :func:`executable_search_path`; returns (the real
    path to execute, the path as found)."""
    if os.sep in name and not os.path.isabs(name):
        if start_directory is None:
            raise PolicyViolation(
                f"the program {name!r} is a relative path, but the run starts in a "
                "directory of its own, which holds nothing to run; name it by its name "
                "on PATH or by its absolute path"
            )
        name = os.path.normpath(os.path.join(start_directory, name))
    entries = env.get("PATH", native_path()).split(os.pathsep)
    run_path = os.pathsep.join(e for e in entries if os.path.isabs(e))
    real = check_executable(name, allowed, executable_search_path(), name_path=run_path)
    return real, find_executable(name, run_path) or real


def interpreter_language(path: str) -> str:
    """The language of the interpreter at ``path``, an absolute path, by its file
    name (``python3.11`` is python3); :class:`ConfigError` if it names none."""
    name = os.path.basename(path)
    if os.path.isabs(path) and re.fullmatch(r"python3(\.\d+)?", name):
        return "python3"
    if os.path.isabs(path) and name in LANGUAGES:
        return name
    raise ConfigError(
        f"{path!r} is not the absolute path of an interpreter of a known language; "
        "accepted: a path ending in " + ", ".join(LANGUAGES) + " (or python3.N)"
    )


def executable_search_path(environ: Mapping[str, str] | None = None) -> str:
    """Where executable names are looked up: the running Python's own directory first
    (so ``python3`` is the interpreter of this environment), then ``PATH``."""
    env = os.environ if environ is None else environ
    parts = [os.path.dirname(sys.executable)]
    parts += env.get("PATH", os.defpath).split(os.pathsep)
    seen: list[str] = []
    for part in parts:
        if part and os.path.isabs(part) and part not in seen:
            seen.append(part)
    return os.pathsep.join(seen)


def find_executable(name: str, search_path: str) -> str | None:
    """Absolute path of ``name`` as found (a name looked up on ``search_path``, or a
    path), symlinks not resolved."""
    found = name if os.sep in name else shutil.which(name, path=search_path)
    if not found or not os.path.isfile(found) or not os.access(found, os.X_OK):
        return None
    return os.path.abspath(found)


def resolve_executable(name: str, search_path: str) -> str | None:
    """Absolute real path of ``name`` (symlinks resolved)."""
    found = find_executable(name, search_path)
    return os.path.realpath(found) if found else None


def check_executable(
    name: str, allowed: Iterable[str], search_path: str, name_path: str | None = None
) -> str:
    """Resolve ``name`` (on ``name_path``, default ``search_path``) and compare real
    paths with the allowlist's real paths (its names resolved on ``search_path``), so a
    file that merely *is called* ``python3`` (a symlink, a PATH trick) is refused.
    Returns the real path to execute."""
    allowed = list(allowed)
    where = search_path if name_path is None else name_path
    real = resolve_executable(name, where)
    if real is None:
        if os.sep in name:
            raise PolicyViolation(f"executable {name!r} does not exist or is not executable")
        raise PolicyViolation(f"executable {name!r} was not found on {where}")
    permitted = _permitted(tuple(allowed), search_path)
    if real not in permitted:
        raise PolicyViolation(
            f"executable {name!r} resolves to {real}, which is not on the allowlist "
            f"(SandboxOrchestrator.allowed_executables = {allowed}, resolving to "
            f"{sorted(permitted)})"
        )
    return real


@functools.lru_cache(maxsize=32)
def _permitted(allowed: tuple[str, ...], search_path: str) -> frozenset[str]:
    # Cached: if an allowlisted name is later repointed, its new target is refused
    # until restart (fails closed); the requested executable is resolved every time.
    return frozenset(r for r in (resolve_executable(a, search_path) for a in allowed) if r)


def _blocked(path: str) -> str | None:
    if path == "/":
        return "/"
    for tree in BLOCKED_TREES:
        if path == tree or path.startswith(tree + "/"):
            return tree
    return None


def validate_working_directory(path: str) -> Path:
    """Check the native working directory: absolute, outside system trees, before and
    after resolving symlinks. Creates it (mode 0711) if missing; returns the real path."""
    if not path or not os.path.isabs(path):
        raise PolicyViolation(
            f"working directory {path!r} must be an absolute path "
            "(SandboxOrchestrator.working_directory)"
        )
    normal = os.path.normpath(path)
    tree = _blocked(normal)
    if tree:
        raise PolicyViolation(
            f"working directory {path} is inside the system tree {tree}; choose another "
            "SandboxOrchestrator.working_directory (default /tmp/symbiont-native)"
        )
    os.makedirs(normal, mode=0o711, exist_ok=True)
    real = os.path.realpath(normal)
    tree = _blocked(real)
    if tree:
        raise PolicyViolation(
            f"working directory {path} resolves through a symlink to {real}, inside the "
            f"system tree {tree}"
        )
    if not os.path.isdir(real):
        raise PolicyViolation(f"working directory {path} is not a directory")
    st = os.stat(real)
    # Someone else's directory, or one anyone may write to without the sticky bit,
    # lets another user swap our run directories between creation and use.
    if st.st_uid not in (os.geteuid(), 0):
        raise PolicyViolation(
            f"working directory {real} belongs to another user (uid {st.st_uid}); set "
            "SandboxOrchestrator.working_directory to a directory of your own"
        )
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise PolicyViolation(
            f"working directory {real} is writable by other users (mode "
            f"{st.st_mode & 0o7777:o}); remove group/other write or set the sticky bit"
        )
    if not os.access(real, os.W_OK | os.X_OK):
        raise PolicyViolation(
            f"working directory {real} is not writable by you; set "
            "SandboxOrchestrator.working_directory to a directory of your own, e.g. "
            f"{os.path.expanduser('~/.cache/symbi-jupyter/native')}"
        )
    return Path(real)


def check_env(env: Mapping[str, str]) -> dict[str, str]:
    """Validate caller-supplied environment variables (names and values as strings,
    no ``=`` in a name, no NUL or newline where the OS or a tier cannot carry it)."""
    clean: dict[str, str] = {}
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigError(f"environment entries must be strings: {key!r}={value!r}")
        if not key or "=" in key or "\0" in key or "\n" in key:
            raise ConfigError(f"invalid environment variable name {key!r}")
        if "\0" in value:
            raise ConfigError(f"environment variable {key} holds a NUL byte")
        clean[key] = value
    return clean


# Volumes may not reach these (tier-model.md section 4).
FORBIDDEN_MOUNTS = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/var/run/containerd",
    "/run/containerd",
    "/proc",
    "/sys",
    "/boot",
    "/etc",
    "/root",
    "/var/lib/docker",
    "/var/lib/kubelet",
)


def validate_volume(spec: str) -> tuple[str, dict[str, str]]:
    """``HOST:CONTAINER[:ro|rw]`` -> (host path, docker-py bind dict); refuses the
    Docker socket, containerd, /proc, /sys, /boot, /etc, /root, /var/lib/docker,
    /var/lib/kubelet (and anything below them), the root itself, any ``..``, and a
    host path through a link."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise ConfigError(f"volume {spec!r} must be HOST:CONTAINER or HOST:CONTAINER:ro|rw")
    host, target = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "ro"
    if mode not in ("ro", "rw"):
        raise ConfigError(f"volume {spec!r}: mode must be ro or rw, not {mode!r}")
    if ".." in host.split("/") or ".." in target.split("/") or ".." in spec:
        raise PolicyViolation(f"volume {spec!r} contains '..'")
    if not os.path.isabs(host) or not os.path.isabs(target):
        raise ConfigError(f"volume {spec!r}: both paths must be absolute")
    for path in {os.path.normpath(host), os.path.realpath(host)}:
        if path == "/":
            raise PolicyViolation(f"volume {spec!r} would mount the host's root")
        for forbidden in FORBIDDEN_MOUNTS:
            if path == forbidden or path.startswith(forbidden + "/"):
                raise PolicyViolation(f"volume {spec!r} reaches {forbidden}, which is refused")
        if "docker.sock" in path or "containerd" in path:
            raise PolicyViolation(f"volume {spec!r} reaches the container engine")
    real = os.path.realpath(host)
    if os.path.exists(host) and real != os.path.normpath(host):
        # Bound later, by root or the engine: a link in the path now is one that
        # whoever may write its directory (a run, through another volume) could
        # point elsewhere by then.
        raise ConfigError(
            f"volume {spec!r}: {host} leads through a link (to {real}); give the "
            "real path, and make sure only you can change its parents"
        )
    return host, {"bind": target, "mode": mode}


def check_container_env(env: dict[str, str]) -> None:
    """Keys with ``=``, and keys or values with a newline or NUL, are refused."""
    for key, value in env.items():
        for bad, name in (("=", "'='"), ("\n", "a newline"), ("\0", "NUL")):
            if bad in key:
                raise ConfigError(f"environment variable name {key!r} contains {name}")
            if bad != "=" and bad in value:
                raise ConfigError(f"environment variable {key} contains {name}")


# The sitecustomize that line-buffers Python's stdout in every sandboxed run (why: in
# that file). It lives in a directory of its own, put first on PYTHONPATH.
LINE_BUFFERING_DIR = Path(__file__).parent / "sandboxes" / "linebuffer"


def line_buffering_module() -> str:
    return (LINE_BUFFERING_DIR / "sitecustomize.py").read_text()


def checked_argv(argv: Sequence[str], language: str | None, executable: str | None) -> list[str]:
    """``argv`` as a list of strings, each without NUL, the first not empty."""
    if language or executable:
        raise ConfigError(
            "argv runs a command, not code: give no language or executable with it "
            "(argv[0] is the program)"
        )
    if isinstance(argv, str | bytes) or not argv:
        raise ConfigError(f"argv must be a non-empty list of strings, not {argv!r}")
    for arg in argv:
        if not isinstance(arg, str) or "\0" in arg:
            raise ConfigError(f"argv holds {arg!r}: every argument must be a string without NUL")
    if not argv[0]:
        raise ConfigError("argv[0], the program to run, is empty")
    return list(argv)

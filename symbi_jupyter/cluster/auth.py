"""The token of the clusters the project starts: Ray's token authentication.

Ray (2.52 and later) checks a bearer token on every gRPC call between its processes
and from its clients when ``RAY_AUTH_MODE=token`` is in their environment; each reads
the token from ``RAY_AUTH_TOKEN`` (the token itself), else the file
``RAY_AUTH_TOKEN_PATH`` names, else ``~/.ray/auth_token``. The project makes a random
token once, keeps it mode 0600 in a directory only its owner can enter
(``$XDG_STATE_HOME/symbi-jupyter/cluster/auth_token``), and starts every node, and
connects every client, with ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH``
naming that file (or the one ``RAY_AUTH_TOKEN_PATH`` already names). A machine joins
a cluster, or runs a client of it, once the head's token file is copied to it.

TLS on Ray's gRPC channels is Ray's own: ``RAY_USE_TLS=1`` with
``RAY_TLS_SERVER_CERT``, ``RAY_TLS_SERVER_KEY`` and ``RAY_TLS_CA_CERT`` in the
environment of every node and client; they pass through unchanged, checked by
:mod:`.tls` (its key as this module checks the token); ``cluster up --tls`` makes
them for a trial cluster.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from ..errors import ConfigError

MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"


def default_token_path() -> Path:
    """Where the project keeps its token: ``$XDG_STATE_HOME/symbi-jupyter/cluster``."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(state) / "symbi-jupyter" / "cluster" / "auth_token"


def token_path() -> Path:
    """The token file this process uses: ``RAY_AUTH_TOKEN_PATH`` where set, else
    :func:`default_token_path`."""
    named = os.environ.get(TOKEN_PATH_ENV, "").strip()
    return Path(named) if named else default_token_path()


def ensure_token(path: Path | None = None) -> Path:
    """The token file, made (a random 256-bit token, mode 0600, its directory 0700)
    where it does not exist yet; :class:`ConfigError` if others can read it."""
    path = path or token_path()
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            pass  # made meanwhile by another `node start`
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
    return checked_token(path)


def checked_token(path: Path) -> Path:
    """``path`` if it holds a token only its owner can read; :class:`ConfigError`
    saying how to fix it otherwise."""
    try:
        info = path.stat()
        text = path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(
            f"no cluster token at {path}: copy the token file of the cluster's head "
            f"there (mode 0600), or name it with {TOKEN_PATH_ENV}"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the cluster token {path}: {exc.strerror}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"the cluster token {path} is open to other users "
            f"(mode {stat.S_IMODE(info.st_mode):o}); chmod 600 {path}"
        )
    if not text:
        raise ConfigError(f"the cluster token {path} is empty; copy the head's token there")
    return path


def ray_environment(path: Path | None = None) -> dict[str, str]:
    """The variables that switch Ray's token authentication on, for the processes of a
    node and for a client: ``RAY_AUTH_MODE=token`` and, unless the token itself is in
    ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` naming a checked token file."""
    env = {MODE_ENV: "token"}
    if os.environ.get(TOKEN_ENV, "").strip():
        return env
    env[TOKEN_PATH_ENV] = str(checked_token(path or token_path()))
    return env

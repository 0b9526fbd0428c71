"""TLS on Ray's gRPC channels: Ray's own, switched on by its environment.

Every Ray process (GCS, raylet, workers, drivers) reads ``RAY_USE_TLS=1`` and three
files: ``RAY_TLS_SERVER_CERT`` and ``RAY_TLS_SERVER_KEY``, which it presents as a
server and as a client alike (mutual TLS: a process without them is refused), and
``RAY_TLS_CA_CERT``, the CA it trusts. So every node and every client holds the key,
and the key is as good as the token: whoever reads it, with the token, can run code
on the cluster. :func:`environment` checks that the key is open to this user alone
before a node starts or a client connects; :func:`make_files` makes a private CA
and one certificate for a trial cluster on 127.0.0.1 (``cluster up --tls``), with
the ``openssl`` command; :func:`check_peer` says at once what Ray would report only
after a minute of retries: a cluster that speaks TLS and a client that does not, or
the reverse, or a certificate the other side does not trust.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import stat
import subprocess
from pathlib import Path

from ..errors import ConfigError

USE_ENV = "RAY_USE_TLS"
CERT_ENV = "RAY_TLS_SERVER_CERT"
KEY_ENV = "RAY_TLS_SERVER_KEY"
CA_ENV = "RAY_TLS_CA_CERT"
FILE_ENVS = (CERT_ENV, KEY_ENV, CA_ENV)

#: The files of a trial cluster, in the directory of its token.
CA_FILE, CERT_FILE, KEY_FILE = "tls-ca.crt", "tls-server.crt", "tls-server.key"

#: Days a trial cluster's certificates are valid.
DAYS = 365


def enabled(environ: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """Whether ``RAY_USE_TLS`` switches Ray's TLS on, as Ray reads it."""
    environ = os.environ if environ is None else environ
    return environ.get(USE_ENV, "0").strip().lower() in ("1", "true")


def environment() -> dict[str, str]:
    """The TLS variables of this process, checked: ``{}`` where TLS is off; else
    ``RAY_USE_TLS`` and the three files, each readable, the key open to this user
    alone (:class:`ConfigError` saying what to fix otherwise)."""
    if not enabled():
        return {}
    missing = [name for name in FILE_ENVS if not os.environ.get(name, "").strip()]
    if missing:
        raise ConfigError(
            f"{USE_ENV}=1 needs {', '.join(FILE_ENVS)}; {', '.join(missing)} not set: set "
            f"them to the cluster's certificate, key and CA files, or unset {USE_ENV}"
        )
    env = {USE_ENV: "1"}
    for name in FILE_ENVS:
        path = Path(os.environ[name].strip())
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"{name}={path}: cannot read it ({exc.strerror})") from None
        env[name] = str(path)
    checked_key(Path(env[KEY_ENV]))
    return env


def checked_key(path: Path) -> Path:
    """``path`` if no other user can read the key nor replace it; :class:`ConfigError`
    with the ``chmod`` that fixes it otherwise. A tier None run has a uid of its own:
    a key it could read would hand it the cluster."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"the cluster's TLS key {path} ({KEY_ENV}) is open to other users "
            f"(mode {mode:o}); chmod 600 {path}"
        )
    directory = path.resolve().parent
    if directory.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"the cluster's TLS key {path} ({KEY_ENV}) is in {directory}, which other users "
            f"can write (mode {stat.S_IMODE(directory.stat().st_mode):o}): they could put "
            f"another key in its place; chmod go-w {directory}, or move the key to a "
            "directory only you can write"
        )
    return path


def make_files(directory: Path, host: str = "127.0.0.1") -> dict[str, str]:
    """Make a private CA and one certificate for ``host`` and localhost, signed by
    it, in ``directory`` (mode 0700, the key 0600), and return the environment that
    switches TLS on with them. The CA's own key is deleted once it has signed: no
    other certificate is ever made with it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ConfigError(
            "cluster up --tls makes its certificates with the openssl command, which is not "
            "installed here; install it (Debian: apt-get install openssl)"
        )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca, cert, key = directory / CA_FILE, directory / CERT_FILE, directory / KEY_FILE
    ca_key, request = directory / "tls-ca.key", directory / "tls-server.csr"
    extensions = directory / "tls-server.ext"
    extensions.write_text(
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature, keyEncipherment\n"
        # Ray presents the one certificate as a server and as a client (mutual TLS).
        "extendedKeyUsage = serverAuth, clientAuth\n"
        f"subjectAltName = IP:{host}, DNS:localhost\n"
    )
    serial = str(int.from_bytes(os.urandom(8), "big"))
    ca_subject, days = "/CN=symbi-jupyter trial cluster CA", str(DAYS)
    steps: list[list[str | Path]] = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
         "-days", days, "-subj", ca_subject, "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", request,
         "-subj", f"/CN={host}"],
        ["x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-set_serial", serial,
         "-out", cert, "-days", days, "-extfile", extensions],
    ]  # fmt: skip
    try:
        for step in steps:
            # umask 077: the keys are never open to others, not even for a moment.
            ran = subprocess.run(
                [openssl, *map(str, step)], capture_output=True, text=True, umask=0o077
            )
            if ran.returncode != 0:
                tail = "\n".join(ran.stderr.strip().splitlines()[-4:])
                raise ConfigError(f"openssl {step[0]} failed (exit {ran.returncode}):\n{tail}")
    finally:
        for scrap in (ca_key, request, extensions):
            scrap.unlink(missing_ok=True)
    key.chmod(0o600)
    return {USE_ENV: "1", CERT_ENV: str(cert), KEY_ENV: str(key), CA_ENV: str(ca)}


def use(env: dict[str, str] | None) -> None:
    """Connect this process with the TLS files of ``env`` (what a cluster or node
    recorded; nothing if None or empty): Ray reads them from the environment."""
    if env:
        os.environ.update(env)


def remove_files(env: dict[str, str]) -> None:
    """Remove the files :func:`make_files` made (a trial cluster gone)."""
    for name in FILE_ENVS:
        if env.get(name):
            Path(env[name]).unlink(missing_ok=True)


def check_peer(address: str, timeout: float = 5.0) -> None:
    """:class:`ConfigError` if the cluster at ``address`` and this process disagree on
    TLS: one speaks it and the other does not, or the cluster's certificate is not
    signed by this process's CA, or it refuses this process's certificate. Ray itself
    would retry for a minute and then say only that the cluster does not answer."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    env = environment()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_alpn_protocols(["h2"])  # gRPC's
    if env:
        context.load_verify_locations(env[CA_ENV])
        context.load_cert_chain(env[CERT_ENV], env[KEY_ENV])
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        raw = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError:
        return  # nothing answers: the caller's own probe says so
    with raw:
        try:
            tls = context.wrap_socket(raw, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            raise ConfigError(
                f"the cluster at {address} presented a certificate that {CA_ENV} "
                f"({env[CA_ENV]}) does not accept ({exc.verify_message}): use the CA "
                "file of its nodes"
            ) from None
        except (ssl.SSLError, OSError) as exc:
            if not env:
                return  # no TLS here, none there
            reason = getattr(exc, "reason", None) or type(exc).__name__
            if reason == "WRONG_VERSION_NUMBER" or isinstance(
                exc, (ssl.SSLEOFError, ConnectionResetError)
            ):  # a server without TLS takes the greeting for a bad HTTP/2 preface
                raise ConfigError(
                    f"the cluster at {address} does not use TLS (the handshake failed: "
                    f"{reason}), and this client has {USE_ENV}=1: unset {USE_ENV} for "
                    "this cluster, or start it with TLS"
                ) from None
            raise ConfigError(
                f"the TLS handshake with the cluster at {address} failed ({reason}): "
                f"use the certificate, key and CA files of its nodes ({', '.join(FILE_ENVS)})"
            ) from None
        with tls:
            if not env:
                raise ConfigError(
                    f"the cluster at {address} uses TLS on its gRPC channels, and this "
                    f"client does not: set {USE_ENV}=1 and {', '.join(FILE_ENVS)} to the "
                    "files of its nodes (`symbi-jupyter cluster up --tls` prints them)"
                )
            try:
                # TLS 1.3 refuses a client's certificate after the handshake: the server
                # then closes the connection (or sends an alert) instead of its settings.
                refused = "closed the connection" if not tls.recv(1) else None
            except ssl.SSLError as exc:
                refused = str(exc.reason or exc)
            except OSError:
                refused = None  # said nothing yet: Ray's own connection will tell
            if refused:
                raise ConfigError(
                    f"the cluster at {address} refused this client's TLS certificate "
                    f"{env[CERT_ENV]} ({refused}): use the certificate and key files of its "
                    "nodes"
                )

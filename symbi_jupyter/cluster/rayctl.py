"""Ray itself: importing it (or saying how to install it), running its ``ray start``,
and connecting this process to a cluster, once, with the token.

``python -m symbi_jupyter.cluster.rayctl start ...`` is Ray's own ``ray start`` with
one difference: a loopback address stays loopback. Ray replaces ``127.0.0.1`` (as a
node's address and as the head's) by the machine's routable address, and then binds
its gRPC servers to every interface; a trial cluster on 127.0.0.1 is reachable from
this machine only, so its nodes and its clients keep the address they were given.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from ..errors import ConfigError, TierUnavailable
from . import INSTALL_HINT, MIN_RAY_VERSION, NAMESPACE, auth, tls

_connect_lock = threading.Lock()
_connected: str | None = None
_sigterm: Any = None  # this process's SIGTERM handler before ray.init replaced it


def import_ray() -> ModuleType:
    """The ``ray`` module; :class:`TierUnavailable` naming the extra to install if it is
    missing or older than the token authentication this package relies on."""
    try:
        import ray
    except ImportError as exc:
        raise TierUnavailable(
            f"a cluster needs Ray, which is not installed here ({exc}); "
            f"install it with: {INSTALL_HINT}"
        ) from None
    version = tuple(int(part) for part in ray.__version__.split(".")[:2] if part.isdigit())
    if version < MIN_RAY_VERSION:
        wanted = ".".join(map(str, MIN_RAY_VERSION))
        raise TierUnavailable(
            f"Ray {ray.__version__} is too old for a cluster (token authentication needs "
            f"{wanted} or later); upgrade it with: {INSTALL_HINT}"
        )
    return ray


@contextlib.contextmanager
def loopback_kept() -> Iterator[None]:
    """Within ``with``, Ray keeps a loopback address as given (see the module's
    docstring); other addresses are resolved as Ray resolves them."""
    import ray._private.services as services

    resolve = services.resolve_ip_for_localhost
    services.resolve_ip_for_localhost = lambda host: host
    try:
        yield
    finally:
        services.resolve_ip_for_localhost = resolve


def ray_command(*args: str) -> list[str]:
    """The command line of ``ray ARGS`` as this module runs it."""
    return [sys.executable, "-m", "symbi_jupyter.cluster.rayctl", *args]


def connect(address: str, *, temp_dir: str | None = None) -> Any:
    """Connect this process to the cluster at ``address`` (once; a second cluster in
    the same process is a :class:`ConfigError`) with the project's token, and TLS
    where ``RAY_USE_TLS`` and the ``RAY_TLS_*`` files are in this process's
    environment by then (Ray reads them when it connects: set them before the first
    run on the cluster), and return the ``ray`` module. ``temp_dir``: attach to the
    node started with it (a node's own ``node start``), not to any node of this
    machine."""
    global _connected
    ray = import_ray()
    with _connect_lock:
        if _connected is not None and ray.is_initialized():
            if _connected != address:
                raise ConfigError(
                    f"this process is connected to the cluster at {_connected}; one "
                    f"process uses one cluster, so it cannot use {address} too"
                )
            return ray
        if ray.is_initialized():
            raise ConfigError(
                "this process already called ray.init() itself; the cluster client "
                "connects with its own token and namespace: call ray.shutdown() first"
            )
        use_token()
        probe(address)
        global _sigterm
        _sigterm = signal.getsignal(signal.SIGTERM)
        try:
            with loopback_kept():
                ray.init(
                    address=address,
                    namespace=NAMESPACE,
                    log_to_driver=False,
                    logging_level="WARNING",
                    _temp_dir=temp_dir,
                )
        except (ConnectionError, RuntimeError) as exc:
            raise TierUnavailable(f"cannot connect to the cluster at {address}: {exc}") from None
        _connected = address
    return ray


def disconnect() -> None:
    """Leave the cluster this process connected to (``node start`` and ``cluster``
    commands, once done)."""
    global _connected
    with _connect_lock:
        if _connected is not None:
            import ray

            ray.shutdown()
            _connected = None
            if _sigterm is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, _sigterm)


def use_token() -> None:
    """Switch this process's Ray to token authentication with the project's token, as
    Ray's own ``ray.init`` does for a cluster it starts (the environment, then Ray's
    configuration and token cache read afresh)."""
    os.environ.update(auth.ray_environment())
    raylet = _raylet()
    raylet.Config.initialize("")
    raylet.AuthenticationTokenLoader.instance().reset_cache()


def probe(address: str, timeout: float = 5.0) -> None:
    """Fail fast, and say why, where Ray would retry for a minute: nothing listening at
    ``address`` (:class:`TierUnavailable`), TLS on one side only or certificates the
    other side does not accept (:class:`ConfigError`, :func:`.tls.check_peer`), or a
    token it refuses (:class:`ConfigError`)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise TierUnavailable(
            f"no Ray cluster answers at {address} ({exc.strerror or exc}); start one with "
            "`symbi-jupyter cluster up` or `symbi-jupyter node start`"
        ) from None
    tls.check_peer(address, timeout)
    from ray.exceptions import AuthenticationError

    try:
        with loopback_kept():
            _raylet().GcsClient(address=address, cluster_id=None)
    except AuthenticationError:
        raise ConfigError(
            f"the cluster at {address} refused this client's token "
            f"({auth.token_path()}): use the token file of its head"
        ) from None
    except Exception as exc:
        raise TierUnavailable(f"the cluster at {address} does not answer as Ray: {exc}") from None


def _raylet() -> Any:
    """Ray's compiled core, whose classes its type stubs do not list."""
    return importlib.import_module("ray._raylet")


def main() -> None:
    """``ray ARGS`` with loopback addresses kept."""
    with loopback_kept():
        from ray.scripts.scripts import main as ray_main

        sys.argv[0] = "ray"
        ray_main()


if __name__ == "__main__":
    main()

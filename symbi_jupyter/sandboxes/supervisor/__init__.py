"""The native tier's supervisor: a small, long-lived helper process, stdlib only.

The host starts it with a small bootstrap (:data:`BOOTSTRAP`, run as ``python -I -S
-B -c``) that loads this package under a private name, so that the supervisor imports
neither traitlets nor the rest of ``symbi_jupyter``. Why a separate process rather
than forking from the notebook:

* a child forked (or vforked) from a large kernel inherits the kernel's memory
  high-water mark in ``ru_maxrss``; children forked from this small process do not,
  so ``wait4`` figures stay honest where no cgroup is available;
* forking a small process is cheap, however large the kernel has grown.

Modules: :mod:`.proctree` (processes, prctl, rlimits), :mod:`.cgroups` (every cgroup
the project makes or reads, also for the container and microVM tiers),
:mod:`.channel` (the framed messages), :mod:`.workload` (confining and exec'ing the
code), :mod:`.monitor` (the :class:`~.monitor.Monitor` that owns one run; what it
prepares before its request is :mod:`.spare`, watching, stopping and reporting the
started run :mod:`.watch`) and :mod:`.__main__` (serving requests, keeping spare
monitors), and for the container tiers :mod:`.reaper` (removes a killed host's
containers). ``prestarted.py`` is not a module: it is the bootstrap of a pre-started
interpreter.
"""

from __future__ import annotations

import os
import sys

# os.path, not pathlib: the supervisor imports as little as it can.
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

#: Loads this package as ``symbi_supervisor`` and runs one of its modules' ``main``:
#: ``python -I -S -B -c BOOTSTRAP PACKAGE_DIR MODULE ARGS...`` (``__main__ FD HOST_PID
#: SPARES``: the native supervisor; ``reaper SOCKET LABEL``: the containers' reaper).
#: -I leaves the script's directory off sys.path, so the package is found by its path.
BOOTSTRAP = """\
import importlib.util, sys
path, module = sys.argv.pop(1), sys.argv.pop(1)
spec = importlib.util.spec_from_file_location(
    "symbi_supervisor", path + "/__init__.py", submodule_search_locations=[path])
package = importlib.util.module_from_spec(spec)
sys.modules["symbi_supervisor"] = package
spec.loader.exec_module(package)
importlib.import_module("symbi_supervisor." + module).main(sys.argv[1:])
"""


def command(module: str, *args: str) -> list[str]:
    """The argv that runs ``module``'s ``main(args)`` in a small, isolated Python
    (``-I -S -B``: no user site, no site packages, no bytecode written)."""
    return [sys.executable, "-I", "-S", "-B", "-c", BOOTSTRAP, PACKAGE_DIR, module, *args]

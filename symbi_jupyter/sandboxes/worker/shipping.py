"""The worker agent as it travels into a sandbox: its modules' source, as one
stdlib-only program (:func:`worker_source`)."""

from __future__ import annotations

from pathlib import Path

#: The worker agent's modules, in this directory; shipped in this order, each importing
#: only those before it.
AGENT_MODULES = (
    "agent_code",
    "agent_output",
    "agent_display",
    "agent_calls",
    "agent_timing",
    "agent_magics",
    "agent_figures",
    "agent",
)


def worker_source() -> bytes:
    """The worker agent as shipped into a sandbox: one program, stdlib only, that
    installs :data:`AGENT_MODULES` from their source and starts the agent.

    Every tier runs it the same way: as ``__main__``, executed by the agent's
    ``BOOTSTRAP`` (containers; the microVM guest, whose image holds only the bootstrap)
    or as the file that tier None's ``python3`` runs. So the agent comes from this
    package at run time, never from an image.
    """
    here = Path(__file__).parent
    sources = tuple((name, (here / f"{name}.py").read_text("utf-8")) for name in AGENT_MODULES)
    return (_LOADER + f"_symbi_worker({sources!r}).agent.main()\n").encode("utf-8")


# The head of worker_source()'s program. Each module becomes a module of the package
# symbi_worker in sys.modules, so that its relative imports (``from .agent_code import``,
# as in this package) find the modules installed before it; its file name is a
# ``<symbi-worker/...>`` pseudo-name whose lines linecache holds, for the worker's own
# tracebacks and for inspect.getsource.
_LOADER = """\
# The symbi worker agent, shipped by symbi_jupyter's worker_source(): its modules'
# source, installed as the package symbi_worker, then symbi_worker.agent.main().
import linecache, sys, types


def _symbi_worker(sources):
    package = types.ModuleType("symbi_worker")
    package.__path__ = []
    sys.modules[package.__name__] = package
    for name, source in sources:
        module = types.ModuleType(f"symbi_worker.{name}")
        module.__package__ = package.__name__
        filename = f"<symbi-worker/{name}.py>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        sys.modules[module.__name__] = module
        setattr(package, name, module)
        exec(compile(source, filename, "exec"), module.__dict__)
    return package


"""

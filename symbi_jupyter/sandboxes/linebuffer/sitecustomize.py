"""Imported by Python at start-up from PYTHONPATH in every sandboxed run (not a module
of this package). Python's stdout is block-buffered on a pipe, so output would arrive
only at exit; PYTHONUNBUFFERED is no cure: its raw stdout does not retry short writes,
and print() silently loses data where a pipe takes part of a write (as gVisor's do).
So stdout is switched to line buffering here, then the sitecustomize this file shadows,
if any, is run (usercustomize would be simpler, but virtual environments skip it)."""

import io
import sys

assert isinstance(sys.stdout, io.TextIOWrapper)  # as Python made it at start-up
sys.stdout.reconfigure(line_buffering=True)


def _run_shadowed() -> None:
    # The sitecustomize this one shadows (importlib.util would cost milliseconds).
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        path = os.path.join(entry or ".", "sitecustomize.py")
        if os.path.abspath(entry or ".") != here and os.path.isfile(path):
            with open(path, "rb") as f:
                code = compile(f.read(), path, "exec")
            exec(code, {"__name__": "sitecustomize", "__file__": path})
            return


_run_shadowed()
del _run_shadowed

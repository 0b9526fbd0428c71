"""The display options (:class:`ResultDisplay`) and how a renderer finds them."""

from __future__ import annotations

import os

from traitlets import Bool, default
from traitlets.config import SingletonConfigurable

_TRUE_WORDS = ("1", "true", "yes")


class ResultDisplay(SingletonConfigurable):
    """How execution results are displayed.

    Set options with ``%config ResultDisplay.stable = True`` or in a config file as
    ``c.ResultDisplay.stable = True``.
    """

    stable = Bool(
        help="""Stable rendering: leave out every figure that varies between runs (wall
        time, CPU time, peak memory, the numbers and widths of usage bars), so notebooks
        compare equal under nbval. Tier, exit status, what stopped the run,
        truncation, limits and "not enforced" warnings are still shown. Defaults to
        True when the environment variable SYMBI_JUPYTER_STABLE_OUTPUT is 1, true or
        yes.""",
    ).tag(config=True)

    show_limits = Bool(
        True,
        help="""Show the effective resource limits next to the usage figures, and
        usage-versus-limit bars in HTML.""",
    ).tag(config=True)

    @default("stable")
    def _stable_default(self) -> bool:
        value = os.environ.get("SYMBI_JUPYTER_STABLE_OUTPUT", "")
        return value.strip().lower() in _TRUE_WORDS


def display_options(display: ResultDisplay | None) -> ResultDisplay:
    """``display``, or else the shared :class:`ResultDisplay`."""
    if display is not None:
        return display
    if not ResultDisplay.initialized():
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None:
            # Take the shell's configuration (ipython_config.py, %config).
            return ResultDisplay.instance(parent=shell)
    return ResultDisplay.instance()

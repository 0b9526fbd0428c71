"""IPython's syntax for the symbi kernel: each cell goes through IPython's own input
transformations here, on the host, and the sandbox runs plain Python.

``%timeit x`` becomes ``get_ipython().run_line_magic('timeit', 'x')``, ``!ls``
``get_ipython().system('ls')``, ``len?`` a ``pinfo`` call; the worker's stand-in
``get_ipython()`` (:mod:`~symbi_jupyter.sandboxes.worker.agent_magics`) answers them in
the sandbox, which has no IPython. Unlike IPython's :class:`TransformerManager`, this
keeps every line where it was typed, so tracebacks and syntax errors name the user's
line numbers.
"""

from __future__ import annotations

import ast
import warnings

from IPython.core.inputtransformer2 import TransformerManager


def _keeping_lines(transformer: type) -> type:
    """A token transformer that pads what it joins (a continued line, a multi-line
    ``?``) with blank lines, so the lines after it keep their numbers."""

    class KeepingLines(transformer):  # type: ignore[misc]
        def transform(self, lines: list[str]) -> list[str]:
            new: list[str] = super().transform(lines)
            missing = len(lines) - len(new)
            if missing > 0:
                at = self.start_line + 1
                new[at:at] = ["\n"] * missing
            return new

    KeepingLines.__name__ = KeepingLines.__qualname__ = transformer.__name__
    return KeepingLines


class LineKeepingTransformer(TransformerManager):
    """IPython's transformations, each line kept at its number (a cell magic, which
    takes the rest of the cell as its argument, excepted)."""

    def __init__(self) -> None:
        super().__init__()
        self.token_transformers = [_keeping_lines(t) for t in self.token_transformers]


def transform_cell(code: str) -> str:
    """``code`` as the sandbox runs it: unchanged if it is plain Python (IPython would
    strip ``>>>`` prompts even inside a string), else IPython's transformation of it,
    with the cell's leading blank lines kept (IPython drops them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SyntaxWarnings are the sandbox's to show
        try:
            ast.parse(code)
            return code
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            pass
    lines = code.splitlines(keepends=True)
    blank = 0
    while blank < len(lines) and not lines[blank].strip():
        blank += 1
    try:
        rest = LineKeepingTransformer().transform_cell("".join(lines[blank:]))
    except Exception:  # IPython could not make sense of it: Python's error, in the sandbox
        return code
    return "\n" * blank + rest

"""How the worker agent's magics are called: where from (:class:`Call`, the caller's
namespaces and its place in the cell, so code a magic runs keeps the cell's line
numbers), their options as IPython parses them, and the error they raise.

Part of the worker agent (:mod:`.agent`): stdlib only, shipped as source with it by
:func:`.shipping.worker_source`.
"""

import ast
import linecache
import re


class UsageError(Exception):
    """A magic misused, or not available in the sandbox: shown as one line, as IPython
    shows its own UsageError."""


class Call:
    """Where a magic was called from: the caller's namespaces and its place in the cell."""

    def __init__(self, frame, magic=None):
        self.globals = frame.f_globals
        self.locals = None if frame.f_locals is frame.f_globals else frame.f_locals
        self.filename, self.lineno = frame.f_code.co_filename, frame.f_lineno
        self.magic = magic

    def namespace(self):
        """One dict of what the caller sees (a copy when it is a function's)."""
        if self.locals is None:
            return self.globals
        return {**self.globals, **self.locals}

    def parse(self, code, cell=False):
        """``code`` as an AST placed where it is in the cell as typed: a cell magic's
        body from the next line, a line magic's argument at its own column."""
        before = self.lineno - (not cell)  # lines of the cell before the code's first
        typed, at = "", 0  # a line magic's line as typed, and where its code starts there
        if not cell:
            typed = linecache.getline(self.filename, self.lineno)
            at = max(0, typed.find(code.split("\n", 1)[0], max(0, typed.find(self.magic or ""))))
        column = len(typed[:at].encode())
        try:
            tree = ast.parse(code, self.filename, "exec")
        except SyntaxError as exc:
            if exc.lineno is not None:
                if exc.lineno == 1 and exc.offset is not None and typed:
                    exc.offset, exc.text = exc.offset + at, typed
                    if exc.end_offset and exc.end_lineno == 1:  # 0: not known
                        exc.end_offset += at
                exc.lineno += before
                if exc.end_lineno is not None:
                    exc.end_lineno += before
            raise
        for node in ast.walk(tree) if column else ():
            for line, col in (("lineno", "col_offset"), ("end_lineno", "end_col_offset")):
                if getattr(node, line, None) == 1:  # on the magic's own line
                    setattr(node, col, getattr(node, col) + column)
        return ast.increment_lineno(tree, before)


def options(line, flags, valued, magic):
    """IPython-style leading options (``-n 10 -q``) of a magic's line, and the rest as
    typed: ``flags`` take no value, ``valued`` take an integer."""
    opts, rest = {}, line.lstrip()
    while rest.startswith("-"):
        match = re.match(r"-(\w)(\S*)\s*", rest)
        if match is None:
            break
        letter, attached = match.groups()
        if letter in valued:
            rest = rest[match.end() :]
            if not attached:
                value = re.match(r"(\S*)\s*", rest)
                assert value is not None  # it matches everywhere, if only the empty string
                attached, rest = value.group(1), rest[value.end() :]
            try:
                opts[letter] = int(attached)
            except ValueError:
                raise UsageError(f"{magic} -{letter}: a whole number, not {attached!r}") from None
        elif letter in flags and not attached:
            opts[letter] = True
            rest = rest[match.end() :]
        else:
            break  # the statement itself starts with a minus
    return opts, rest

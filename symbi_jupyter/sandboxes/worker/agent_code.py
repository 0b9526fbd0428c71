"""The worker agent's understanding of the user's code and objects: a cell compiled as
IPython compiles it and its traceback, the answers to ``is_complete``, ``complete`` and
``inspect``, and an object's rich representation (:func:`mimebundle`).

Part of the worker agent (:mod:`.agent`): stdlib only, shipped as source with it by
:func:`.shipping.worker_source`. Functions only: nothing here sends messages or touches
the protocol; :class:`.agent.Worker` does.
"""

import ast
import base64
import builtins
import codeop
import linecache
import pprint
import re
import traceback

_COMPILE_FLAGS = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT

#: Representations of types that have no ``_repr_*_`` methods (matplotlib's figures),
#: added by the worker's other modules: each returns a ``{mime: data}`` dict, or None.
FORMATTERS: list = []

_REPR_METHODS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("image/jpeg", "_repr_jpeg_"),
    ("text/latex", "_repr_latex_"),
    ("application/json", "_repr_json_"),
)


def compile_cell(code, cell, source=None):
    """``(body, last expression, hide result)`` code objects, as IPython's last_expr;
    ``cell`` is the file name its frames get. ``source``, the cell as typed when
    ``code`` is its transformation (with the same line numbers), is what tracebacks
    show of it."""
    typed = code if source is None else source
    lines = typed.splitlines(True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"  # as a file's: traceback places its carets on that assumption
    linecache.cache[cell] = (len(typed), None, lines, cell)
    tree = ast.parse(code, cell, "exec")
    last = hide = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        node = tree.body.pop()
        last = compile(ast.Expression(node.value), cell, "eval", _COMPILE_FLAGS, True)
        # A trailing ';' hides the result; end_col_offset counts UTF-8 bytes.
        line = re.split(r"\r\n|\r|\n", code)[node.end_lineno - 1].encode()
        hide = line[node.end_col_offset :].lstrip().startswith(b";")
    body = compile(tree, cell, "exec", _COMPILE_FLAGS, True) if tree.body else None
    return body, last, hide


def format_error(exc, cell, own_files):
    """Traceback lines from the cell's first frame (else the first frame that is not the
    worker's), leaving out the worker's own frames: those of ``own_files``."""
    error = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    frames, ours = list(error.stack), [f.filename in own_files for f in error.stack]
    starts = [i for i, f in enumerate(frames) if f.filename == cell]
    start = (starts or [i for i, own in enumerate(ours) if not own] or [0])[0]
    end = len(frames)
    if isinstance(exc, KeyboardInterrupt) and True in ours[start:]:
        end = ours.index(True, start)  # it hit the worker's plumbing (a print): stop there
    kept = []
    for i in range(start, end):
        if ours[i]:
            continue
        after = next((j for j in range(i + 1, end) if not ours[j]), None)
        if after is not None and after > i + 1 and _same_line(frames[i], frames[after]):
            continue  # a magic's call, then the code it ran on that same line: shown once
        kept.append(frames[i])
    error.stack = traceback.StackSummary.from_list(kept)
    return list(error.format())


def _same_line(a, b):
    return (a.filename, a.lineno) == (b.filename, b.lineno)


def mimebundle(obj):
    """IPython-like ``(data, metadata)`` of ``obj``; ``text/plain`` is always there."""
    data, metadata = {}, {}

    def call(name, *args, **kwargs):
        try:  # a broken repr method only loses its own MIME type
            method = None if isinstance(obj, type) else getattr(obj, name, None)
            return method(*args, **kwargs) if callable(method) else None
        except Exception:
            return None

    bundle = call("_repr_mimebundle_", include=None, exclude=None)
    if isinstance(bundle, tuple) and len(bundle) == 2:
        bundle, metadata = bundle[0], dict(bundle[1] or {})
    if isinstance(bundle, dict):
        data.update(bundle)
    else:
        for mime, name in _REPR_METHODS:
            value = call(name)
            if isinstance(value, tuple) and len(value) == 2:
                value, metadata[mime] = value
            if value is not None:
                data[mime] = value
    for formatter in FORMATTERS if not data else ():
        try:
            data.update(formatter(obj) or {})
        except Exception:
            pass
    if "text/plain" not in data:
        plain = isinstance(obj, dict | list | tuple | set | frozenset)
        data["text/plain"] = pprint.pformat(obj, sort_dicts=False) if plain else repr(obj)
    return base64_bytes(data), metadata


def base64_bytes(data):
    """JSON carries no bytes: binary MIME data goes base64-encoded, as in Jupyter."""
    return {
        mime: base64.b64encode(value).decode("ascii")
        if isinstance(value, bytes | bytearray)
        else value
        for mime, value in data.items()
    }


def safe_str(obj, to_str=str):
    """``str(obj)`` (or ``to_str``), or a placeholder where that raises."""
    try:
        return to_str(obj)
    except Exception:
        return f"<unprintable {type(obj).__name__} object>"


def is_complete(code):
    """Jupyter's is_complete_reply content, with IPython's rules of thumb."""
    try:
        compiled = codeop.compile_command(code, "<input>", "exec")
    except (SyntaxError, OverflowError, ValueError, TypeError, MemoryError):
        return {"status": "invalid"}
    lines = code.rstrip("\n").split("\n")
    last = lines[-1]
    indent = last[: len(last) - len(last.lstrip())]
    if compiled is None:
        return {"status": "incomplete", "indent": indent + "    " * last.rstrip().endswith(":")}
    if len(lines) > 1 and indent and not code.endswith("\n\n"):
        return {"status": "incomplete", "indent": indent}  # inside a block: wait for a blank
    return {"status": "complete"}


def complete_reply(ns, req):
    """Jupyter's complete_reply content: names of ``ns`` and builtins at the cursor."""
    import rlcompleter  # only sessions that complete pay for it

    code = req.get("code", "")
    pos = min(max(req.get("cursor_pos", len(code)), 0), len(code))
    found = re.search(r"[\w.]*$", code[:pos])
    assert found is not None  # it matches everywhere, if only the empty string
    text = found.group()
    matches, completer = [], rlcompleter.Completer(ns)
    for state in range(1000 if text else 0):
        match = completer.complete(text, state)
        if match is None:
            break
        # readline decorations: "f(" for a callable, "f()" for one without parameters,
        # "else:" for a keyword
        match = match.removesuffix("()").rstrip("(: ")
        if match not in matches:
            matches.append(match)
    return {
        "status": "ok",
        "matches": matches,
        "cursor_start": pos - len(text),
        "cursor_end": pos,
        # what each match is, for the kernel's _jupyter_types_experimental
        "metadata": {"symbi_types": [_kind(ns, match) for match in matches]},
    }


def _kind(ns, name):
    """A completion's type in ipykernel's words: keyword, module, class, function or
    instance (the object its name reaches, as rlcompleter already reached it)."""
    import keyword

    if keyword.iskeyword(name):
        return "keyword"
    first, *rest = name.split(".")
    try:
        obj = ns[first] if first in ns else getattr(builtins, first)
        for attr in rest:
            obj = getattr(obj, attr)
    except Exception:
        return "<unknown>"
    if isinstance(obj, type(builtins)):
        return "module"
    if isinstance(obj, type):
        return "class"
    return "function" if callable(obj) else "instance"


def inspect_reply(ns, req):
    """Jupyter's inspect_reply content: help on the name at the cursor, looked up in
    ``ns`` (then builtins)."""
    code = req.get("code", "")
    name = _name_at(code, min(req.get("cursor_pos", len(code)), len(code)))
    found, obj = lookup(name, ns)
    if not found:
        return {"status": "ok", "found": False, "data": {}, "metadata": {}}
    text = describe(name, obj, req.get("detail_level", 0))
    return {"status": "ok", "found": True, "data": {"text/plain": text}, "metadata": {}}


def lookup(name, *namespaces):
    """``(found, object)`` for a dotted name, from the first namespace that has its
    first part, then builtins; attributes are read, nothing is called or evaluated."""
    try:
        first, *rest = name.split(".")
        if not first.isidentifier():
            return False, None
        holder = next((ns for ns in namespaces if first in ns), vars(builtins))
        obj = holder[first]
        for attr in rest:
            obj = getattr(obj, attr)
    except Exception:  # not found (or a property that raised)
        return False, None
    return True, obj


def _name_at(code, pos):
    """The dotted name at the cursor, or the callee when the cursor follows ``name(``."""
    left, right = re.search(r"[\w.]*$", code[:pos]), re.match(r"\w*", code[pos:])
    assert left is not None and right is not None  # they match everywhere, maybe empty
    name = (left.group() + right.group()).strip(".")
    if not name:
        call = re.search(r"([\w.]+)\(\s*$", code[:pos])
        name = call.group(1) if call else ""
    return name


def describe(name, obj, detail_level):
    """IPython-like plain-text help for ``obj``."""
    import inspect  # slow to import: only sessions that inspect pay for it

    lines = [f"Type:      {type(obj).__name__}"]
    if not callable(obj):
        text = safe_str(obj, repr)
        lines.append(f"String form: {text if len(text) < 200 else text[:200] + '...'}")
    try:
        lines.append(f"Signature: {name}{inspect.signature(obj)}")
    except Exception:  # builtins without a text signature, odd callables
        pass
    lines.append(f"Docstring: {inspect.getdoc(obj) or '<no docstring>'}")
    if detail_level:
        try:
            lines.append(f"File:      {inspect.getsourcefile(obj)}")
            lines.append("Source:\n" + inspect.getsource(obj))
        except (TypeError, OSError):
            pass
    return "\n".join(lines)

"""The worker agent's ``get_ipython()``: what IPython's syntax turns into, run inside the
sandbox with the standard library.

The host passes each cell through IPython's own input transformations, so ``%timeit x``
arrives as ``get_ipython().run_line_magic('timeit', 'x')``, ``!ls`` as
``get_ipython().system('ls')`` and ``len?`` as ``run_line_magic('pinfo', 'len')``;
:class:`Shell` answers those calls. It has the magics that make sense in a sandbox
(:data:`LINE_MAGICS`, :data:`CELL_MAGICS`); any other fails with a one-line
:class:`UsageError` naming the kernel's limit. Code a magic runs keeps the line numbers
(and columns) of the cell as typed.

Part of the worker agent (:mod:`.agent`): stdlib only, shipped as source with it by
:func:`.shipping.worker_source`.
"""

import os
import re
import string
import sys

from .agent_calls import Call, UsageError
from .agent_code import describe, lookup
from .agent_display import (
    HTML,
    SVG,
    Javascript,
    Latex,
    Markdown,
    enable_matplotlib,
    inline_active,
    show_figures,
)
from .agent_timing import TimingMagics

#: IPython magics the sandbox does not have, with the reason it gives.
_EXTENSIONS = "IPython extensions need IPython itself, which does not run in the sandbox"
_NO_INPUT = "the sandbox has no interactive input (stdin is closed)"
_HOST_HISTORY = "the cells' history is kept by the kernel on the host, not in the sandbox"
UNAVAILABLE = {
    "reload_ext": _EXTENSIONS,
    "unload_ext": _EXTENSIONS,
    "autoreload": _EXTENSIONS,
    "aimport": _EXTENSIONS,
    "run": "run a file with !python3 FILE, or exec(open(FILE).read()) in the namespace",
    "debug": _NO_INPUT,
    "pdb": _NO_INPUT,
    "config": "the kernel runs %config itself, before the cell: put it on the cell's first "
    "lines, before any code (a cell may make the operator's policy stricter, never looser)",
    "reset": "%symbi_session restart starts a new worker, with an empty namespace",
    "history": _HOST_HISTORY,
    "recall": _HOST_HISTORY,
    "rerun": _HOST_HISTORY,
    "save": _HOST_HISTORY,
    "load": "%load writes into the notebook's cell, which the sandbox cannot reach",
    "edit": "the sandbox has no editor and no front end of its own",
    "gui": "the sandbox has no display",
    "qtconsole": "the sandbox has no display",
    "conda": "conda is not in the sandbox; %pip installs where the policy allows the network",
    "mamba": "mamba is not in the sandbox; %pip installs where the policy allows the network",
}
_KERNEL_MAGIC = (
    "the kernel's own magics run on the host, before the cell, and code in the sandbox "
    "cannot call them: put {} on the cell's first lines, before any code"
)


class SList(list):
    """``x = !cmd``: the output's lines, with IPython's ``.s``, ``.n`` and ``.l``."""

    s = property(lambda self: " ".join(self), doc="the lines joined by spaces")
    n = property(lambda self: "\n".join(self), doc="the lines joined by newlines")
    l = property(lambda self: list(self), doc="the lines as a plain list")  # noqa: E741


class Events:
    """``get_ipython().events``: the worker fires pre_execute and post_execute around
    every cell (matplotlib registers post_execute when it finds IPython loaded)."""

    NAMES = ("pre_execute", "post_execute")

    def __init__(self):
        self.callbacks: dict = {name: [] for name in self.NAMES}

    def register(self, event, function):
        if event not in self.callbacks:
            raise KeyError(
                f"Unknown event {event!r}: the symbi kernel's sandbox fires "
                f"{' and '.join(self.NAMES)}"
            )
        self.callbacks[event].append(function)

    def unregister(self, event, function):
        self.callbacks[event].remove(function)

    def trigger(self, event, *args, **kwargs):
        for function in list(self.callbacks[event]):
            function(*args, **kwargs)


class Shell(TimingMagics):
    """``get_ipython()`` in the sandbox: magics, shell commands, help and events."""

    def __init__(self, worker, api):
        self._worker, self._api = worker, api
        self.user_ns = worker.ns
        self.events = Events()
        #: whether this worker's limits give it the network (said by the host per cell)
        self.network = False
        self._payload = []
        self.user_ns["get_ipython"] = self.get_ipython  # as IPython puts it there
        self._initial = set(self.user_ns)  # what %who leaves out

    def get_ipython(self):
        """The running shell: the symbi kernel's stand-in for IPython's."""
        return self

    def __repr__(self):
        return "<symbi kernel sandbox shell: IPython syntax, without IPython>"

    # -- the worker's side ----------------------------------------------------------------

    def take_payload(self):
        payload, self._payload = self._payload, []
        return payload

    def post_execute(self):
        """After every cell, failed ones included: callbacks, then open figures."""
        self.events.trigger("post_execute")
        if inline_active():
            show_figures(self._api)

    # -- IPython's entry points -----------------------------------------------------------

    def run_line_magic(self, magic_name, line, _stack_depth=1):
        call = Call(sys._getframe(_stack_depth), "%" + magic_name)
        method = getattr(self, f"line_{magic_name}", None)
        if method is None:
            raise UsageError(self._missing("%", magic_name))
        return method(line, call)

    def run_cell_magic(self, magic_name, line, cell):
        call = Call(sys._getframe(1), "%%" + magic_name)
        method = getattr(self, f"cell_{magic_name}", None)
        if method is None:
            raise UsageError(self._missing("%%", magic_name))
        return method(line, cell, call)

    def magic(self, arg_s):
        name, _, line = arg_s.lstrip("%").partition(" ")
        return self.run_line_magic(name, line, _stack_depth=2)

    def system(self, cmd):
        """``!cmd``: through ``/bin/sh`` in the sandbox, its output streamed."""
        cmd = self.var_expand(cmd, Call(sys._getframe(1)))
        self._command(["/bin/sh", "-c", cmd])

    def getoutput(self, cmd, split=True):
        """``x = !cmd``: its output (stderr included) as an :class:`SList`."""
        cmd = self.var_expand(cmd, Call(sys._getframe(1)))
        out = self._command(["/bin/sh", "-c", cmd], capture=True)
        return SList(out.splitlines()) if split else out

    def var_expand(self, cmd, call=None):
        """``$name`` and ``{expression}`` from the caller's namespace, as IPython does;
        the command unchanged where that fails."""
        call = call or Call(sys._getframe(1))
        try:
            return _Expander().vformat(cmd, (), {**self.user_ns, **(call.locals or {})})
        except Exception:
            return cmd

    def ev(self, expr):
        return eval(expr, self.user_ns)

    def ex(self, cmd):
        exec(cmd, self.user_ns)

    def push(self, variables):
        self.user_ns.update(variables)

    def enable_gui(self, gui=None):
        """matplotlib asks for its backend's event loop: the inline one needs none."""

    def showtraceback(self, *args, **kwargs):
        import traceback

        traceback.print_exc()

    # -- magics -----------------------------------------------------------------------------

    def _missing(self, prefix, name):
        if name.startswith("symbi"):
            return f"{prefix}{name}: {_KERNEL_MAGIC.format(prefix + name)}"
        reason = UNAVAILABLE.get(name) or (
            "the sandbox runs Python with a small IPython stand-in, which has "
            + ", ".join(["%" + n for n in LINE_MAGICS] + ["%%" + n for n in CELL_MAGICS])
        )
        return f"{prefix}{name}: not available in the symbi kernel: {reason}"

    def cell_writefile(self, line, cell, call):
        """Write the cell's body to a file (-a: append to it)."""
        import shlex

        args = shlex.split(self.var_expand(line, call))
        append = bool({"-a", "--append"} & set(args))
        names = [a for a in args if a not in ("-a", "--append")]
        if len(names) != 1:
            raise UsageError("%%writefile: give one file name, and -a to append to it")
        filename = os.path.expanduser(names[0])
        if os.path.exists(filename):
            print(f"{'Appending to' if append else 'Overwriting'} {filename}")
        else:
            print(f"Writing {filename}")
        with open(filename, "a" if append else "w", encoding="utf-8") as f:
            f.write(cell)

    def line_load_ext(self, line, call):
        """Only ``symbi_jupyter``, whose magics the kernel has built in (as IPython
        answers for an extension already loaded); no other extension can load."""
        if line.strip() != "symbi_jupyter":
            raise UsageError(f"%load_ext: not available in the symbi kernel: {_EXTENSIONS}")
        print("The symbi_jupyter extension is already loaded: the symbi kernel has its magics.")

    def line_pinfo(self, line, call, detail=0):
        """``name?``: help on an object of the namespace, as IPython's pager shows it."""
        name = line.strip()
        if name.startswith("%"):
            found, obj = self._magic_method(name)
        else:
            found, obj = lookup(name, *filter(None, (call.locals, call.globals)))
        if not found:
            print(f"Object `{name}` not found.")
            return
        text = describe(name, obj, detail)
        self._payload.append({"source": "page", "data": {"text/plain": text}, "start": 0})

    def line_pinfo2(self, line, call):
        """``name??``: help with the source, where it can be found."""
        self.line_pinfo(line, call, detail=1)

    def _magic_method(self, name):
        cell = name.startswith("%%")
        method = getattr(self, f"{'cell' if cell else 'line'}_{name.lstrip('%')}", None)
        return method is not None, method

    def line_pip(self, line, call):
        """``python3 -m pip`` in the sandbox; installing needs the network."""
        import importlib.util
        import shlex

        args = shlex.split(self.var_expand(line, call))
        if importlib.util.find_spec("pip") is None:
            raise UsageError(
                f"%pip: pip is not installed in this sandbox's Python ({sys.executable})"
            )
        fetches = args[:1] in (["install"], ["download"], ["wheel"], ["index"])
        if fetches and not self.network and "--no-index" not in args:
            raise UsageError(
                f"%pip {args[0]}: this sandbox has no network (the kernel's limits); "
                "`%symbi_limits --network` gives it one where the operator's policy allows it"
            )
        self._command([sys.executable, "-m", "pip", *args])
        print("Note: you may need to restart the kernel to use updated packages.")

    def line_matplotlib(self, line, call):
        """Figures inline, as PNG images (the default once matplotlib is imported)."""
        reason = enable_matplotlib(line.strip() or None)
        if reason:
            raise UsageError(reason)

    def line_system(self, line, call):
        self._command(["/bin/sh", "-c", self.var_expand(line, call)])

    def line_sx(self, line, call):
        out = self._command(["/bin/sh", "-c", self.var_expand(line, call)], capture=True)
        return SList(out.splitlines())

    def line_cd(self, line, call):
        target = os.path.expanduser(self.var_expand(line, call).strip().strip("'\"") or "~")
        try:
            os.chdir(target)
        except OSError as exc:
            raise UsageError(f"%cd: {exc.strerror}: {target}") from None
        print(os.getcwd())

    def line_pwd(self, line, call):
        return os.getcwd()

    def line_env(self, line, call):
        line = self.var_expand(line, call).strip()
        if not line:
            return dict(os.environ)
        setting = re.match(r"(\S+?)(?:\s*=\s*|\s+)(.*)$", line)
        if setting:
            key, value = setting.groups()
            os.environ[key] = value
            print(f"env: {key}={value}")
            return None
        if line not in os.environ:
            raise UsageError(f"%env: the environment has no {line}")
        return os.environ[line]

    def line_who(self, line, call):
        names = sorted(
            name for name in self.user_ns if not name.startswith("_") and name not in self._initial
        )
        print("\t".join(names) if names else "Interactive namespace is empty.")

    def line_lsmagic(self, line, call):
        print("Available line magics:\n" + "  ".join("%" + n for n in LINE_MAGICS))
        print("\nAvailable cell magics:\n" + "  ".join("%%" + n for n in CELL_MAGICS))
        print("\nThe kernel's own magics (%symbi_tier, %%symbi, ...) run on the host.")

    def cell_bash(self, line, cell, call):
        self._command(["bash", "-c", cell])

    def cell_sh(self, line, cell, call):
        self._command(["/bin/sh", "-c", cell])

    def cell_html(self, line, cell, call):
        self._api.display(HTML(cell))

    def cell_markdown(self, line, cell, call):
        self._api.display(Markdown(cell))

    def cell_latex(self, line, cell, call):
        self._api.display(Latex(cell))

    def cell_svg(self, line, cell, call):
        self._api.display(SVG(cell))

    def cell_javascript(self, line, cell, call):
        self._api.display(Javascript(cell))

    cell_js = cell_javascript

    # -- shell commands ---------------------------------------------------------------------

    def _command(self, argv, capture=False):
        """Run ``argv`` in its own process group; its output goes to the cell's
        streams (or is returned). An interrupt stops the whole group."""
        import subprocess

        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture else None,
                stderr=subprocess.STDOUT if capture else None,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise UsageError(f"{argv[0]} is not installed in this sandbox") from None
        try:
            out, _ = proc.communicate()
        except BaseException:
            _stop(proc)
            raise
        self.user_ns["_exit_code"] = proc.returncode
        return (out or b"").decode("utf-8", "replace")


def _stop(proc):
    """SIGINT to the command's process group, then SIGKILL to what is left of it."""
    import signal

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # no second interrupt here
    try:
        for sig, grace in ((signal.SIGINT, 1.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except OSError:
                pass
            try:
                proc.wait(grace)
            except Exception:
                pass
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


class _Expander(string.Formatter):
    """IPython's DollarFormatter: ``{expression}`` and ``$name`` (``$$`` for ``$``),
    evaluated in the namespace; ``$`` inside single quotes is left alone."""

    _dollar = re.compile(r"(.*?)\$(\$?[\w\.]+)(?=([^']*'[^']*')*[^']*$)")

    def parse(self, format_string):
        for literal, field, spec, conversion in super().parse(format_string):
            done, text = 0, ""
            for match in self._dollar.finditer(literal):
                before, name = match.group(1, 2)
                if name.startswith("$"):
                    text += before + name
                else:
                    yield text + before, name, "", None
                    text = ""
                done = match.end()
            yield text + literal[done:], field, spec, conversion

    def vformat(self, format_string, args, kwargs):
        out = []
        for literal, field, spec, conversion in self.parse(format_string):
            out.append(literal)
            if field is not None:
                value = eval(f"{field}:{spec}" if spec else field, dict(kwargs))
                out.append(self.format_field(self.convert_field(value, conversion), ""))
        return "".join(out)


LINE_MAGICS = tuple(sorted(n[5:] for n in dir(Shell) if n.startswith("line_")))
CELL_MAGICS = tuple(sorted(n[5:] for n in dir(Shell) if n.startswith("cell_")))

"""The worker agent's IPython display in a sandbox without IPython: a small ``IPython``
package (``IPython.display``'s objects and functions, ``get_ipython``) served where no
real IPython is installed, real IPython's display functions routed to the worker where
one is, and matplotlib's figures shown inline as PNG images.

Part of the worker agent (:mod:`.agent`): stdlib only, shipped as source with it by
:func:`.shipping.worker_source`. :func:`install` puts one import hook in front of
``sys.meta_path``; it acts on the few module names below and on nothing else.
"""

import importlib
import importlib.abc
import importlib.machinery
import io
import os
import sys
import types

from .agent_code import FORMATTERS
from .agent_output import DisplayHandle

#: The matplotlib backend of the worker: figures come back as PNG display data.
INLINE_BACKEND = "module://symbi_worker.mpl_inline"
#: Why the sandbox cannot draw a figure, when it has no matplotlib.
NO_MATPLOTLIB = (
    "matplotlib is not installed in this sandbox's Python (the default Tier1-3 images "
    "have only the standard library: build the ones with numpy, pandas and matplotlib "
    "with `symbi-jupyter image build --profile scientific` (add --tier3 for the guest) and "
    "select them with DockerSandbox.image and MicroVMSandbox.artifacts_dir; at tier None "
    "install it into the kernel's Python)"
)
#: What the stand-in ``IPython.display`` leaves out, with the reason it gives.
_NOT_IN_SHIM = frozenset(
    {
        "Audio",
        "Code",
        "FileLink",
        "FileLinks",
        "GeoJSON",
        "IFrame",
        "ProgressBar",
        "ScribdDocument",
        "Video",
        "VimeoVideo",
        "YouTubeVideo",
        "display_pdf",
        "set_matplotlib_formats",
        "embed",
        "start_ipython",
        "start_kernel",
        "InteractiveShell",
    }
)


# ---------------------------------------------------------------------- display objects
class DisplayObject:
    """An object shown by its ``_repr_*_`` methods, as IPython's ``DisplayObject``."""

    _mime = "text/plain"

    def __init__(self, data=None, url=None, filename=None, metadata=None):
        if data is not None and isinstance(data, str) and filename is None and url is None:
            if data.startswith(("http://", "https://")) and "\n" not in data:
                data, url = None, data
            elif len(data) < 4096 and "\n" not in data and os.path.isfile(data):
                data, filename = None, data
        self.data, self.url, self.filename = data, url, filename
        self.metadata = metadata or {}
        if filename is not None:
            with open(filename, "rb" if self._binary else "r") as f:
                self.data = f.read()

    _binary = False

    def __repr__(self):  # IPython's, so that saved outputs read the same
        return f"<IPython.core.display.{type(self).__name__} object>"


class TextDisplayObject(DisplayObject):
    def __init__(self, data=None, url=None, filename=None, metadata=None):
        super().__init__(data, url, filename, metadata)
        if isinstance(self.data, bytes):
            self.data = self.data.decode("utf-8", "replace")

    def _repr_mimebundle_(self, include=None, exclude=None):
        data = {self._mime: self._text(), "text/plain": repr(self)}
        return data, ({self._mime: self.metadata} if self.metadata else {})

    def _text(self):
        return "" if self.data is None else str(self.data)


class Pretty(TextDisplayObject):
    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/plain": self._text()}, {}


class HTML(TextDisplayObject):
    _mime = "text/html"

    def __html__(self):
        return self._text()


class Markdown(TextDisplayObject):
    _mime = "text/markdown"


class Latex(TextDisplayObject):
    _mime = "text/latex"


class Math(TextDisplayObject):
    _mime = "text/latex"

    def _text(self):
        return f"$\\displaystyle {super()._text().strip('$')}$"


class SVG(TextDisplayObject):
    _mime = "image/svg+xml"


class Javascript(TextDisplayObject):
    _mime = "application/javascript"


class JSON(DisplayObject):
    def __init__(self, data=None, url=None, filename=None, expanded=False, metadata=None, **kw):
        super().__init__(data, url, filename, metadata)
        if isinstance(self.data, str):
            import json

            self.data = json.loads(self.data)
        self.metadata = {"expanded": expanded, **self.metadata, **kw}

    def _repr_mimebundle_(self, include=None, exclude=None):
        return (
            {"application/json": self.data, "text/plain": repr(self)},
            {"application/json": self.metadata},
        )


class Image(DisplayObject):
    """PNG, JPEG or GIF bytes (``data`` or ``filename``), or a URL shown as ``<img>``."""

    _binary = True
    _MIMES = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "gif": "image/gif"}

    def __init__(
        self,
        data=None,
        url=None,
        filename=None,
        format=None,
        embed=None,
        width=None,
        height=None,
        metadata=None,
        **kwargs,
    ):
        if isinstance(data, bytes):
            super().__init__(None, url, filename, metadata)
            self.data = data
        else:
            super().__init__(data, url, filename, metadata)
        name = (filename or url or "").lower().rsplit(".", 1)[-1]
        self.format = (format or name or _sniff(self.data) or "png").lower()
        self.embed = self.data is not None if embed is None else embed
        self.width, self.height = width, height

    def _repr_mimebundle_(self, include=None, exclude=None):
        size = {k: v for k, v in (("width", self.width), ("height", self.height)) if v}
        if not self.embed or self.data is None:
            attrs = "".join(f' {k}="{v}"' for k, v in size.items())
            return {"text/html": f'<img src="{self.url}"{attrs}/>', "text/plain": repr(self)}, {}
        mime = self._MIMES.get(self.format, f"image/{self.format}")
        return {mime: self.data, "text/plain": repr(self)}, ({mime: size} if size else {})


def _sniff(data):
    if isinstance(data, bytes):
        for magic, name in ((b"\x89PNG", "png"), (b"\xff\xd8", "jpeg"), (b"GIF8", "gif")):
            if data.startswith(magic):
                return name
    return None


# ---------------------------------------------------------------------- the IPython stand-in
def _display_functions(api):
    """``IPython.display``'s functions, speaking through the worker's display API."""

    def display(*objs, include=None, exclude=None, metadata=None, transient=None, **kw):
        display_id = kw.pop("display_id", None)
        if display_id is None and transient:
            display_id = transient.get("display_id")
        return api.display(
            *objs,
            raw=kw.get("raw", False),
            metadata=metadata,
            display_id=display_id,
            clear=kw.get("clear", False),
        )

    def update_display(obj, *, display_id, **kw):
        api.update_display(obj, display_id=display_id, raw=kw.get("raw", False))

    def publish_display_data(data, metadata=None, source=None, *, transient=None, **kw):
        display(data, raw=True, metadata=metadata, transient=transient)

    def shown_as(mime, name):
        def show(*objs, raw=False, metadata=None):
            for obj in objs:
                api.display({mime: obj} if raw else obj, raw=raw, metadata=metadata)

        show.__name__ = f"display_{name}"
        return show

    functions = {
        "display": display,
        "update_display": update_display,
        "clear_output": api.clear_output,
        "publish_display_data": publish_display_data,
    }
    for name, mime in (
        ("html", "text/html"),
        ("markdown", "text/markdown"),
        ("latex", "text/latex"),
        ("svg", "image/svg+xml"),
        ("png", "image/png"),
        ("jpeg", "image/jpeg"),
        ("json", "application/json"),
        ("javascript", "application/javascript"),
        ("pretty", "text/plain"),
    ):
        functions[f"display_{name}"] = shown_as(mime, name)
    return functions


def _not_in_shim(module_name):
    def __getattr__(name):
        if f"{module_name}.{name}" in ("IPython.display", "IPython.core"):
            return importlib.import_module(f"{module_name}.{name}")  # as IPython has them
        if name in _NOT_IN_SHIM:
            raise ImportError(
                f"{module_name}.{name} is not available in the symbi kernel: IPython is not "
                "installed in the sandbox, and its stand-in there has display, HTML, "
                "Markdown, Latex, Math, SVG, JSON, Javascript, Image, Pretty and get_ipython"
            )
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")

    return __getattr__


def _shim_modules(shell, functions):
    """The stand-in modules' contents, by name: served only where no real IPython is
    installed."""
    objects = {
        cls.__name__: cls
        for cls in (
            DisplayObject,
            TextDisplayObject,
            Pretty,
            HTML,
            Markdown,
            Latex,
            Math,
            SVG,
            Javascript,
            JSON,
            Image,
        )
    }
    display = {**functions, **objects, "DisplayHandle": DisplayHandle}
    return {
        "IPython": {
            "_symbi_shim": True,
            "get_ipython": shell.get_ipython,
            # matplotlib reads it when it finds IPython loaded: as IPython 8.24 or later
            # (its backends are named through matplotlib's registry, as here).
            "version_info": (8, 24, 0, "symbi"),
            "__version__": "8.24.0+symbi",
        },
        "IPython.display": display,
        "IPython.core": {},
        "IPython.core.display": display,
        "IPython.core.display_functions": functions,
        "IPython.core.getipython": {"get_ipython": shell.get_ipython},
    }


class _ShimLoader(importlib.abc.Loader):
    def __init__(self, contents):
        self.contents = contents

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        name = module.__name__
        module.__dict__.update(self.contents[name])
        module.__doc__ = (
            f"The symbi kernel's stand-in for {name}: IPython is not installed in this sandbox."
        )
        module.__getattr__ = _not_in_shim(name)


#: Why ``import symbi_jupyter`` fails in the sandbox, in one line.
NO_ORCHESTRATOR = (
    "symbi_jupyter is not available inside the symbi kernel's sandbox: a sandbox does "
    "not start sandboxes. Run a notebook that drives the orchestrator from its cells "
    "with ipykernel (python3) and %load_ext symbi_jupyter"
)


class ImportHook(importlib.abc.MetaPathFinder):
    """First on ``sys.meta_path``: serves the IPython stand-in where the sandbox has no
    IPython, and patches the real modules named in ``patches`` right after they load."""

    def __init__(self, shim, patches):
        self.shim, self.patches = shim, patches
        self.loader = _ShimLoader(shim)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] == "symbi_jupyter":
            # Also where tier None's interpreter could load it: the same answer at
            # every tier.
            raise ModuleNotFoundError(NO_ORCHESTRATOR, name=fullname)
        if fullname not in self.shim and fullname not in self.patches:
            return None
        spec = self._real_spec(fullname, path, target)
        if spec is None and fullname in self.shim:
            if "." in fullname and not getattr(sys.modules.get("IPython"), "_symbi_shim", False):
                return None  # a real IPython without this module: its own ImportError
            spec = importlib.machinery.ModuleSpec(
                fullname, self.loader, is_package=fullname in ("IPython", "IPython.core")
            )
            if spec.submodule_search_locations is not None:
                spec.submodule_search_locations[:] = []
            return spec
        if spec is not None and fullname in self.patches and spec.loader is not None:
            spec.loader = _Patched(spec.loader, self.patches[fullname])
        return spec

    def _real_spec(self, fullname, path, target):
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                return spec
        return None


class _Patched(importlib.abc.Loader):
    """A real module's loader, then a patch applied to the module it made."""

    def __init__(self, loader, patch):
        self.loader, self.patch = loader, patch

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        self.patch(module)

    def __getattr__(self, name):  # get_source, is_package, ... of the real loader
        return getattr(self.loader, name)


def install(shell, api):
    """Put the import hook in place for this worker: the stand-in ``IPython``, real
    IPython's display routed to ``api``, matplotlib's figures shown inline."""
    functions = _display_functions(api)
    shim = _shim_modules(shell, functions)

    def patch_display_functions(module):
        for name in ("display", "update_display", "clear_output", "publish_display_data"):
            setattr(module, name, functions[name])

    def patch_getipython(module):
        module.get_ipython = shell.get_ipython

    patches = {
        "IPython.core.display_functions": patch_display_functions,
        "IPython.core.getipython": patch_getipython,
        "matplotlib": _inline_by_default,
    }
    sys.meta_path.insert(0, ImportHook(shim, patches))
    FORMATTERS.append(figure_png)
    backend = types.ModuleType("symbi_worker.mpl_inline")
    backend.__doc__ = "The symbi worker's matplotlib backend: figures shown as PNG data."
    vars(backend).update(show=lambda *args, **kwargs: show_figures(api), __getattr__=_agg_attribute)
    sys.modules[backend.__name__] = backend


# ---------------------------------------------------------------------- matplotlib
def _inline_by_default(matplotlib):
    """As ipykernel does: figures inline unless the sandbox's environment names a
    backend (MPLBACKEND, read by matplotlib itself)."""
    if not os.environ.get("MPLBACKEND"):
        matplotlib.rcParams["backend"] = INLINE_BACKEND
        matplotlib.interactive(True)


def _agg_attribute(name):
    """The backend's canvas, Agg's, loaded when matplotlib first asks for it (and kept in
    the module: pyplot copies the backend module's dict)."""
    if name in ("FigureCanvas", "FigureManager"):
        agg = importlib.import_module("matplotlib.backends.backend_agg")
        backend = sys.modules["symbi_worker.mpl_inline"]
        vars(backend).update(FigureCanvas=agg.FigureCanvasAgg, FigureManager=agg.FigureManager)
        return getattr(backend, name)
    raise AttributeError(f"module 'symbi_worker.mpl_inline' has no attribute {name!r}")


def inline_active():
    """Whether pyplot is loaded with the inline backend, in interactive mode."""
    if "matplotlib.pyplot" not in sys.modules:
        return False
    matplotlib = sys.modules["matplotlib"]
    return matplotlib.get_backend() == INLINE_BACKEND and matplotlib.is_interactive()


def show_figures(api):
    """Each open pyplot figure as PNG display data, then close them all (as
    matplotlib-inline's ``show``)."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return
    try:
        for number in pyplot.get_fignums():
            figure = pyplot.figure(number)
            api.display({**figure_png(figure), "text/plain": repr(figure)}, raw=True)
    finally:
        pyplot.close("all")


def figure_png(obj):
    """A matplotlib figure as PNG data (as IPython's inline formatter); None for any
    other object."""
    module = sys.modules.get("matplotlib.figure")
    if module is None or not isinstance(obj, module.Figure):
        return None
    buffer = io.BytesIO()
    obj.savefig(buffer, format="png", bbox_inches="tight")
    return {"image/png": buffer.getvalue()}


def enable_matplotlib(gui):
    """``%matplotlib [inline]``: the inline backend, interactive; ``None`` if it is in
    place, else the reason it cannot be."""
    if gui not in (None, "", "inline", "auto"):
        return (
            f"%matplotlib {gui}: not available in the symbi kernel: only inline works "
            "(figures come back as PNG images); the sandbox has no display and no widgets"
        )
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        return f"%matplotlib: {NO_MATPLOTLIB}"
    matplotlib.use(INLINE_BACKEND)
    matplotlib.interactive(True)
    return None

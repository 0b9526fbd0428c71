"""JupyterLab 4 as a user meets it: a server on 127.0.0.1 with a token, driven by
headless Chromium through Selenium and Debian's chromium-driver, every check read from
the page's DOM. Screenshots stay in out/browser-check/ (CI lists that folder).

The waits are explicit conditions with generous limits (a loaded 2-core machine);
the only time asserted is that an interrupt stops a cell within INTERRUPT_SECONDS."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from symbi_jupyter.render import MIME_TYPE

from .helpers import REQUIRE_ENV, need, wait_until

ROOT = Path(__file__).resolve().parent.parent
ARTEFACTS = ROOT / "out" / "browser-check"
#: Seconds for any explicit condition: a page, a kernel, a cell (far above the usual).
WAIT = 180
#: Seconds an interrupted `time.sleep(60)` cell has to stop.
INTERRUPT_SECONDS = 20
CHROMIUM = "/usr/lib/chromium/chromium"  # Debian's binary (/usr/bin/chromium wraps it)
#: JupyterLab's settings for this test: no news or update checks (no network here).
SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}

if "browser" not in os.environ.get(REQUIRE_ENV, ""):  # else an ImportError: a failure
    pytest.importorskip("selenium", reason="no selenium (pip install -e '.[test]')")
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import (  # noqa: E402
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402


# ----------------------------------------------------------------------------- server
class Lab:
    """A running JupyterLab server in its own directories."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "notebooks"
        self.runtime = base / "runtime"
        self.token = secrets.token_hex(16)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = _server_environment(base)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.root.mkdir(mode=0o711)
        self.log = (self.base / "server.log").open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyterlab",
                "--no-browser",
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={self.port}",
                "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={self.token}",
                f"--ServerApp.root_dir={self.root}",
                "--allow-root",
            ],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        ready = wait_until(self._ready, WAIT)
        assert ready, f"JupyterLab did not answer in {WAIT} s: {self.server_log()}"

    def _ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.server_log()
        try:
            self.api("GET", "/api/status")
        except OSError:
            time.sleep(0.2)
            return False
        return True

    def api(self, method: str, path: str) -> Any:
        request = urllib.request.Request(
            self.url + path, method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as reply:
            body = reply.read()
        return json.loads(body) if body else None

    def server_log(self) -> str:
        return (self.base / "server.log").read_text(errors="replace")[-3000:]

    def kernel_pids(self) -> list[int]:
        """The server's kernels (their command lines name a connection file in its
        runtime directory)."""
        return _pids_with(str(self.runtime))

    def stop(self) -> None:
        """Shut the kernels down through the API, then the server; kill what is left."""
        if self.proc is None:
            return
        with contextlib.suppress(OSError):
            for kernel in self.api("GET", "/api/kernels"):
                self.api("DELETE", f"/api/kernels/{kernel['id']}")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_environment(base: Path) -> dict[str, str]:
    """No configuration of the host's: Jupyter's and IPython's directories are the
    test's own; the kernelspecs are installed there. Native execution is allowed for
    the `%%symbi` cells (tier None, the cheapest)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SYMBIONT_", "JUPYTER", "JUPYTERLAB"))
        and k not in ("SYMBI_JUPYTER_STABLE_OUTPUT", "SYMBI_KERNEL_TIER", "IPYTHONDIR")
    }
    kernels = base / "kernels"
    env.update(
        JUPYTER_CONFIG_DIR=str(base / "config"),
        JUPYTER_CONFIG_PATH="",
        JUPYTER_DATA_DIR=str(base / "data"),
        JUPYTER_RUNTIME_DIR=str(base / "runtime"),
        JUPYTER_PATH=str(kernels / "share" / "jupyter"),
        JUPYTERLAB_SETTINGS_DIR=str(base / "lab-settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(base / "lab-workspaces"),
        IPYTHONDIR=str(base / "ipython"),
        XDG_STATE_HOME=str(base / "state"),
        SYMBIONT_ALLOW_NATIVE_EXECUTION="true",
        SYMBIONT_NATIVE_MAX_CPU_CORES="1",
    )
    # The operator's choice of the image with matplotlib, where it was built (setup
    # --scientific, as CI does): the launcher's Tier1 kernel then plots.
    scientific = _scientific_image()
    if scientific:
        (base / "config").mkdir(parents=True, exist_ok=True)
        (base / "config" / "jupyter_symbi_config.json").write_text(
            json.dumps({"DockerSandbox": {"image": scientific}})
        )
    for name, settings in SETTINGS.items():
        path = base / "lab-settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))
    # python3 (ipykernel, for %%symbi) and the symbi kernel at Tier1, as a user has them.
    for command in (
        [sys.executable, "-m", "ipykernel", "install", "--prefix", str(kernels)],
        [
            sys.executable,
            "-m",
            "symbi_jupyter.cli",
            "install-kernel",
            "--tier",
            "docker",
            "--prefix",
            str(kernels),
        ],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{command}: {done.stderr}"
    return env


def _scientific_image() -> str | None:
    """The scientific profile's image, where this engine has it."""
    from symbi_jupyter.setup.images.container import profile_image

    tag = profile_image("scientific")
    try:
        import docker

        docker.from_env().images.get(tag)
    except Exception:  # no engine, or no such image: the plot check says so
        return None
    return tag


def _pids_with(needle: str) -> list[int]:
    """Live processes whose command line contains ``needle``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                    found.append(int(entry.name))
    return found


def holders(name: str) -> list[int]:
    """Live processes with a file open whose path contains ``name`` (as the process
    sees it: inside a sandbox, its own /tmp). Root sees every process's descriptors."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if name in os.readlink(fd):
                        found.append(int(entry.name))
                        break
    return found


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    need(Path(CHROMIUM).is_file(), f"no {CHROMIUM} (Debian: apt-get install chromium)", "browser")
    need(
        shutil.which("chromedriver") is not None,
        "no chromedriver on PATH (Debian: apt-get install chromium-driver)",
        "browser",
    )
    need(
        importlib.util.find_spec("jupyterlab") is not None,
        "no JupyterLab (pip install -e '.[test]')",
        tier="browser",
    )
    # The notebooks' directory: one the unprivileged run user of tier None can
    # traverse (pytest's are 0700 under root).
    base = tmp_path_factory.mktemp("lab")
    base.chmod(0o711)
    server = Lab(base)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        left = server.kernel_pids()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not left, f"kernels left running after the server stopped: {left}"


# ---------------------------------------------------------------------------- browser
@pytest.fixture(scope="module")
def driver(lab: Lab) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={lab.base / 'chromium-profile'}",
        # Offline: nothing but the server on 127.0.0.1.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(arg)
    # This run's screenshots only (CI lists the folder).
    for old in ARTEFACTS.glob("lab-*.png"):
        old.unlink()
    # Debian's chromedriver, never one Selenium Manager would download.
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    browser = webdriver.Chrome(options=options, service=service)
    try:
        # Log in once: the token URL sets the session cookie.
        browser.get(f"{lab.url}/lab?token={lab.token}")
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-Launcher"), "the launcher")
        yield browser
    finally:
        browser.quit()


def _wait(browser: Any, condition: Callable[[Any], Any], what: str, seconds: float = WAIT) -> Any:
    try:
        return WebDriverWait(
            browser,
            seconds,
            poll_frequency=0.1,
            ignored_exceptions=(StaleElementReferenceException,),
        ).until(condition)
    except TimeoutException:
        shot(browser, f"timeout-{re.sub(r'[^a-z0-9]+', '-', what.lower())[:60]}")
        raise AssertionError(f"no {what} within {seconds} s") from None


def shot(browser: Any, name: str) -> Path:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTEFACTS / f"lab-{name}.png"
    browser.save_screenshot(str(path))
    return path


def write_notebook(lab: Lab, name: str, kernel: str, cells: list[str]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": kernel, "language": "python"}
    path = lab.root / name
    nbformat.write(nb, path)
    return path


def open_notebook(browser: Any, lab: Lab, name: str) -> WebElement:
    """Open ``name`` in a fresh tab of Lab, wait for its kernel to be idle; its panel."""
    browser.get(f"{lab.url}/lab/tree/{name}?reset")
    panel = _wait(
        browser,
        lambda d: _visible(d, ".jp-NotebookPanel:not(.lm-mod-hidden)"),
        f"notebook {name}",
    )
    wait_idle(browser)
    return panel


def _visible(browser: Any, selector: str) -> WebElement | None:
    for element in browser.find_elements(By.CSS_SELECTOR, selector):
        if element.is_displayed():
            return element
    return None


def wait_idle(browser: Any, seconds: float = WAIT) -> None:
    """The current notebook's kernel is connected and idle (the status bar's words)."""
    _wait(browser, lambda d: _kernel_status(d) == "Idle", "idle kernel", seconds)


def _kernel_status(browser: Any) -> str:
    status = browser.find_elements(By.CSS_SELECTOR, ".jp-StatusBar-TextItem")
    text = " ".join(s.text for s in status)
    match = re.search(r"\| (\w+)", text)
    return match.group(1) if match else text


def cells(browser: Any) -> list[WebElement]:
    return browser.find_elements(
        By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell.jp-CodeCell"
    )


def prompt(cell: WebElement) -> str:
    return cell.find_element(By.CSS_SELECTOR, ".jp-InputArea-prompt").text.strip()


def run_cell(browser: Any, index: int) -> WebElement:
    """Select cell ``index`` and run it (Shift+Enter); returns at once."""
    cell = cells(browser)[index]
    cell.find_element(By.CSS_SELECTOR, ".jp-InputArea-prompt").click()
    webdriver.ActionChains(browser).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(
        Keys.SHIFT
    ).perform()
    _wait(browser, lambda d: prompt(cells(d)[index]) != "[ ]:", f"cell {index} to start")
    return cells(browser)[index]


def finished(browser: Any, index: int, seconds: float = WAIT) -> WebElement:
    """Wait until cell ``index`` has an execution count (no longer ``[*]``)."""
    _wait(
        browser,
        lambda d: re.fullmatch(r"\[\d+\]:", prompt(cells(d)[index])),
        f"cell {index} to finish",
        seconds,
    )
    return cells(browser)[index]


def run_and_wait(browser: Any, index: int) -> WebElement:
    run_cell(browser, index)
    return finished(browser, index)


def outputs(cell: WebElement) -> list[WebElement]:
    return cell.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output")


def output_text(cell: WebElement) -> str:
    return "\n".join(o.text for o in outputs(cell))


def stdout_text(cell: WebElement) -> str:
    """What the cell printed to stdout (its stream outputs)."""
    selector = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stdout"]'
    return "\n".join(o.text for o in cell.find_elements(By.CSS_SELECTOR, selector))


# ------------------------------------------------------------------------------ tests
def _children(cell: WebElement) -> list[WebElement]:
    return cell.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-child")


def _index_of(cell: WebElement, selector: str) -> list[int]:
    """The output positions (among the cell's outputs) that hold ``selector``."""
    return [
        i
        for i, child in enumerate(_children(cell))
        if child.find_elements(By.CSS_SELECTOR, selector)
    ]


TICKS = (
    "import time\nfor i in range(12):\n    print('tick', i, flush=True)\n    time.sleep(0.5)\n"
    "print('done')"
)


@pytest.mark.parametrize(
    "kernel, notebook",
    [
        ("python3", ["%load_ext symbi_jupyter", f"%%symbi --native\n{TICKS}"]),
        ("symbi-docker", [TICKS]),
    ],
    ids=["ipykernel-symbi-magic", "symbi-kernel-tier1"],
)
def test_the_live_line_updates_in_place_then_gives_way_to_the_badge(
    lab, driver, kernel: str, notebook: list[str]
) -> None:
    """A 6 s cell, run with %%symbi in ipykernel or in the Tier1 symbi kernel, shows one
    live line, updated in place (its words change, its place does not); at the end it
    gives way to the badge (in its place, or after the output), all the output kept
    and no empty output left."""
    if kernel == "symbi-docker":
        require_tier("docker")
    write_notebook(lab, f"live-{kernel}.ipynb", kernel, notebook)
    open_notebook(driver, lab, f"live-{kernel}.ipynb")
    for index in range(len(notebook) - 1):
        run_and_wait(driver, index)
    last = len(notebook) - 1
    run_cell(driver, last)
    seen: dict[str, set] = {"texts": set(), "places": set(), "counts": set()}

    def watch(d: Any) -> bool:
        cell = cells(d)[last]
        places = _index_of(cell, ".symbi-live")
        seen["counts"].add(len(places))
        if places:
            seen["places"].add(places[0])
            seen["texts"].add(cell.find_element(By.CSS_SELECTOR, ".symbi-live").text)
            if len(seen["texts"]) == 2:
                shot(d, f"live-line-{kernel}")
        return re.fullmatch(r"\[\d+\]:", prompt(cell)) is not None

    _wait(driver, watch, "end of the %%symbi cell")
    cell = cells(driver)[last]
    shot(driver, f"live-line-{kernel}-badge")
    assert seen["counts"] <= {0, 1}, f"more than one live line at once: {seen}"
    assert len(seen["texts"]) >= 2, f"the live line never changed: {seen}"
    assert len(seen["places"]) == 1, f"the live line moved: {seen}"
    assert not cell.find_elements(By.CSS_SELECTOR, ".symbi-live"), "live line left"
    # The badge takes the live line's place, or follows the output; no empty output
    # (an emptied live line) stays behind.
    (place,) = seen["places"]
    badges = _index_of(cell, ".symbi-result")
    assert badges in ([place], [len(_children(cell)) - 1]), f"badge at {badges}, line at {place}"
    empty = [i for i, o in enumerate(outputs(cell)) if not o.text.strip()]
    assert not empty, f"empty outputs at {empty}"
    text = output_text(cell)
    assert all(f"tick {i}" in text for i in range(12)) and "done" in text, text


def toolbar_button(browser: Any, name: str) -> WebElement:
    """A button of the current notebook's toolbar, by its item name."""
    item = _wait(
        browser,
        lambda d: _visible(
            d, f".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Toolbar-item[data-jp-item-name={name}]"
        ),
        f"toolbar button {name}",
    )
    buttons = item.find_elements(By.CSS_SELECTOR, "jp-button, button")
    return buttons[0] if buttons else item


def require_tier(tier: str) -> None:
    from symbi_jupyter import SandboxOrchestrator, SecurityTier

    if tier == "none":
        return
    orch = SandboxOrchestrator()
    try:
        report = orch.availability()[SecurityTier.parse(tier)]
    finally:
        orch.close()
    need(report.ok, report.reason, tier=tier)


@pytest.mark.parametrize(
    "kernel, tier", [("python3", "none"), ("python3", "docker"), ("symbi-docker", "docker")]
)
def test_the_interrupt_button_stops_a_sleeping_cell(lab, driver, kernel: str, tier: str) -> None:
    """The toolbar's interrupt button stops `time.sleep(60)` within INTERRUPT_SECONDS,
    in a %%symbi cell (ipykernel) or in the Tier1 symbi kernel; the output printed
    before stays; nothing of the cell keeps running: no process holds the file it
    opened (seen through /proc as root; in ipykernel it is held until the run's
    process ends, in the symbi kernel until the cell's `with` ends, the session
    living on); the next cell runs (in the symbi kernel, with the session's state)."""
    require_tier(tier)
    marker = f"symbi-lab-{uuid.uuid4().hex[:12]}"
    if kernel == "python3":
        notebook = [
            "%load_ext symbi_jupyter",
            f"%%symbi --tier {tier}\nimport time\nheld = open('/tmp/{marker}', 'w')\n"
            "print('started', flush=True)\ntime.sleep(60)\nprint('not reached')",
            f"%%symbi --tier {tier}\nprint('again')",
        ]
        expected = "again"
    else:
        notebook = [
            "x = 41",
            f"import time\nwith open('/tmp/{marker}', 'w'):\n    print('started', flush=True)\n"
            "    time.sleep(60)\n    print('not reached')",
            "print('again', x)",
        ]
        expected = "again 41"
    name = f"interrupt-{kernel}-{tier}.ipynb"
    write_notebook(lab, name, kernel, notebook)
    open_notebook(driver, lab, name)
    run_and_wait(driver, 0)
    run_cell(driver, 1)
    _wait(driver, lambda d: "started" in output_text(cells(d)[1]), "'started' from the cell")
    if not wait_until(lambda: holders(marker), 30):
        # Only root sees the descriptors of a run under another uid.
        assert os.geteuid() != 0, "the check cannot see the run's process"
        pytest.skip("the run's process is not visible to this user (run as root to check)")
    shot(driver, f"interrupt-{kernel}-{tier}-running")

    toolbar_button(driver, "interrupt").click()
    finished(driver, 1, INTERRUPT_SECONDS)
    cell = cells(driver)[1]
    shot(driver, f"interrupt-{kernel}-{tier}-stopped")
    printed = stdout_text(cell)  # a traceback may quote the cell's source
    assert "started" in printed and "reached" not in printed, printed
    left = holders(marker)
    assert wait_until(lambda: not holders(marker), 30), f"still running: {left}"

    wait_idle(driver)
    again = run_and_wait(driver, 2)
    assert expected in stdout_text(again), output_text(again)


@pytest.fixture(autouse=True)
def _kernels_shut_down(lab: Lab) -> Iterator[None]:
    """Each test's kernels end with it (a 2-core machine runs the next one)."""
    yield
    for kernel in lab.api("GET", "/api/kernels"):
        lab.api("DELETE", f"/api/kernels/{kernel['id']}")


def type_and_run(browser: Any, code: str) -> WebElement:
    """Type ``code`` into the active cell, run it (Shift+Enter), wait for its end."""
    active = _wait(
        browser,
        lambda d: _visible(d, ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell.jp-mod-active"),
        "an active cell",
    )
    index = next(i for i, c in enumerate(cells(browser)) if c == active)
    editor = active.find_element(By.CSS_SELECTOR, ".cm-content")
    editor.click()
    for n, line in enumerate(code.split("\n")):
        # Enter between lines; no indentation in the code, so none to undo.
        editor.send_keys((Keys.ENTER if n else "") + line)
    _wait(
        browser,
        lambda d: cells(d)[index].find_element(By.CSS_SELECTOR, ".cm-content").text == code,
        f"the typed cell {code!r}",
    )
    webdriver.ActionChains(browser).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(
        Keys.SHIFT
    ).perform()
    return finished(browser, index)


#: A 120x40 PNG built with the standard library, displayed through _repr_png_ (typed
#: line by line: no indentation).
PICTURE = """import struct, zlib
def chunk(t, d): return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))
rows = b''.join(b'\\0' + b'\\x30\\x60\\xc0' * 120 for _ in range(40))
ihdr = struct.pack('>IIBBBBB', 120, 40, 8, 2, 0, 0, 0)
body = chunk(b'IHDR', ihdr) + chunk(b'IDAT', zlib.compress(rows)) + chunk(b'IEND', b'')
png = b'\\x89PNG\\r\\n\\x1a\\n' + body
type('Picture', (), {'_repr_png_': lambda self: png})()"""


def wait_png(browser: Any, cell: WebElement, what: str) -> None:
    """A PNG in the cell's output that the browser decoded, over 100 pixels wide."""
    _wait(
        browser,
        lambda d: d.execute_script(
            "const i = arguments[0].querySelector('img[src^=\"data:image/png\"]');"
            "return i !== null && i.complete && i.naturalWidth > 100;",
            cell,
        ),
        f"{what}: a decoded PNG in the cell's output",
    )


def kernel_containers(pid: int) -> list[str]:
    """Containers (running or not) a symbi kernel process made, by their host label."""
    from symbi_jupyter.sandboxes.docker.options import HOST_LABEL
    from symbi_jupyter.sandboxes.supervisor.proctree import host_tag

    done = subprocess.run(
        ["docker", "ps", "--all", "--quiet", "--filter", f"label={HOST_LABEL}={host_tag(pid)}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


LAUNCHER_NOTEBOOKS = ".jp-LauncherCard[data-category=Notebook]"


def symbi_kernel_pids(lab: Lab) -> list[int]:
    return [p for p in lab.kernel_pids() if p in _pids_with("symbi_jupyter.kernel")]


def test_symbi_kernel_from_the_launcher_keeps_state_plots_and_restarts(lab, driver) -> None:
    """The launcher's "Python (symbi sandbox) · Tier1" card: a notebook whose cells
    run in one Tier1 container, so a variable carries over; `%matplotlib inline` and
    a plot show a PNG (where the image has matplotlib); the toolbar's restart ends the
    session's container, and the restarted kernel starts from nothing and runs."""
    require_tier("docker")
    driver.get(f"{lab.url}/lab?reset")
    card = _wait(
        driver,
        lambda d: next(
            (
                c
                for c in d.find_elements(By.CSS_SELECTOR, LAUNCHER_NOTEBOOKS)
                if "symbi sandbox" in c.text and "Tier1" in c.text
            ),
            None,
        ),
        "the launcher card of the Tier1 symbi kernel",
    )
    shot(driver, "launcher")
    card.click()
    _wait(driver, lambda d: _visible(d, ".jp-NotebookPanel:not(.lm-mod-hidden)"), "notebook")
    wait_idle(driver)

    type_and_run(driver, "x = 41")
    answer = type_and_run(driver, "x + 1")
    assert re.search(r"\b42\b", output_text(answer)), output_text(answer)
    assert "Tier1" in answer.find_element(By.CSS_SELECTOR, ".symbi-result").text
    (pid,) = symbi_kernel_pids(lab)
    assert kernel_containers(pid), "no container holds the session"

    # A PNG the code makes with the standard library, shown through _repr_png_: the
    # image path from the sandbox to the page, with or without matplotlib.
    picture = type_and_run(driver, PICTURE)
    wait_png(driver, picture, "the _repr_png_ picture")
    probe = type_and_run(driver, "import matplotlib")
    no_matplotlib = "No module named 'matplotlib'" in output_text(probe)
    if not no_matplotlib:
        plot = type_and_run(driver, "%matplotlib inline\nimport matplotlib.pyplot as plt")
        assert "Error" not in output_text(plot), output_text(plot)
        plot = type_and_run(driver, "plt.plot([1, 3, 2]);")
        wait_png(driver, plot, "the matplotlib plot")
        shot(driver, "symbi-kernel-plot")

    toolbar_button(driver, "restart").click()
    _wait(driver, lambda d: _visible(d, ".jp-Dialog .jp-mod-accept"), "restart dialog").click()
    _wait(driver, lambda d: symbi_kernel_pids(lab) not in ([], [pid]), "a new kernel process")
    wait_idle(driver)
    assert wait_until(lambda: not kernel_containers(pid), 60), "the old session's container stayed"
    gone = type_and_run(driver, "x")
    assert "NameError" in output_text(gone), output_text(gone)
    again = type_and_run(driver, "x = 1\nx + 1")
    assert re.search(r"\b2\b", output_text(again)), output_text(again)
    shot(driver, "symbi-kernel-restarted")
    if no_matplotlib:
        from symbi_jupyter import SandboxOrchestrator, SecurityTier

        orch = SandboxOrchestrator()
        try:
            image = orch.sandbox(SecurityTier.TIER1).image
        finally:
            orch.close()
        pytest.skip(
            f"all else passed, but no matplotlib plot was checked: the Tier1 image {image} "
            "has no matplotlib (the kernel said: No module named 'matplotlib')"
        )


#: Executed by nbclient in the server's environment (full rendering, as a colleague's
#: notebook has it): a short cell's badge, a 3 s cell's badge with its sparkline, and
#: the tier table.
SHARED_CELLS = [
    "%load_ext symbi_jupyter",
    "%%symbi --native\nprint('short')",
    "%%symbi --native\nimport time\nblock = bytearray(40 * 2**20)\ntime.sleep(3)\nprint('slow')",
    "%symbi_tiers",
]
EXECUTE = """import sys, nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, kernel_name="python3", timeout=300, startup_timeout=120).execute()
nbformat.write(nb, sys.argv[1])
"""

#: Per output of every code cell: its text as shown, and its sparklines' sizes (and,
#: for an <img>, whether the browser decoded it).
READ_OUTPUTS = """
return [...document.querySelectorAll(
    '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-OutputArea-output')].map((o) => ({
  text: o.innerText,
  badges: o.querySelectorAll('.symbi-result').length,
  sparklines: [...o.querySelectorAll('.symbi-sparkline')].map((s) => {
    const r = s.getBoundingClientRect();
    return {tag: s.tagName.toLowerCase(), width: r.width, height: r.height,
            decoded: s.tagName === 'IMG' ? s.complete && s.naturalWidth > 0 : true};
  }),
}));
"""


def _trusted(browser: Any) -> bool | None:
    """What the status bar's trust item says: 'Notebook trusted', 'Notebook not
    trusted: 0 of 4 code cells trusted.' (None: not shown yet)."""
    item = _visible(browser, ".jp-StatusItem-trust")
    words = (item.get_attribute("title") or "") if item else ""
    if not words.startswith("Notebook"):
        return None
    return "not trusted" not in words


def test_an_untrusted_notebook_shows_badges_as_a_trusted_one_does(lab, driver) -> None:
    """A notebook executed elsewhere, opened fresh (untrusted: JupyterLab sanitizes its
    HTML) shows every output as the same notebook trusted (signed with `jupyter trust`):
    the same text, nothing stray such as an SVG <title>, no markup as text, and the
    sparkline drawn (decoded, with an area)."""
    untrusted = write_notebook(lab, "shared.ipynb", "python3", SHARED_CELLS)
    done = subprocess.run(
        [sys.executable, "-c", EXECUTE, str(untrusted)],
        env=lab.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    nb = nbformat.read(untrusted, as_version=4)
    badges = sum(
        MIME_TYPE in output.get("data", {}) for cell in nb.cells for output in cell.outputs
    )
    assert badges == 2, f"{badges} badges in the executed notebook"
    # Trust is by the notebook's digest: the signed copy must differ from the other.
    nb.metadata["copy"] = "trusted"
    trusted = lab.root / "shared-trusted.ipynb"
    nbformat.write(nb, trusted)
    signed = subprocess.run(
        [sys.executable, "-m", "jupyter", "trust", str(trusted)],
        env=lab.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert signed.returncode == 0, signed.stderr

    seen = {}
    for name in ("shared-trusted.ipynb", "shared.ipynb"):
        open_notebook(driver, lab, name)
        _wait(
            driver,
            lambda d: sum(o["badges"] for o in d.execute_script(READ_OUTPUTS)) >= badges,
            f"the badges of {name}",
        )
        _wait(
            driver,
            lambda d: all(
                s["decoded"] for o in d.execute_script(READ_OUTPUTS) for s in o["sparklines"]
            ),
            f"the sparklines of {name} decoded",
        )
        # The status bar's shield says which it is, so the comparison compares something.
        wanted = name == "shared-trusted.ipynb"
        _wait(
            driver,
            lambda d, wanted=wanted: _trusted(d) is wanted,
            f"{name} shown as {'trusted' if wanted else 'not trusted'}",
        )
        seen[name] = driver.execute_script(READ_OUTPUTS)
        shot(driver, name.removesuffix(".ipynb"))
    trusted_view, untrusted_view = seen["shared-trusted.ipynb"], seen["shared.ipynb"]
    assert any(o["sparklines"] for o in trusted_view), f"no sparkline to compare: {trusted_view}"
    assert len(untrusted_view) == len(trusted_view)
    for mine, theirs in zip(untrusted_view, trusted_view, strict=True):
        assert mine["text"] == theirs["text"], "untrusted output differs from trusted"
        assert mine["badges"] == theirs["badges"], (mine, theirs)
        assert len(mine["sparklines"]) == len(theirs["sparklines"]), (mine, theirs)
        for spark in mine["sparklines"]:
            assert spark["width"] > 0 and spark["height"] > 0 and spark["decoded"], spark
        shown = [m for m in ("<svg", "<title", "<div", "&lt;") if m in mine["text"]]
        assert not shown, f"markup shows as text: {shown} in {mine['text']!r}"

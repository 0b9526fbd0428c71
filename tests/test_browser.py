"""The tour and tier-ladder notebooks, executed, converted to HTML with nbconvert and
rendered in headless Chromium: badges, usage bars, sparklines and the bench's chart
must be elements on the page, not escaped text. The HTML and a screenshot of each stay
in out/browser-check/ (CI lists that folder)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import install as install_kernelspec
from nbconvert import HTMLExporter
from nbconvert.preprocessors import ExecutePreprocessor

from symbi_jupyter import SandboxOrchestrator, SecurityTier
from symbi_jupyter.render import MIME_TYPE

from .helpers import need

ROOT = Path(__file__).resolve().parent.parent
ARTEFACTS = ROOT / "out" / "browser-check"
BROWSER_SECONDS = 60
WIDTH = 1200

# Appended to a copy of the page: measures what the browser laid out and leaves it in
# the DOM as JSON, which --dump-dom then prints. `points` exists only on a polyline
# parsed as SVG, so it proves the sparkline is SVG and not an unknown HTML tag.
PROBE = """<script>(() => {
  const box = (e) => { const r = e.getBoundingClientRect(); return [r.width, r.height]; };
  const all = (root, sel) => [...root.querySelectorAll(sel)];
  const found = {
    height: document.documentElement.scrollHeight,
    badges: all(document, "div.symbi-result").map((b) => ({
      box: box(b),
      bars: all(b, ".symbi-bar").map((bar) => ({
        box: box(bar), fills: all(bar, ".symbi-bar-fill").map((f) => f.style.width),
      })),
    })),
    sparklines: all(document, ".symbi-sparkline").map((s) => ({
      img: s instanceof HTMLImageElement, decoded: s.complete && s.naturalWidth > 0,
      box: box(s), src: s.getAttribute("src") || "",
    })),
    benchCharts: all(document, ".symbi-bench-chart").map((s) => ({
      svg: s instanceof SVGSVGElement, box: box(s),
      bars: all(s, "rect.symbi-bench-bar").map((r) => r.width.baseVal.value),
      claims: all(s, "line.symbi-bench-claim").length,
    })),
  };
  const out = document.createElement("script");
  out.type = "application/json";
  out.id = "symbi-probe";
  out.textContent = JSON.stringify(found);
  document.body.append(out);
})();</script>"""


class _VisibleText(HTMLParser):
    """The page's text outside <script> and <style>: where escaped markup would show."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = 0
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.hidden += tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        self.hidden -= tag in ("script", "style")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)


def visible_text(page: str) -> str:
    parser = _VisibleText()
    parser.feed(page)
    return "".join(parser.parts)


def chromium(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One headless Chromium run; offline (no host resolves), so the template's CDN
    scripts fail at once instead of depending on the network."""
    command = [
        "chromium",
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        *args,
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=BROWSER_SECONDS)
    assert done.returncode == 0, f"chromium exited {done.returncode}: {done.stderr[-2000:]}"
    return done


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is no PNG"
    assert len(data) > 20_000, f"{path}: {len(data)} bytes, too small to show a notebook"
    return struct.unpack(">II", data[16:24])


def require_containers() -> None:
    orch = SandboxOrchestrator()
    try:
        availability = orch.availability()
    finally:
        orch.close()
    for tier, name in ((SecurityTier.TIER1, "docker"), (SecurityTier.TIER2, "gvisor")):
        need(availability[tier].ok, availability[tier].reason, tier=name)


@pytest.fixture
def notebook_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The kernel environment of scripts/_env.sh notebook_env, but with the full
    (not stable) rendering; isolated_config has already removed SYMBIONT_* and the
    stable switch. Returns a scratch directory."""
    monkeypatch.setenv("SYMBIONT_NATIVE_MAX_CPU_CORES", "1")
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    # A python3 kernelspec for this interpreter, ahead of any the user has installed.
    install_kernelspec(prefix=str(tmp_path / "kernels"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "kernels" / "share" / "jupyter"))
    return tmp_path


@pytest.mark.parametrize("name", ["00-tour", "01-tier-ladder"])
def test_notebook_renders_in_chromium(name: str, notebook_env: Path) -> None:
    need(
        shutil.which("chromium") is not None,
        "no chromium on PATH (Debian: apt-get install chromium)",
        tier="browser",
    )
    if name == "01-tier-ladder":
        require_containers()

    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    run_dir = notebook_env / "run"
    run_dir.mkdir()
    # 300 s a cell: notebook 01 ends with %symbi_bench --quick, every tier measured.
    ExecutePreprocessor(kernel_name="python3", timeout=300, startup_timeout=60).preprocess(
        nb, {"metadata": {"path": str(run_dir)}}
    )
    badges_expected = sum(
        MIME_TYPE in output.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert badges_expected >= 3, f"{name}: only {badges_expected} results with statistics"

    # The default template and options, as `jupyter nbconvert --to html` gives a user.
    page, _ = HTMLExporter().from_notebook_node(nb)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    html_path = ARTEFACTS / f"{name}.html"
    html_path.write_text(page, encoding="utf-8")
    head, body_end, tail = page.rpartition("</body>")
    assert body_end, "nbconvert's page has no </body>"
    probe_path = notebook_env / f"{name}.probe.html"
    probe_path.write_text(head + PROBE + body_end + tail, encoding="utf-8")

    dom = chromium(probe_path.as_uri(), notebook_env / "profile", "--dump-dom").stdout
    match = re.search(r'<script type="application/json" id="symbi-probe">(.*?)</script>', dom)
    assert match, f"the probe did not run; DOM starts {dom[:500]!r}"
    found = json.loads(match.group(1))

    # A full-page screenshot: as tall as the page the probe measured.
    height = min(max(int(found["height"]), 800), 16000)
    png_path = ARTEFACTS / f"{name}.png"
    png_path.unlink(missing_ok=True)
    chromium(
        html_path.as_uri(),
        notebook_env / "profile",
        f"--window-size={WIDTH},{height}",
        f"--screenshot={png_path}",
    )
    assert png_size(png_path) == (WIDTH, height)

    # Markup shown as text would appear in the page's text, or escaped in the DOM.
    text = visible_text(dom)
    shown = [text[i : i + 200] for m in ('<div class="symbi-', "<svg") if (i := text.find(m)) >= 0]
    assert not shown, f"{name}: markup shows as text: {shown}"
    escaped = [m for m in ('&lt;div class="symbi-', "&lt;svg") if m in dom]
    assert not escaped, f"{name}: escaped markup in the DOM: {escaped}"

    badges = found["badges"]
    assert len(badges) == badges_expected, f"{name}: {len(badges)} badges on the page"
    for badge in badges:
        assert min(badge["box"]) > 0, f"{name}: a badge with no area: {badge}"
        assert badge["bars"], f"{name}: a badge without usage bars: {badge}"
        for bar in badge["bars"]:
            assert bar["box"][0] > 0, f"{name}: a bar with no width: {bar}"
            assert len(bar["fills"]) == 1, f"{name}: a bar without one fill: {bar}"
            assert re.fullmatch(r"\d+(\.\d+)?%", bar["fills"][0]), bar

    charts = found["benchCharts"]
    if name == "01-tier-ladder":
        # %symbi_bench --quick: start-up cold and warm, and throughput, for 4 tiers.
        assert len(charts) == 1, f"{name}: {len(charts)} bench charts on the page"
        chart = charts[0]
        assert chart["svg"] and min(chart["box"]) > 0, f"{name}: bench chart not SVG: {chart}"
        assert len(chart["bars"]) == 12 and min(chart["bars"]) > 0, chart
        assert chart["claims"] == 8, chart

    for spark in found["sparklines"]:
        # An image of an SVG (JupyterLab's sanitizer keeps it), decoded by the browser.
        assert spark["img"] and spark["decoded"], f"{name}: sparkline not shown: {spark}"
        assert min(spark["box"]) > 0, f"{name}: a sparkline with no area: {spark}"
        prefix = "data:image/svg+xml;base64,"
        assert spark["src"].startswith(prefix), spark
        svg = base64.b64decode(spark["src"][len(prefix) :]).decode()
        line = re.search(r'<polyline[^>]* points="([^"]*)"', svg)
        assert line and len(line.group(1).split()) >= 2, f"{name}: sparkline: {svg}"
    if name == "00-tour" and not found["sparklines"]:
        # The "slow" cell runs for 2 s, long enough for several memory samples.
        if "symbi-sparkline" not in page:
            # An xfail, not need(): a known gap in the rendering, not a facility this
            # host lacks (SYMBI_REQUIRE_TIERS must not turn it into a failure).
            pytest.xfail("the memory sparkline (.symbi-sparkline) is not rendered yet")
        pytest.fail("the tour's HTML has a sparkline, but the rendered page has none")

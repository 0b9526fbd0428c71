"""``symbi-jupyter bench`` and ``%symbi_bench``: real runs through real sandboxes, at a
tiny workload size and one run each (no timing is asserted, only what the figures
are: their keys, types, and what holds by construction)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ipykernel.kernelspec import install as install_kernelspec
from jupyter_client.manager import start_new_kernel
from traitlets.config import Config

from symbi_jupyter import SandboxOrchestrator, SecurityTier
from symbi_jupyter.bench import BenchReport, Spread, run_bench
from symbi_jupyter.bench.workloads import BASE_COUNTS, QUESTIONS
from symbi_jupyter.cli import main
from symbi_jupyter.render import ResultDisplay
from symbi_jupyter.render.bench import render_bench_html, render_bench_text

from .helpers import need
from .test_kernel import run

TINY = ["--quick", "--runs", "1", "--workload-scale", "0.05"]
FIGURE = re.compile(r"\d+(\.\d+)? (ms|s|B|KiB|MiB|GiB)\b")


def _docker_ok() -> None:
    orch = SandboxOrchestrator()
    try:
        availability = orch.availability()[SecurityTier.TIER1]
    finally:
        orch.close()
    need(availability.ok, availability.reason, tier="docker")


def _bench_env(mp: pytest.MonkeyPatch, root: Path, work: Path, native: bool = True) -> Path:
    """The environment of a bench run: no host configuration, tier None allowed (or
    not) in ``work``; returns the (empty) Jupyter config directory."""
    for key in list(os.environ):
        if key.startswith("SYMBIONT_"):
            mp.delenv(key)
    mp.delenv("SYMBI_JUPYTER_STABLE_OUTPUT", raising=False)
    config = root / "jupyter-config"
    config.mkdir(exist_ok=True)
    mp.setenv("JUPYTER_CONFIG_DIR", str(config))
    mp.setenv("JUPYTER_CONFIG_PATH", "")
    mp.setenv("XDG_STATE_HOME", str(root / "state"))
    mp.setenv("SYMBIONT_NATIVE_WORKING_DIR", str(work))
    if native:
        mp.setenv("SYMBIONT_ALLOW_NATIVE_EXECUTION", "true")
    return config


def bench(capsys: Any, *argv: str) -> tuple[int, str, str]:
    status = main(["bench", *argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One real run of the command at tier None and Tier1, writing JSON and HTML."""
    _docker_ok()
    root = tmp_path_factory.mktemp("bench")
    work = Path("/tmp") / f"symbi-test-bench-{uuid.uuid4().hex[:10]}"
    work.mkdir(mode=0o711)  # the run user must traverse it (tmp_path is 0700 as root)
    json_path, html_path = root / "bench.json", root / "bench.html"
    out, err = io.StringIO(), io.StringIO()
    try:
        with pytest.MonkeyPatch.context() as mp:
            _bench_env(mp, root, work)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                files = ["--json", str(json_path), "--html", str(html_path)]
                status = main(["bench", *TINY, "--tiers", "none,docker", *files])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    yield {
        "status": status,
        "stdout": out.getvalue(),
        "stderr": err.getvalue(),
        "json": json.loads(json_path.read_text()) if json_path.exists() else {},
        "html": html_path.read_text() if html_path.exists() else "",
    }


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def test_the_json_is_keyed_by_tier_with_numbers(cli_run: dict[str, Any]) -> None:
    assert cli_run["status"] == 0, cli_run["stderr"]
    data = cli_run["json"]
    assert set(data) == {"None", "Tier1", "run"}
    for tier in ("None", "Tier1"):
        fig = data[tier]
        assert set(fig) == {
            "available",
            "reason",
            "detail",
            "startup",
            "throughput",
            "memory_overhead",
            "isolation",
            "seed",
            "notes",
        }
        assert fig["available"] is True and fig["reason"] is None, fig
        for path in ("cold", "warm"):
            spread = fig["startup"][path]
            assert set(spread) == {"median_seconds", "min_seconds", "max_seconds", "runs"}
            assert all(_number(v) for v in spread.values())
            assert 0 < spread["min_seconds"] <= spread["median_seconds"] <= spread["max_seconds"]
            assert spread["runs"] == 1
        assert isinstance(fig["startup"]["warm_prepared"], int)
        throughput = fig["throughput"]
        assert set(throughput) == {"summary", "workloads", "seconds"}
        assert set(throughput["workloads"]) == set(BASE_COUNTS) == set(throughput["seconds"])
        assert all(_number(v) and v > 0 for v in throughput["workloads"].values())
        assert all(_number(v) and v > 0 for v in throughput["seconds"].values())
        memory = fig["memory_overhead"]
        assert isinstance(memory["bytes"], int) and isinstance(memory["peak_bytes"], int)
        assert memory["peak_bytes"] > 0 and memory["method"] == "cgroup"
        assert set(fig["isolation"]) == set(QUESTIONS)
        assert all(isinstance(v, bool) for v in fig["isolation"].values())
        assert set(fig["seed"]) == {"startup", "throughput", "memory", "isolation"}
    none, tier1 = data["None"], data["Tier1"]
    # Tier None is the baseline: exactly 1.0 by construction, its overhead exactly 0.
    assert none["throughput"]["summary"] == 1.0
    assert set(none["throughput"]["workloads"].values()) == {1.0}
    assert none["memory_overhead"]["bytes"] == 0
    # Every other figure is measured against it in the same run.
    ratios = tier1["throughput"]["workloads"]
    seconds = none["throughput"]["seconds"]
    for name, ratio in ratios.items():
        assert ratio == pytest.approx(seconds[name] / tier1["throughput"]["seconds"][name])
    assert tier1["memory_overhead"]["bytes"] == (
        tier1["memory_overhead"]["peak_bytes"] - none["memory_overhead"]["peak_bytes"]
    )
    assert tier1["seed"]["startup"] == "~500 ms"
    # What notebook 01 finds: a container has its own host name, the host's kernel.
    assert tier1["isolation"]["host_name"] is True
    assert tier1["isolation"]["kernel"] is False
    run = data["run"]
    assert run["schema"] == "symbi-jupyter-bench/1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", run["date"])
    assert run["quick"] is True and run["runs"] == 1 and run["workload_scale"] == 0.05
    host = run["host"]
    assert host["cores"] == os.cpu_count() and host["kernel"].startswith("Linux ")
    assert host["cpu_model"] and host["python"] and host["docker"]
    assert set(run["methods"]) == {"startup", "throughput", "memory", "isolation"}


def test_the_table_is_the_seeds_with_the_measured_figure_beside(cli_run: dict[str, Any]) -> None:
    out = cli_run["stdout"]
    assert "The seed's performance table, measured on this host (quick run, 1 run each)" in out
    rows = {line.split("  ")[0]: line for line in out.splitlines() if "  ~" in line}
    assert set(rows) == {"None (native)", "Tier1 (Docker)"}
    tier1 = rows["Tier1 (Docker)"]
    for claim in ("~500 ms", "~95 %", "+128 MB", "Good"):
        assert claim in tier1
    assert len(FIGURE.findall(tier1)) >= 3, tier1  # cold, warm, memory: measured
    assert "5/6, sees: kernel" in tier1
    # The host and the date, and how each figure is taken.
    assert re.search(r"^\d{4}-\d\d-\d\dT.* · .* · \d+ cores · ", out, re.M), out[:400]
    assert "How each figure is taken:" in out and "geometric mean" in out
    # Before it starts, the run says how long it will take; then its progress.
    err = cli_run["stderr"]
    assert re.search(r"symbi bench \(quick\): None, Tier1, 1 run each; about \d+ (s|min)", err)
    assert "[symbi bench] Tier1 · throughput 1/1" in err


def test_the_html_has_an_inline_svg_chart_and_no_script(cli_run: dict[str, Any]) -> None:
    page = cli_run["html"]
    assert "<script" not in page.lower()
    charts = re.findall(r'<svg class="symbi-bench-chart".*?</svg>', page, re.S)
    assert len(charts) == 1
    bars = re.findall(r'<rect class="symbi-bench-bar" data-bar="(\w+)"', charts[0])
    # Start-up cold and warm, and throughput, for each of the two tiers.
    assert sorted(bars) == sorted(["cold", "warm", "measured"] * 2)
    assert charts[0].count('class="symbi-bench-claim"') == 4
    assert '<table class="symbi-bench-table"' in page


def test_an_unavailable_tier_is_a_row_that_says_why(
    tmp_path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """Really unavailable: Tier1's image does not exist, Tier3 has no guest."""
    config = _bench_env(monkeypatch, tmp_path, workdir)
    empty = tmp_path / "no-guest"
    empty.mkdir()
    (config / "jupyter_symbi_config.json").write_text(
        json.dumps(
            {
                "MicroVMSandbox": {"artifacts_dir": str(empty)},
                "DockerSandbox": {"image": "symbi-jupyter/no-such-image:none"},
            }
        )
    )
    json_path = tmp_path / "bench.json"
    status, out, err = bench(capsys, *TINY, "--tiers", "none,tier1,tier3", "--json", str(json_path))
    assert status == 0, err
    data = json.loads(json_path.read_text())
    assert set(data) == {"None", "Tier1", "Tier3", "run"}
    assert data["None"]["available"] is True
    assert data["None"]["throughput"]["summary"] == 1.0
    for tier, words in (("Tier1", "no-such-image"), ("Tier3", str(empty))):
        fig = data[tier]
        assert fig["available"] is False
        assert isinstance(fig["reason"], str) and fig["reason"]
        if tier == "Tier3" or "Docker engine" not in fig["reason"]:
            assert words in fig["reason"], fig["reason"]
        for figure in ("startup", "throughput", "memory_overhead", "isolation"):
            assert fig[figure] is None
    # In the table: the row, the seed's claims, and the reason under it.
    lines = out.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("Tier3 (microVM)  "))
    assert "~125 ms" in lines[row] and "Best" in lines[row]
    assert f"unavailable: {data['Tier3']['reason']}" in out
    assert f"unavailable: {data['Tier1']['reason']}" in out
    assert "(Tier1, Tier3 unavailable: the table says why)" in err


def test_without_native_execution_tier_none_is_refused_and_said(
    tmp_path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    _bench_env(monkeypatch, tmp_path, workdir, native=False)
    status, out, _ = bench(capsys, *TINY, "--tiers", "none", "--json")
    assert status == 1  # no tier could be measured
    data = json.loads(out)
    assert data["None"]["available"] is False
    assert data["None"]["reason"].startswith("PolicyViolation: native execution")


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--tiers", "tier9"], "unknown security tier 'tier9'; accepted"),
        (["--tiers", ","], "--tiers takes tier names"),
        (["--runs", "0"], "--runs must be at least 1"),
        (["--workload-scale", "0"], "--workload-scale must be above 0"),
        (["--html", "/nonexistent/bench.html"], "cannot write /nonexistent/bench.html: its"),
    ],
)
def test_bad_flags_are_one_line_errors(
    tmp_path: Path,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
    argv: list[str],
    words: str,
) -> None:
    _bench_env(monkeypatch, tmp_path, workdir)
    status, out, err = bench(capsys, *argv)
    assert status == 2
    assert out == "" and words in err


def test_the_stable_rendering_keeps_the_structure_and_leaves_the_figures_out(
    tmp_path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _bench_env(monkeypatch, tmp_path, workdir)
    orch = SandboxOrchestrator(config=Config({"NativeSandbox": {"spare_runs": 2}}))
    before = copy.deepcopy(orch.config)
    try:
        report = run_bench(orch, [SecurityTier.NONE], quick=True, runs=1, scale=0.05)
        # The caller's orchestrator is as it was: the cold path's settings were its own.
        assert orch.config == before
        assert orch.sandbox(SecurityTier.NONE).prestart_interpreter is True
    finally:
        orch.close()
    other: BenchReport = copy.deepcopy(report)
    other.date, other.host["cpu_model"], other.seconds = "1999-01-01T00:00:00+00:00", "X", 9
    fig = other.tiers[SecurityTier.NONE]
    fig.cold = fig.warm = Spread.of([9.0])
    fig.memory_peak = Spread.of([1e9])
    fig.notes.append("a note of this run only")
    stable, full = ResultDisplay(stable=True), ResultDisplay(stable=False)
    for render in (render_bench_text, render_bench_html):
        assert render(report, stable) == render(other, stable)
        assert render(report, full) != render(other, full)
    text = render_bench_text(report, stable)
    row = next(line for line in text.splitlines() if line.startswith("None (native)"))
    # The claims stay, the measured cells are empty; isolation is no figure.
    assert row.split()[:8] == ["None", "(native)", "~10", "ms", "100", "%", "Minimal", "None"]
    table = text.split("How each figure is taken:")[0]
    assert not FIGURE.search(table.replace("~10 ms", "")), table
    assert "<svg" not in render_bench_html(report, stable)
    assert '<svg class="symbi-bench-chart"' in render_bench_html(report, full)


# ---------------------------------------------------------------------- real kernels
def _run(kc: Any, code: str, timeout: float = 300) -> tuple[dict, list[dict]]:
    return run(kc, code, timeout)


def _progress_shown_then_emptied(outputs: list[dict]) -> None:
    shown = [
        m
        for m in outputs
        if m["msg_type"] == "display_data"
        and m["content"]["data"].get("text/plain", "").startswith("[symbi bench]")
    ]
    assert len(shown) == 1, [m["msg_type"] for m in outputs]
    display_id = shown[0]["content"]["transient"]["display_id"]
    updates = [
        m["content"]["data"]["text/plain"]
        for m in outputs
        if m["msg_type"] == "update_display_data"
        and m["content"]["transient"]["display_id"] == display_id
    ]
    assert updates and updates[-1] == ""
    assert all(u.startswith("[symbi bench] None · ") for u in updates[:-1])


def _table(outputs: list[dict], kind: str) -> dict:
    found = [m["content"]["data"] for m in outputs if m["msg_type"] == kind]
    tables = [d for d in found if "symbi-bench-table" in d.get("text/html", "")]
    assert len(tables) == 1, [m["msg_type"] for m in outputs]
    return tables[0]


@pytest.fixture
def kernel_env(tmp_path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    _bench_env(monkeypatch, tmp_path, workdir)
    # A python3 kernelspec for this interpreter, ahead of any other installed.
    install_kernelspec(prefix=str(tmp_path / "kernels"))
    assert main(["install-kernel", "--prefix", str(tmp_path / "kernels")]) == 0
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "kernels" / "share" / "jupyter"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    return tmp_path


def test_the_magic_in_an_ipython_kernel(kernel_env: Path) -> None:
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        reply, _ = _run(kc, "%load_ext symbi_jupyter")
        assert reply["status"] == "ok"
        html_path = kernel_env / "magic.html"
        reply, outputs = _run(
            kc, f"%symbi_bench {' '.join(TINY)} --tiers none -o rep --html {html_path}"
        )
        assert reply["status"] == "ok", reply
        table = _table(outputs, "execute_result")
        assert "None (native)" in table["text/plain"]
        assert '<svg class="symbi-bench-chart"' in table["text/html"]
        assert "<script" not in table["text/html"].lower()
        _progress_shown_then_emptied(outputs)
        said = "".join(m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream")
        assert "symbi bench (quick): None, 1 run each; about" in said
        assert f"wrote HTML: {html_path}" in said and html_path.exists()
        reply, outputs = _run(kc, "print(rep.to_json()['None']['throughput']['summary'])")
        assert [m["content"]["text"] for m in outputs if m["msg_type"] == "stream"] == ["1.0\n"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_the_magic_in_the_symbi_kernel(kernel_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYMBI_KERNEL_TIER", "none")
    km, kc = start_new_kernel(kernel_name="symbi")
    try:
        reply, outputs = _run(kc, f"%symbi_bench {' '.join(TINY)} --tiers none")
        assert reply["status"] == "ok", reply
        table = _table(outputs, "display_data")
        assert "None (native)" in table["text/plain"] and "~10 ms" in table["text/plain"]
        assert '<svg class="symbi-bench-chart"' in table["text/html"]
        _progress_shown_then_emptied(outputs)
        reply, _ = _run(kc, "%symbi_bench -o report")
        assert reply["status"] == "error" and reply["ename"] == "KernelUsageError"
        assert "variables live in the sandbox" in reply["evalue"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)

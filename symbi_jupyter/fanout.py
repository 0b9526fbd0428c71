"""``orch.map``: many snippets at one tier, run a bounded number at once.

Results come back in input order. Each item is an ordinary run of
:meth:`~.orchestrator.SandboxOrchestrator.execute_code`, audited as any other; what
would refuse every item (the tier, the limits, the language, the shared environment,
a tier this host cannot run) is refused once, audited, before anything runs. A limit
that stops one item is that item's result; an error that keeps one item from running
(a refusal of its own environment, a backend failure) is that item's result too,
with ``success`` False and the reason in ``error``. The stop button stops every
running item through the runs' own stop path (:class:`~.sandboxes._sigint.StopButton`)
and starts no other: nothing is left running.

Where the items run is an :class:`Executor`: this host's orchestrator here; a cluster
plugs in its own (:class:`~.cluster.fanout.ClusterExecutor`: how many at once, what
it can run, a node lost mid-item), and the rest is unchanged.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from . import policy
from .errors import ConfigError, MapInterrupted, SymbiError, TierUnavailable
from .limits import ResourceLimits, host_cores
from .result import ExecutionResult
from .sandboxes._sigint import StopButton
from .tiers import SecurityTier

if TYPE_CHECKING:
    from .orchestrator import SandboxOrchestrator

#: One item of a map: code, or (code, environment).
Item = str | bytes | tuple[str | bytes, Mapping[str, str]]


@dataclass(frozen=True)
class Plan:
    """What every item of one map shares, admitted once."""

    tier: SecurityTier
    limits: ResourceLimits
    language: str | None
    env: dict[str, str]
    #: Run an item whose node the cluster lost once more, on another node.
    retry_lost: bool = False


class Executor:
    """Where a map's items run: this host, through its orchestrator. A cluster
    subclasses it: what it can run, how many items at once it has room for, and
    (through ``execute_code``, which dispatches there) where each item goes. ``run``
    is called in a thread of the map's pool and must end when the map's stop button
    is pressed: a run that waits within a :class:`~.sandboxes._sigint.SigintLatch`,
    as every sandbox's does, sees the press as its SIGINT."""

    def __init__(self, orchestrator: SandboxOrchestrator) -> None:
        self.orchestrator = orchestrator

    def check(self, plan: Plan) -> None:
        """Refuse (raise) what would refuse every item, before any runs: this host
        cannot run the tier, or its interpreter is not allowed."""
        orch = self.orchestrator
        sandbox = orch.sandbox(plan.tier)
        available = sandbox.availability()
        if not available.ok:
            raise TierUnavailable(available.reason)
        language = plan.language or orch.default_language
        executable = None
        if plan.tier is SecurityTier.NONE and not plan.language:
            executable = orch._default_executable()
        orch._run_policy(plan.tier, language, executable)

    def slots(self, plan: Plan) -> int:
        """How many items run at once when the call does not say:
        ``map_concurrency``, else one per core, one per two cores for Tier3 (each
        item boots a VM), and no more than this host's memory holds at the items'
        memory limit."""
        if self.orchestrator.map_concurrency:
            return self.orchestrator.map_concurrency
        cores = host_cores()
        width = max(1, cores // 2) if plan.tier is SecurityTier.TIER3 else cores
        memory = _host_memory_mb()
        if memory and plan.limits.max_memory_mb:
            width = min(width, int(memory // plan.limits.max_memory_mb))
        return max(1, width)

    def run(self, code: str | bytes, env: dict[str, str], plan: Plan) -> ExecutionResult:
        """One item, as any run: audited, a stopping limit in its result."""
        return self.orchestrator.execute_code(
            plan.tier, code, env=env, language=plan.language, limits=plan.limits
        )


def run_map(
    executor: Executor,
    items: Iterable[Item],
    tier: SecurityTier | str | None = None,
    limits: ResourceLimits | None = None,
    env: Mapping[str, str] | None = None,
    language: str | None = None,
    *,
    progress: bool | None = None,
    concurrency: int | None = None,
    retry_lost: bool = False,
) -> list[ExecutionResult]:
    """Run ``items`` on ``executor`` and return their results in input order (see
    :meth:`.SandboxOrchestrator.map`)."""
    orch = executor.orchestrator
    # One record for the whole map, written only if it is refused: each item that
    # runs is audited as its own run.
    record: dict[str, Any] = {"event": "map", "tier": str(tier)}
    try:
        listed = _listed(items)
        record["items"] = len(listed)
        pairs = [_item(i, item) for i, item in enumerate(listed)]
        width = _concurrency(concurrency)
        if type(retry_lost) is not bool:
            raise ConfigError(
                f"retry_lost={retry_lost!r}: give True (an item whose node the cluster "
                "loses runs once more, on another node) or False (it is a failed result)"
            )
        plan = _admit(executor, tier, limits, env, language, record, retry_lost)
        width = width or executor.slots(plan)
    except SymbiError as exc:
        orch._audit_refused(record, exc)
        raise
    if not pairs:
        return []
    shared = plan.env
    return _fan_out(
        executor,
        [(code, {**shared, **own}) for code, own in pairs],
        plan,
        min(width, len(pairs)),
        _show_progress(progress),
    )


def _fan_out(
    executor: Executor,
    pairs: list[tuple[str | bytes, dict[str, str]]],
    plan: Plan,
    width: int,
    show: bool,
) -> list[ExecutionResult]:
    button = StopButton()
    results: list[ExecutionResult | None] = [None] * len(pairs)

    def one(index: int) -> ExecutionResult | None:
        if button.pressed:
            return None  # picked up as the stop was pressed: never started
        code, env = pairs[index]
        with button.applied():
            try:
                return executor.run(code, env, plan)
            except KeyboardInterrupt as exc:  # only the button reaches this thread
                stopped = exc.args[0] if exc.args else None
                return stopped if isinstance(stopped, ExecutionResult) else None
            except Exception as exc:
                if not isinstance(exc, SymbiError):
                    executor.orchestrator.log.warning("map item %d failed", index, exc_info=True)
                return failed_result(code, plan, exc)

    bar = _bar(len(pairs), plan.tier, show)
    pool = concurrent.futures.ThreadPoolExecutor(width, thread_name_prefix="symbi-map")
    futures = {pool.submit(one, i): i for i in range(len(pairs))}
    failed = 0
    try:
        for future in concurrent.futures.as_completed(futures):
            result = results[futures[future]] = future.result()
            if bar is not None:
                if result is None or not result.success:
                    failed += 1
                    bar.set_postfix(failed=failed, refresh=False)
                bar.update(1)
    except KeyboardInterrupt:
        button.press()
        pool.shutdown(wait=False, cancel_futures=True)
        _wait_out(futures)
        for future, index in futures.items():
            if not future.cancelled():
                results[index] = future.result()
        running = sum(1 for r in results if r is not None and r.interrupted is not None)
        raise MapInterrupted(
            f"map stopped: {sum(r is not None for r in results) - running} of "
            f"{len(pairs)} items had finished, {running} running were stopped, the "
            "rest never started",
            results,
        ) from None
    finally:
        pool.shutdown(wait=True)
        if bar is not None:
            bar.close()
    # Without the stop button every item has its result.
    return cast(list[ExecutionResult], results)


def _wait_out(futures: Iterable[concurrent.futures.Future[Any]]) -> None:
    """Wait until every started item has stopped; a second press of the stop button
    while they stop is ignored, so none is left running unwatched."""
    # A future cancelled by shutdown() never counts as done for wait().
    started = [f for f in futures if not f.cancelled()]
    while True:
        try:
            concurrent.futures.wait(started)
            return
        except KeyboardInterrupt:
            continue


def _listed(items: Iterable[Item]) -> list[Any]:
    if isinstance(items, str | bytes) or not isinstance(items, Iterable):
        raise ConfigError(
            f"map takes a list of items (code strings or (code, env) pairs), not "
            f"{type(items).__name__}: put a single snippet in a list, [code]"
        )
    return list(items)


def _item(index: int, item: Any) -> tuple[str | bytes, dict[str, str]]:
    """(code, its own environment) of one item; ConfigError if it is neither code
    nor a (code, env) pair."""
    if isinstance(item, str | bytes):
        return item, {}
    if (
        isinstance(item, tuple | list)
        and len(item) == 2
        and isinstance(item[0], str | bytes)
        and isinstance(item[1], Mapping)
    ):
        return item[0], dict(item[1])
    shown = repr(item)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise ConfigError(
        f"map item {index} is {shown} ({type(item).__name__}): give code (a string) or "
        "a (code, env) pair whose env is a dict of strings"
    )


def _concurrency(value: int | None) -> int | None:
    if value is None:
        return None
    if type(value) is not int or value < 1:
        raise ConfigError(
            f"concurrency={value!r}: give how many items may run at once, a whole "
            "number 1 or more (None: SandboxOrchestrator.map_concurrency)"
        )
    return value


def _admit(
    executor: Executor,
    tier: SecurityTier | str | None,
    limits: ResourceLimits | None,
    env: Mapping[str, str] | None,
    language: str | None,
    record: dict[str, Any],
    retry_lost: bool = False,
) -> Plan:
    """The policy decisions every item shares, made once (noted in ``record``);
    raises the refusal."""
    orch = executor.orchestrator
    chosen = orch._admit_tier(tier, record)
    effective = orch._admit_limits(limits, record)
    if language is not None:
        policy.language_spec(language)
    if env is not None and not isinstance(env, Mapping):
        raise ConfigError(f"env must be a dict of strings, not {type(env).__name__}")
    plan = Plan(chosen, effective, language, policy.check_env(env or {}), retry_lost)
    executor.check(plan)
    return plan


def failed_result(code: str | bytes, plan: Plan, exc: Exception) -> ExecutionResult:
    """The result of an item that never ran: ``error`` says why."""
    data = code.encode("utf-8", "surrogateescape") if isinstance(code, str) else code
    return ExecutionResult(
        tier=plan.tier,
        limits=plan.limits,
        language=plan.language or "",
        code_sha256=hashlib.sha256(data).hexdigest(),
        error=f"{type(exc).__name__}: {exc}",
    )


def _show_progress(progress: bool | None) -> bool:
    """An explicit choice, else a bar unless the stable rendering is on (nbval
    compares its stderr, and a bar is all figures that vary)."""
    if progress is not None:
        return bool(progress)
    from .render.options import display_options

    return not display_options(None).stable


def _bar(total: int, tier: SecurityTier, show: bool) -> Any:
    """A tqdm bar: a widget in a notebook with ipywidgets, text on stderr elsewhere;
    None when not shown."""
    if not show:
        return None
    with warnings.catch_warnings():
        # A notebook without ipywidgets: tqdm falls back to text, and warns once.
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm
    return tqdm(total=total, desc=f"symbi map ({tier.value})", unit="run", dynamic_ncols=True)


def _host_memory_mb() -> float | None:
    with contextlib.suppress(ValueError, OSError):
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    return None

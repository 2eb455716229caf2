"""Executor: dependency order, failures skip dependents only, reruns converge."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from local_ai.errors import IntegrityError
from local_ai.reconcile.executor import Handler, execute, ordered
from local_ai.reconcile.model import Action, Kind, Plan
from local_ai.reconcile.planner import plan
from tests.test_planner import converged, empty, manifest


def recording(log: list[str], fail: dict[str, BaseException] | None = None) -> dict[Kind, Handler]:
    fail = fail or {}

    def make(kind: Kind) -> Handler:
        def handler(action: Action) -> str:
            log.append(action.id)
            if action.id in fail:
                raise fail[action.id]
            return f"{kind.value} ok"

        return handler

    return {kind: make(kind) for kind in Kind}


def test_runs_in_dependency_order() -> None:
    m = manifest()
    p = plan(m, empty(m))
    log: list[str] = []
    report = execute(p, recording(log))
    assert report.ok
    for action in p.actions:
        for dep in action.depends_on:
            assert log.index(dep) < log.index(action.id)
    assert [o.status for o in report.outcomes] == ["done"] * len(p.actions)


def test_failed_action_skips_dependents_and_continues_independent_ones() -> None:
    m = manifest()
    p = plan(m, empty(m))
    log: list[str] = []
    error = IntegrityError("model.safetensors: sha256 mismatch", hint="run `local-ai apply` again")
    report = execute(p, recording(log, {"verify:general": error}))
    status = {o.action.id: o for o in report.outcomes}
    assert status["verify:general"].status == "failed"
    assert status["verify:general"].hint == "run `local-ai apply` again"
    assert status["convert:general"].status == "skipped"
    assert status["convert:general"].message == "verify:general did not complete"
    assert status["install:general"].status == "skipped"
    assert status["start-server"].status == "done"  # serves what did install
    assert status["install:coder"].status == "done"  # independent: carried on
    assert "convert:general" not in log
    assert not report.ok


def test_a_bug_in_a_handler_is_reported_not_raised() -> None:
    m = manifest()
    p = plan(m, empty(m))
    report = execute(p, recording([], {"fetch:coder": ZeroDivisionError("boom")}))
    failed = report.by_status("failed")
    assert [o.action.id for o in failed] == ["fetch:coder"]
    assert failed[0].message == "ZeroDivisionError: boom"
    assert "report it" in (failed[0].hint or "")


def test_interrupt_stops_cleanly() -> None:
    m = manifest()
    p = plan(m, empty(m))
    log: list[str] = []
    report = execute(p, recording(log, {"fetch:general": KeyboardInterrupt()}))
    assert report.interrupted
    ids = [o.action.id for o in report.outcomes]
    assert ids == [a.id for a in ordered(p.actions)]
    after = ids[ids.index("fetch:general") + 1 :]
    assert all(o.status == "skipped" for o in report.outcomes if o.action.id in after)
    assert log[-1] == "fetch:general"


def test_rerun_after_partial_failure_converges() -> None:
    """Apply the results of a run to the observed state the way the real handlers persist them,
    then plan again: only the failed part remains, and a second pass empties the plan."""
    m = manifest()
    observed = empty(m)
    first = plan(m, observed)
    report = execute(first, recording([], {"convert:general": IntegrityError("disk full")}))
    done = {o.action.id for o in report.outcomes if o.status == "done"}
    observed = _persist(observed, m, done)
    second = plan(m, observed)
    assert {a.id for a in second.actions} == {
        "verify:general",
        "convert:general",
        "install:general",
        "reload-aliases",
    }
    report = execute(second, recording([]))
    assert report.ok
    third = plan(m, _persist(observed, m, {o.action.id for o in report.outcomes}))
    assert not third.has_changes, third


def _persist(observed, m, done: set[str]):  # type: ignore[no-untyped-def]
    """What the real handlers record: lock entries, cached files, installs, server status."""
    full = converged(m)
    lock = dict(observed.lock)
    installed = dict(observed.installed)
    cached = set(observed.cached)
    digests = set(observed.store_digests)
    for alias in m.models:
        if f"resolve:{alias}" in done:
            lock[alias] = full.lock[alias]
        if f"fetch:{alias}" in done:
            cached.add(alias)
        if f"convert:{alias}" in done:
            digests |= full.store_digests
        if f"install:{alias}" in done:
            installed[alias] = full.installed[alias]
    resolved = {a: r for a, r in observed.resolved.items() if a not in lock}
    server = observed.server
    if "start-server" in done or "reload-aliases" in done:
        server = replace(
            full.server,
            aliases=tuple(installed),
            aliases_hash=full.server.aliases_hash if set(installed) == set(m.models) else "partial",
        )
    return replace(
        observed,
        lock=lock,
        installed=installed,
        cached=frozenset(cached),
        store_digests=frozenset(digests),
        resolved=resolved,
        server=server,
    )


def test_cycle_is_detected() -> None:
    a = Action("a", Kind.VERIFY, "model.x", "c", depends_on=("b",))
    b = Action("b", Kind.VERIFY, "model.x", "c", depends_on=("a",))
    with pytest.raises(ValueError, match="dependency cycle"):
        ordered((a, b))


def test_events_are_reported(capsys: pytest.CaptureFixture[str]) -> None:
    p = Plan("m", "o", (Action("x", Kind.VERIFY, "model.x", "why"),), ())
    seen: list[str] = []
    on: Callable[[Action], None] = lambda a: seen.append(f"start {a.id}")  # noqa: E731
    execute(
        p, recording([]), on_start=on, on_done=lambda o: seen.append(f"{o.status} {o.action.id}")
    )
    assert seen == ["start x", "done x"]

"""Each adapter fails in turn inside a real apply (fake hub, real conversion, the real daemon for
the server actions): the report shows what was done, what failed and what was skipped (exactly
the failed action's dependents); a rerun converges from there."""

from __future__ import annotations

from pathlib import Path

import pytest

from local_ai.errors import LocalAIError
from local_ai.manifest.load import load_manifest
from local_ai.reconcile.adapters import Adapters
from local_ai.reconcile.model import Kind
from local_ai.reconcile.run import RunOptions, apply_plan, make_plan
from tests.harness.fakehub import FakeHub
from tests.projects import HF, MLX, Project

MANIFEST = f"""version = 1
[server]
autostart = false
[benchmark]
on_apply = false
[models.chat]
repo = "{MLX}"
[models.conv]
repo = "{HF}"
quantize = "fp16"
[clients.zed]
"""

# What each failure must leave skipped (its dependents), by the action that fails.
CASES = {
    "resolve:conv": {"fetch:conv", "verify:conv", "convert:conv", "install:conv"},
    "fetch:conv": {"verify:conv", "convert:conv", "install:conv"},
    "verify:conv": {"convert:conv", "install:conv"},
    "convert:conv": {"install:conv"},
    "install:conv": set(),
    "write-client:zed": set(),
}


def _failing(adapters: Adapters, failing: str) -> None:
    """`failing`'s handler raises a typed error instead of running; every other one is real."""
    handlers = adapters.handlers()
    kind = Kind(failing.split(":")[0])
    real = handlers[kind]

    def broken(action):  # type: ignore[no-untyped-def]
        if action.id == failing:
            raise LocalAIError(f"injected failure in {failing}", hint="this is a test")
        return real(action)

    adapters.handlers = lambda: {**handlers, kind: broken}  # type: ignore[method-assign]


@pytest.mark.parametrize("failing", sorted(CASES))
def test_a_failing_adapter_skips_only_its_dependents_and_a_rerun_converges(
    tiny_hub: FakeHub, tmp_path: Path, failing: str
) -> None:
    manifest = tmp_path / "work" / "local-ai.toml"
    manifest.write_text(MANIFEST)
    loaded = load_manifest(manifest)
    options = RunOptions()
    snapshot, plan = make_plan(loaded, options)
    assert not plan.errors, plan.errors
    adapters = Adapters(snapshot)
    _failing(adapters, failing)
    result = apply_plan(snapshot, plan, options, adapters=adapters)
    report = result.report
    status = {o.action.id: o.status for o in report.outcomes}
    assert status[failing] == "failed"
    assert {a for a, s in status.items() if s == "skipped"} == CASES[failing]
    assert status["install:chat"] == "done"  # independent work went on
    assert result.generation is None  # a failed apply records no generation

    # The rerun plans only what is left and converges.
    snapshot, again = make_plan(load_manifest(manifest), options)
    assert again.has_changes
    assert "install:chat" not in {a.id for a in again.actions}
    second = apply_plan(snapshot, again, options)
    assert second.report.ok, [(o.action.id, o.message) for o in second.report.outcomes]
    _, final = make_plan(load_manifest(manifest), options)
    assert not final.has_changes, [a.id for a in final.actions]


CHAT = f'[models.chat]\nrepo = "{MLX}"\n'
# (manifest edit, apply --prune, the failing action, what it must leave skipped). Each step
# starts from the previous one converged; an added alias of the cached repo is a cheap
# "new model" whose benchmark depends on the server action that makes it served.
SERVER_STEPS: tuple[tuple[dict[str, str], bool, str, set[str]], ...] = (
    ({}, False, "start-server", {"benchmark:chat"}),
    ({"models": CHAT + CHAT.replace("chat", "two", 1)}, False, "reload-aliases", {"benchmark:two"}),
    (
        {"models": CHAT + CHAT.replace("chat", "three", 1), "server": "max_body_mb = 8"},
        True,
        "restart-server",
        {"benchmark:three"},
    ),
    ({"engine": "max_loaded_models = 1"}, False, "restart-engine", set()),
    ({"models": CHAT}, True, "remove:three", set()),
    ({"models": CHAT + CHAT.replace("chat", "four", 1)}, False, "benchmark:four", set()),
    (
        {"models": CHAT + CHAT.replace("chat", "five", 1) + "[clients.zed]\n"},
        True,
        "conform:five",
        set(),
    ),
)


def test_each_failing_server_action_skips_only_its_dependents_and_a_rerun_converges(
    tiny_hub: FakeHub, project: Project
) -> None:
    edits = {"models": CHAT, "server": "", "engine": ""}
    for edit, prune, failing, skipped in SERVER_STEPS:
        edits.update(edit)
        project.write(edits["models"], server=edits["server"], engine=edits["engine"], bench=True)
        options = RunOptions(prune=prune)
        snapshot, plan = make_plan(load_manifest(project.manifest), options)
        assert failing in {a.id for a in plan.actions}, (failing, [a.id for a in plan.actions])
        adapters = Adapters(snapshot)
        _failing(adapters, failing)
        report = apply_plan(snapshot, plan, options, adapters=adapters).report
        status = {o.action.id: o.status for o in report.outcomes}
        assert status[failing] == "failed", status
        assert {a for a, s in status.items() if s == "skipped"} == skipped, (failing, status)
        assert all(s == "done" for a, s in status.items() if a != failing and a not in skipped)

        snapshot, again = make_plan(load_manifest(project.manifest), options)
        rerun = apply_plan(snapshot, again, options)
        assert rerun.report.ok, [(o.action.id, o.message) for o in rerun.report.outcomes]
        _, final = make_plan(load_manifest(project.manifest), options)
        assert not final.has_changes, (failing, [a.id for a in final.actions])
        for alias in load_manifest(project.manifest).manifest.models:
            assert project.chat(alias).status_code == 200, (failing, alias)

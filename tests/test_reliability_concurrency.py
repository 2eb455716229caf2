"""Concurrent writers against one state home and its running daemon: `apply` while `server
restart` runs (and the reverse), `models rm` of a served model, `apply --watch` against a
manual `apply`. Real subprocesses and the real daemon throughout. Each meeting ends in one
refusal naming the other process (and `--lock-timeout`) or in a wait, never in corruption:
afterwards state.json, the lock file and the store are intact, plan is empty and every alias
still answers.

To make each overlap certain rather than likely, the process that holds the apply lock stops
itself (SIGSTOP) at a named failpoint (LOCAL_AI_FAILPOINT_ACTION=stop) while the other one runs,
then the test resumes it (SIGCONT)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from local_ai.errors import ExitCode
from tests.harness.fakehub import FakeHub
from tests.hub_repos import run_inprocess
from tests.projects import HF, MLX, Project
from tests.server_helpers import wait_for
from tests.test_crash_points import assert_intact, assert_no_leftovers, assert_served


def models(context: int) -> str:
    return (
        f'[models.chat]\nrepo = "{MLX}"\ncontext = {context}\n'
        f'[models.conv]\nrepo = "{HF}"\nquantize = "fp16"\ncontext = 4096\n'
    )


def holder(project: Project) -> dict[str, object] | None:
    try:
        return dict(json.loads((project.home / "run" / "apply.lock.holder").read_text()))
    except (OSError, ValueError):
        return None


def armed_popen(project: Project, point: str, *args: str) -> subprocess.Popen[str]:
    """`local-ai ARGS` that pauses itself (SIGSTOP) at failpoint `point`, holding the lock."""
    proc = project.popen(*args, failpoint=point, stop=True)
    STARTED.append(proc)
    return proc


STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture
def no_process_left() -> Iterator[None]:
    """A failed assertion must not leave a stopped process behind (requested after `project`,
    so this runs before its teardown stops the server)."""
    yield
    for proc in STARTED:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            proc.wait(timeout=30)
    STARTED.clear()


def stopped_holding_the_lock(project: Project, proc: subprocess.Popen[str]) -> None:
    def stopped() -> bool:
        if proc.poll() is not None:
            return True
        with contextlib.suppress(psutil.Error):
            return bool(psutil.Process(proc.pid).status() == psutil.STATUS_STOPPED)
        return False

    assert wait_for(stopped, 120), holder(project)
    assert proc.poll() is None, proc.communicate()[0]
    assert (holder(project) or {}).get("pid") == proc.pid, holder(project)


@contextlib.contextmanager
def paused(proc: subprocess.Popen[str]) -> Iterator[None]:
    try:
        yield
    finally:
        os.kill(proc.pid, signal.SIGCONT)


def refused_by(result: tuple[int, str, str], pid: int, command: str) -> None:
    code, out, err = result
    out += err
    assert code == ExitCode.ERROR, out
    assert f"pid {pid} ({command}) is changing the model store or the server" in out, out
    assert "--lock-timeout" in out and "Traceback" not in out, out


def settled(project: Project, capsys: Any) -> None:
    assert_intact(project)
    assert_no_leftovers(project)
    code, out, err = run_inprocess(capsys, "plan", "--detailed-exitcode")
    assert code == 0, out + err
    for alias in ("chat", "conv"):
        assert project.chat(alias).status_code == 200, alias


def test_concurrent_writers_one_waits_or_is_refused_never_corrupt(
    tiny_hub: FakeHub,
    project: Project,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_process_left: None,
) -> None:
    # The refused side and the checks run the real CLI in this process (no 2 s of imports).
    for name, value in (("LOCAL_AI_CONFIG", str(project.manifest)), ("NO_COLOR", "1")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("COLUMNS", "200")
    project.write(models(4096))
    first = project.cli("apply", "--yes")
    assert first.returncode == 0, first.stdout + first.stderr
    apply_and_server_restart(project, capsys)
    models_rm_of_served_models(project, capsys)
    watch_and_a_manual_apply(project, capsys)


def apply_and_server_restart(project: Project, capsys: Any) -> None:
    # A restart holds the lock: an apply is refused, one with --lock-timeout waits for it.
    project.write(models(2048))
    restart = armed_popen(project, "server.spawned", "server", "restart")
    stopped_holding_the_lock(project, restart)
    with paused(restart):
        refused_by(run_inprocess(capsys, "apply", "--yes"), restart.pid, "local-ai server restart")
        waiting = project.popen("apply", "--yes", "--lock-timeout", "120")
    assert restart.wait(timeout=120) == 0, restart.communicate()[0]
    out, _ = waiting.communicate(timeout=180)
    assert waiting.returncode == 0, out
    assert "reload-aliases" in out and "Apply complete" in out, out
    settled(project, capsys)

    # An apply holds the lock: a restart is refused, and the apply finishes undisturbed.
    project.write(models(3072))
    applying = armed_popen(project, "after:reload-aliases", "apply", "--yes")
    stopped_holding_the_lock(project, applying)
    with paused(applying):
        refused = run_inprocess(capsys, "server", "restart")
        refused_by(refused, applying.pid, "local-ai apply --yes")
    out, _ = applying.communicate(timeout=180)
    assert applying.returncode == 0, out
    settled(project, capsys)
    assert_served(project)


def models_rm_of_served_models(project: Project, capsys: Any) -> None:
    state_before = (project.home / "state.json").read_bytes()
    for alias in ("chat", "conv"):
        code, out, err = run_inprocess(capsys, "models", "rm", alias, "--yes")
        out += err
        assert code == ExitCode.ERROR, out
        assert f"{alias} is in the server's alias map" in out, out
        assert f"remove [models.{alias}] from local-ai.toml" in out and "--force" in out, out
    assert (project.home / "state.json").read_bytes() == state_before
    # --force forgets the alias but never deletes what the engine serves.
    location = Path(project.served_paths()["conv"])
    code, out, err = run_inprocess(capsys, "models", "rm", "conv", "--yes", "--force")
    assert code == 0, out + err
    assert "store entry kept: still used by served alias conv" in out, out
    assert (location / "model.safetensors").is_file()
    assert project.chat("conv").status_code == 200
    code, out, err = run_inprocess(capsys, "plan")
    assert "+ model.conv  (new model)" in out, out + err
    code, out, err = run_inprocess(capsys, "apply", "--yes")
    assert code == 0, out + err
    assert "convert:conv" not in out, out
    assert project.served_paths()["conv"] == str(location)  # the same entry, not rebuilt
    settled(project, capsys)


def watch_and_a_manual_apply(project: Project, capsys: Any) -> None:
    # Its first round has nothing to do: the first reload is the next round's.
    watch = armed_popen(project, "after:reload-aliases@1", "apply", "--watch", "--yes")
    lines: list[str] = []

    def saw(text: str, *, after: int = 0) -> bool:
        def step() -> bool:
            assert watch.stdout is not None
            lines.append(watch.stdout.readline())
            return watch.poll() is not None or any(text in line for line in lines[after:])

        return any(text in line for line in lines[after:]) or wait_for(step, 120)

    try:
        assert saw("waiting for changes"), "".join(lines)
        # The watch's round holds the lock: a manual apply is refused, naming it.
        mark = len(lines)
        project.write(models(2048))
        stopped_holding_the_lock(project, watch)
        with paused(watch):
            refused = run_inprocess(capsys, "apply", "--yes")
            refused_by(refused, watch.pid, "local-ai apply --watch --yes")
            # Saved while the watch's round runs: applied by a round of its own, not dropped.
            project.write(models(2560))
        assert saw("changed while applying", after=mark), "".join(lines)
        assert saw("waiting for changes", after=mark), "".join(lines)
        code, out, err = run_inprocess(capsys, "plan", "--detailed-exitcode")
        assert code == 0, out + err

        # A manual apply holds the lock when the watch sees an edit: the watch waits for it,
        # then applies the manifest as it is.
        mark = len(lines)
        os.kill(watch.pid, signal.SIGSTOP)
        with paused(watch):
            project.write(models(3072))
            manual = armed_popen(project, "after:reload-aliases", "apply", "--yes")
            stopped_holding_the_lock(project, manual)
        with paused(manual):
            assert saw("applying once it is done", after=mark), "".join(lines)
        assert manual.wait(timeout=180) == 0, manual.communicate()[0]
        assert saw("waiting for changes", after=mark), "".join(lines)
        text = "".join(lines[mark:])
        assert f"pid {manual.pid} (local-ai apply --yes) is changing" in text, text
        assert "Traceback" not in text and watch.poll() is None, text
        settled(project, capsys)
    finally:
        watch.send_signal(signal.SIGINT)
        try:
            watch.wait(timeout=30)
        except subprocess.TimeoutExpired:
            watch.kill()

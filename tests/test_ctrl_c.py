"""Ctrl-C (SIGINT) stops `local-ai apply` within 2 s in every phase and `apply --watch` both while
it waits and while a round applies: exit 130, the summary says what was left, nothing
half-done is in view, and a rerun converges.

Each apply is a real subprocess against the fake hub, started as a shell starts a script's
`cmd &` (SIGINT ignored: Python then never raised KeyboardInterrupt, and apply ran on to "Apply
complete", exit 0), while a busy loop keeps a second core loaded. A phase is reached with a
failpoint that stops the process there (LOCAL_AI_FAILPOINT_ACTION=stop), not by sleeping: the
test sends SIGINT, then SIGCONT, and times the exit from the resume. The conversion case stops
the conversion worker instead, so the CLI is blocked waiting on it when SIGINT arrives."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.harness.fakehub import FakeHub
from tests.hub_repos import run_inprocess
from tests.projects import HF, MLX, Project
from tests.server_helpers import wait_for
from tests.test_crash_points import assert_intact, assert_no_leftovers

DEADLINE = 2.0  # seconds from Ctrl-C to exit, the bound
CHAT = f'[models.chat]\nrepo = "{MLX}"\ncontext = 4096\n'  # served as published
CONV = f'[models.conv]\nrepo = "{HF}"\nquantize = "fp16"\ncontext = 4096\n'


@pytest.fixture
def busy_core() -> Iterator[None]:
    """A second core kept busy for the whole test."""
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    yield
    spin.kill()
    spin.wait(timeout=30)


@pytest.fixture
def inprocess(project: Project, monkeypatch: pytest.MonkeyPatch) -> Project:
    """The reruns and checks run the real CLI in this process (no 2 s of imports each)."""
    for name, value in project.env().items():
        if name in ("NO_COLOR", "COLUMNS", "LOCAL_AI_CONFIG"):
            monkeypatch.setenv(name, value)
    return project


def _is_stopped(pid: int) -> bool:
    with contextlib.suppress(psutil.Error):
        return bool(psutil.Process(pid).status() == psutil.STATUS_STOPPED)
    return False


def _stopped_worker(proc: subprocess.Popen[str]) -> int | None:
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(proc.pid).children():
            if _is_stopped(child.pid):
                return child.pid
    return None


def interrupt(proc: subprocess.Popen[str], *, worker: bool = False) -> tuple[int, float, str]:
    """Wait until `proc` (or, with `worker`, its conversion worker) has stopped at its failpoint,
    press Ctrl-C, and return (exit code, seconds from Ctrl-C to exit, output)."""
    try:
        if worker:
            assert wait_for(lambda: _stopped_worker(proc) or proc.poll() is not None, 120)
            assert proc.poll() is None, proc.communicate()[0]
            start = time.monotonic()
            proc.send_signal(signal.SIGINT)  # the CLI runs, blocked on the stopped worker
        else:
            assert wait_for(lambda: _is_stopped(proc.pid) or proc.poll() is not None, 120)
            assert proc.poll() is None, proc.communicate()[0]
            proc.send_signal(signal.SIGINT)  # pending while stopped, delivered on resume
            start = time.monotonic()
            os.kill(proc.pid, signal.SIGCONT)
        code = proc.wait(timeout=60)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
    out = proc.stdout.read() if proc.stdout else ""
    return code, took, out


def converges(project: Project, capsys: Any) -> None:
    assert_intact(project)
    code, out, err = run_inprocess(capsys, "apply", "--yes")
    assert code == 0, out + err
    code, out, err = run_inprocess(capsys, "plan", "--detailed-exitcode")
    assert code == 0, out + err
    assert_no_leftovers(project)


def _files(chat_model: Path) -> int:
    return sum(1 for p in chat_model.iterdir() if p.is_file())


def interrupted_at(project: Project, point: str, action: str, *, worker: bool = False) -> None:
    """One `apply --yes` stopped at `point` gets Ctrl-C: it exits 130 within the deadline,
    reports `action` interrupted and what was left, and leaves everything intact."""
    proc = project.popen("apply", "--yes", failpoint=point, stop=True, sigint_ignored=True)
    code, took, out = interrupt(proc, worker=worker)
    assert code == 130, (point, out)
    assert took < DEADLINE, (point, took, out)
    assert f"✗ {action}: interrupted" in out, (point, out)
    assert "Apply interrupted" in out and "Run `local-ai apply` again" in out, (point, out)
    assert "Traceback" not in out, (point, out)
    assert_intact(project)


def test_ctrl_c_stops_apply_while_it_plans_resolves_fetches_verifies_and_installs(
    tiny_hub: FakeHub,
    inprocess: Project,
    chat_model: Path,
    capsys: pytest.CaptureFixture[str],
    busy_core: None,
) -> None:
    # Each apply resumes from what the interrupted one before it left, and is itself
    # interrupted one phase further on.
    project = inprocess
    project.write(CHAT, server="autostart = false")
    # Resolving against the hub, before there is a plan: nothing was changed.
    proc = project.popen(
        "apply", "--yes", failpoint="resolve.looked-up", stop=True, sigint_ignored=True
    )
    code, took, out = interrupt(proc)
    assert code == 130 and took < DEADLINE, (took, out)
    assert "Interrupted while planning: nothing was changed." in out, out
    assert not (project.dir / "local-ai.lock").exists()
    interrupted_at(project, "atomic:local-ai.lock", "resolve:chat")
    # A throttled download: without the fix Ctrl-C was ignored and it ran to the end.
    tiny_hub.inject("slow", repo_id=MLX, bytes_per_second=64 * 1024, max_seconds=30)
    interrupted_at(project, "fetch.mid-file", "fetch:chat")
    tiny_hub.clear_faults()
    # The fetch action checks each file once, then the verify action checks them again.
    interrupted_at(project, f"fetch.file-checked@{_files(chat_model) + 1}", "verify:chat")
    interrupted_at(project, "install.state-saved", "install:chat")
    converges(project, capsys)


def test_ctrl_c_stops_apply_while_it_converts_and_benchmarks(
    tiny_hub: FakeHub,
    inprocess: Project,
    capsys: pytest.CaptureFixture[str],
    busy_core: None,
) -> None:
    project = inprocess
    project.write(CONV, bench=True)
    # The conversion worker stops itself: the CLI is blocked waiting on it.
    interrupted_at(project, "convert.worker-started", "convert:conv", worker=True)
    interrupted_at(project, "bench.first-token", "benchmark:conv")
    converges(project, capsys)
    assert project.chat("conv").status_code == 200


def _until(proc: subprocess.Popen[str], text: str, seen: list[str]) -> bool:
    def step() -> bool:
        assert proc.stdout is not None
        seen.append(proc.stdout.readline())
        return text in seen[-1] or proc.poll() is not None

    return wait_for(step, 120) and text in seen[-1]


def test_ctrl_c_stops_apply_watch_while_it_waits(project: Project, busy_core: None) -> None:
    project.write("", server="autostart = false")  # a first round with nothing to do
    proc = project.popen("apply", "--watch", "--yes", sigint_ignored=True)
    seen: list[str] = []
    try:
        assert _until(proc, "waiting for changes", seen), "".join(seen)
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(seen) + (proc.stdout.read() if proc.stdout else "")
    assert code == 130, out
    assert took < DEADLINE, (took, out)
    assert "watch: stopped" in out, out


def test_ctrl_c_during_a_watch_round_ends_the_watch(
    tiny_hub: FakeHub, inprocess: Project, capsys: pytest.CaptureFixture[str], busy_core: None
) -> None:
    project = inprocess
    project.write(CHAT, server="autostart = false")
    proc = project.popen(
        "apply", "--watch", "--yes", failpoint="fetch.mid-file", stop=True, sigint_ignored=True
    )
    code, took, out = interrupt(proc)
    assert code == 130, out  # not back to waiting for the next change
    assert took < DEADLINE, (took, out)
    assert "✗ fetch:chat: interrupted" in out and "watch: stopped" in out, out
    assert "waiting for changes" not in out, out
    converges(project, capsys)

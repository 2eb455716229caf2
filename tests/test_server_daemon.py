"""`local-ai server start|stop|restart|status|logs` as users run them: real daemons, pidfile
semantics, port conflicts, stale pidfiles and start-up failures."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from local_ai.errors import ExitCode
from tests.server_helpers import Daemon, build_chat_model, free_port, wait_for, write_manifest


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_chat_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def daemon(tmp_path: Path, model_dir: Path) -> Iterator[Daemon]:
    port = free_port()
    manifest = write_manifest(tmp_path, port=port, models={"tiny": model_dir})
    d = Daemon(home=tmp_path / "state", manifest=manifest, port=port)
    try:
        yield d
    finally:
        d.kill()


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def servers_of(daemon: Daemon) -> list[int]:
    """Server processes started for this test's manifest (there must be none left)."""
    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if str(daemon.manifest) in " ".join(p.info["cmdline"] or [])
        and p.status() != psutil.STATUS_ZOMBIE
    ]


def test_start_status_restart_logs_stop(daemon: Daemon) -> None:
    started = daemon.start()
    assert started.returncode == 0, started.stderr + daemon.log()
    info = json.loads(started.stdout)
    assert info["url"] == daemon.url and info["already_running"] is False
    pidfile = daemon.pidfile()
    assert pidfile["pid"] == info["pid"] and pidfile["port"] == daemon.port
    assert pidfile["token"] and pidfile["config_hash"] and pidfile["started"] > 0
    assert oct((daemon.home / "run" / "server.json").stat().st_mode & 0o777) == "0o600"
    assert httpx.get(f"{daemon.url}/health", trust_env=False).json()["status"] == "ready"

    again = daemon.cli("server", "start")
    assert again.returncode == 0 and "already running" in again.stdout

    status = json.loads(daemon.cli("server", "status", "--json").stdout)
    assert status["running"] and status["pid"] == info["pid"]
    assert status["engine"]["state"] == "ready"

    first_engine = daemon.pidfile()["engine_pid"]
    restarted = daemon.cli("server", "restart", "--json")
    assert restarted.returncode == 0, restarted.stderr
    new_pid = json.loads(restarted.stdout)["pid"]
    assert new_pid != info["pid"]
    assert not alive(info["pid"]) and not alive(first_engine)

    logs = daemon.cli("server", "logs", "-n", "200")
    assert f"serving {daemon.url}" in logs.stdout
    assert "engine ready" in logs.stdout

    engine_pid = daemon.pidfile()["engine_pid"]
    stopped = daemon.cli("server", "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not alive(new_pid) and not alive(engine_pid)
    assert not (daemon.home / "run" / "server.json").exists()
    assert not (daemon.home / "run" / "admin-token").exists()
    status = json.loads(daemon.cli("server", "status", "--json").stdout)
    assert status == {
        "running": False,
        "state": "stopped",
        "stale_pidfile": False,
        "stale_pid": None,
    }
    assert "not running" in daemon.cli("server", "stop").stdout


@pytest.mark.parametrize("bind", ["127.0.0.1", "0.0.0.0"])
def test_port_in_use_is_reported_without_leftovers(daemon: Daemon, bind: str) -> None:
    with socket.socket() as holder:
        holder.bind((bind, daemon.port))
        holder.listen()
        result = daemon.cli("server", "start")
    assert result.returncode == ExitCode.UNAVAILABLE
    assert f"port {daemon.port} is already in use" in result.stderr
    assert f"pid {os.getpid()}" in result.stderr  # the holder, named
    assert not (daemon.home / "run" / "server.json").exists()
    assert servers_of(daemon) == []


def _write_stale_pidfile(daemon: Daemon, pid: int, started: float) -> None:
    run = daemon.home / "run"
    run.mkdir(parents=True, exist_ok=True)
    (run / "server.json").write_text(
        json.dumps(
            {
                "pid": pid,
                "started": started,
                "host": "127.0.0.1",
                "port": daemon.port,
                "url": daemon.url,
                "config_hash": "old",
                "token": "stale-token",
                "version": "0.0.1",
                "started_at": "2020-01-01T00:00:00+00:00",
                "engine_pid": pid,
                "engine_started": started,
            }
        )
    )


def test_stale_pidfile_of_a_dead_process(daemon: Daemon) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_stale_pidfile(daemon, dead.pid, time.time() - 100)
    status = json.loads(daemon.cli("server", "status", "--json").stdout)
    assert status["running"] is False and status["stale_pidfile"] is True
    assert "stopped (stale pidfile" in daemon.cli("server", "status").stdout
    stop = daemon.cli("server", "stop")  # nothing to signal: says so and drops the stale file
    assert stop.returncode == 0 and "stale" in stop.stdout, stop.stdout + stop.stderr
    assert not json.loads(daemon.cli("server", "status", "--json").stdout)["stale_pidfile"]
    _write_stale_pidfile(daemon, dead.pid, time.time() - 100)
    started = daemon.start()
    assert started.returncode == 0, started.stderr
    assert daemon.pidfile()["token"] != "stale-token"
    assert daemon.cli("server", "stop").returncode == 0


def test_reused_pid_is_never_signalled(daemon: Daemon) -> None:
    # A live, unrelated process holds the recorded pid but started at another time.
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        real_start = psutil.Process(stranger.pid).create_time()
        _write_stale_pidfile(daemon, stranger.pid, real_start - 3600)
        status = json.loads(daemon.cli("server", "status", "--json").stdout)
        assert status["running"] is False and status["stale_pid"] == stranger.pid
        stop = daemon.cli("server", "stop")
        assert stop.returncode == 0 and "stale" in stop.stdout
        assert stranger.poll() is None  # still alive: never signalled
        _write_stale_pidfile(daemon, stranger.pid, real_start - 3600)
        started = daemon.start()
        assert started.returncode == 0, started.stderr
        assert stranger.poll() is None
        assert daemon.cli("server", "stop").returncode == 0
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_engine_that_cannot_start_fails_start_with_the_log(daemon: Daemon, tmp_path: Path) -> None:
    # A broken Omni install: the gateway runs, every engine start dies at import.
    shim = tmp_path / "shim" / "mlx_omni_server"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('omni is broken for this test')\n")
    daemon.extra_env["PYTHONPATH"] = str(tmp_path / "shim")
    result = daemon.start()
    assert result.returncode == ExitCode.ERROR
    assert "the engine failed to start" in result.stderr
    assert "omni is broken for this test" in result.stderr  # the log tail
    assert not (daemon.home / "run" / "server.json").exists()
    assert servers_of(daemon) == []


def test_stop_is_graceful_then_forceful(daemon: Daemon) -> None:
    assert daemon.start().returncode == 0
    info = daemon.pidfile()
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "go"}],
        "temperature": 0,
        "stream": True,
    }
    got: dict[str, str] = {}
    streaming = {"short": threading.Event(), "long": threading.Event()}

    def stream(max_tokens: int, key: str) -> None:
        try:
            with httpx.stream(
                "POST",
                f"{daemon.url}/v1/chat/completions",
                json={**body, "max_tokens": max_tokens},
                timeout=60,
                trust_env=False,
            ) as response:
                parts = []
                for part in response.iter_text():
                    parts.append(part)
                    streaming[key].set()
                got[key] = "".join(parts)
        except httpx.HTTPError as exc:
            got[key] = f"error: {exc}"
        finally:
            streaming[key].set()

    # A short stream that is running when stop is asked finishes within the grace period.
    short = threading.Thread(target=stream, args=(300, "short"))
    short.start()
    assert streaming["short"].wait(60)
    stopped = daemon.cli("server", "stop", "--json")
    short.join(30)
    assert json.loads(stopped.stdout)["forced"] is False
    assert got["short"].rstrip().endswith("data: [DONE]")
    assert not alive(info["pid"]) and not alive(info["engine_pid"])

    # A stream longer than the wait is cut: the server is killed, engine and standby included.
    assert daemon.start().returncode == 0
    info = daemon.pidfile()

    # Its warm standby (started a few seconds after the engine) and what it costs are shown.
    def engine() -> dict[str, Any]:
        return dict(httpx.get(f"{daemon.url}/api/status", trust_env=False).json()["engine"])

    assert wait_for(lambda: engine()["standby_pid"], 60, interval=0.2)
    standby, memory = engine()["standby_pid"], engine()["standby_memory_bytes"]
    assert memory > 10_000_000
    shown = daemon.cli("server", "status").stdout
    assert re.search(rf"standby engine warm \(pid {standby}, \d+ MB\)", shown), shown
    long = threading.Thread(target=stream, args=(100000, "long"))
    long.start()
    assert streaming["long"].wait(60) and "long" not in got  # streaming, not failed
    forced = daemon.cli("server", "stop", "--timeout", "1", "--json")
    long.join(30)
    assert json.loads(forced.stdout)["forced"] is True
    assert not alive(info["pid"]) and not alive(info["engine_pid"])
    # The standby is not in the pidfile: it exits by itself once its gateway is gone.
    assert wait_for(lambda: not alive(standby), 30)
    assert not (daemon.home / "run" / "server.json").exists()


def test_logs_follow_prints_new_lines_across_rotation(tmp_path: Path) -> None:
    log = tmp_path / "state" / "logs" / "server.log"
    log.parent.mkdir(parents=True)
    log.write_text("old line\n")
    env = {**os.environ, "LOCAL_AI_HOME": str(tmp_path / "state"), "NO_COLOR": "1"}
    follower = subprocess.Popen(
        [sys.executable, "-m", "local_ai", "server", "logs", "-f", "-n", "5"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    watchdog = threading.Timer(30, follower.kill)  # a broken follow fails, never hangs
    watchdog.start()
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline() == "old line\n"  # the tail first
        with log.open("a") as handle:
            handle.write("appended line\n")
        assert follower.stdout.readline() == "appended line\n"
        log.write_text("after rotation\n")  # truncated and rewritten, as a rotation does
        assert follower.stdout.readline() == "after rotation\n"
    finally:
        watchdog.cancel()
        follower.kill()
        follower.wait()

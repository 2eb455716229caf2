"""Daemon control used by `local-ai server …`: start (spawn, wait for /health), stop (graceful,
then forceful), restart, status and logs. Light imports only; the server itself runs in
`local_ai.server.gateway.main`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local_ai import settings
from local_ai.errors import ServerError
from local_ai.manifest.load import LoadedManifest, load_manifest
from local_ai.server.aliases import AliasMap, load_alias_map, put_in_service
from local_ai.server.config import (
    DEFAULT_GRACEFUL_TIMEOUT,
    ServerConfig,
    config_hash,
    server_config,
)
from local_ai.server.pidfile import PidInfo, is_same_process, read_pidfile, remove_pidfile
from local_ai.util.failpoints import disarmed_env, failpoint
from local_ai.util.ports import port_free

DEFAULT_START_TIMEOUT = 90.0
STOP_MARGIN_S = 5.0  # on top of the graceful timeout, for the engine to exit
LOG_ROTATE_BYTES = 10 * 1024 * 1024
POLL_S = 0.1
PIDFILE_GRACE_S = 3.0  # a gateway writes its pidfile right after binding its port


@dataclass
class Prepared:
    loaded: LoadedManifest
    config: ServerConfig
    alias_map: AliasMap


def prepare(loaded: LoadedManifest, alias_map: AliasMap | None) -> Prepared:
    """The server config, and `alias_map` put in service (run/aliases.json); None: serve the
    map as the `server start` that spawned this process wrote it."""
    config = server_config(loaded.manifest, loaded.path)
    if alias_map is None:
        alias_map = load_alias_map(settings.paths().aliases_file)
    else:
        put_in_service(alias_map)
    return Prepared(loaded, config, alias_map)


KEEP_ALIAS_MAP = "--keep-alias-map"


def server_command(
    manifest: Path, *, python: str | None = None, keep_alias_map: bool = False
) -> list[str]:
    """The command line of a server in the foreground (spawned by `start`, or run by launchd).
    `keep_alias_map`: its parent already wrote run/aliases.json."""
    command = [python or sys.executable, "-m", "local_ai", "server", "start", "--foreground"]
    return [*command, *([KEEP_ALIAS_MAP] if keep_alias_map else []), "--config", str(manifest)]


def running_server() -> tuple[PidInfo | None, bool]:
    """(pidfile content, whether that process is alive and is the server that wrote it)."""
    info = read_pidfile(settings.paths().server_pidfile)
    if info is None:
        return None, False
    return info, is_same_process(info.pid, info.started)


def tail(path: Path, lines: int) -> str:
    """The last `lines` lines of `path` ('' when it does not exist)."""
    return tail_and_end(path, lines)[0]


def tail_and_end(path: Path, lines: int) -> tuple[str, int]:
    """The last `lines` lines of `path` and the offset they end at (where following starts)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            block = min(size, max(4096, lines * 256))
            while True:
                handle.seek(size - block)
                data = handle.read(block)
                if data.count(b"\n") > lines or block == size:
                    break
                block = min(size, block * 2)
    except FileNotFoundError:
        return "", 0
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:]), size


def follow(
    path: Path, write: Callable[[str], None], *, stop: Callable[[], bool], start: int | None = None
) -> None:
    """Print what is appended to `path` from offset `start` (default: its end now) until
    `stop()`; survives truncation and rotation."""
    if start is None:
        start = path.stat().st_size if path.exists() else 0
    position = start
    while not stop():
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size < position:
            position = 0
        if size > position:
            with path.open("rb") as handle:
                handle.seek(position)
                data = handle.read(size - position)
            position = size
            write(data.decode("utf-8", errors="replace"))
        time.sleep(0.25)


def _rotate(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_size > LOG_ROTATE_BYTES:
            path.replace(path.with_name(path.name + ".1"))


def _health(url: str, timeout: float = 1.0) -> dict[str, Any] | None:
    import httpx

    try:
        response = httpx.get(f"{url}/health", timeout=timeout, trust_env=False)
        data: dict[str, Any] = response.json()
        return data
    except (httpx.HTTPError, ValueError):
        return None


def _log_tails() -> str:
    paths = settings.paths()
    text = tail(paths.server_log, 20)
    engine = tail(paths.engine_log, 10)
    if engine:
        text += "\n--- logs/engine.log ---\n" + engine
    return text


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill a server we spawned (its own session, so the engine child goes too)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_MARGIN_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass
class StartResult:
    url: str
    pid: int
    already_running: bool
    aliases: list[str]


def _other_server(timeout: float, *, appear: float = 0.0) -> StartResult | None:
    """A server of this home that runs or is starting (one a killed `apply` or a concurrent
    `server start` spawned), once /health says ready; None when there is none. `appear`: how
    long to wait for its pidfile (between binding the port and writing it)."""
    deadline = time.monotonic() + timeout
    appear_by = time.monotonic() + appear
    while True:
        info, alive = running_server()
        if info is None or not alive:
            if time.monotonic() >= appear_by:
                return None
        else:
            health = _health(info.url)
            if health is not None and health.get("status") in ("ready", "error"):
                return StartResult(info.url, info.pid, True, [])
        if time.monotonic() >= deadline:
            raise ServerError(
                f"the server (pid {info.pid if info else '?'}) did not become ready within "
                f"{timeout:.0f}s",
                hint="see `local-ai server logs`; `local-ai server restart` starts it afresh",
                log_tail=_log_tails(),
            )
        time.sleep(POLL_S)


def start(
    loaded: LoadedManifest, alias_map: AliasMap, *, timeout: float = DEFAULT_START_TIMEOUT
) -> StartResult:
    """Start the server in the background serving `alias_map`; returns once /health says
    ready. A server already running keeps the map it serves."""
    info, alive = running_server()
    if info is not None and alive:
        other = _other_server(timeout)  # it may still be starting
        if other is not None:
            return other
    prep = prepare(loaded, alias_map)
    paths = settings.paths()
    if info is not None:
        remove_pidfile(paths.server_pidfile)  # stale: the process is gone or is someone else
    config = prep.config
    if not port_free(config.host, config.port) and (
        other := _other_server(timeout, appear=PIDFILE_GRACE_S)
    ):
        return other  # a server of ours that had bound the port but not yet said so
    if not port_free(config.host, config.port):
        raise config.port_taken()
    paths.logs.mkdir(parents=True, exist_ok=True)
    _rotate(paths.server_log)
    _rotate(paths.engine_log)
    env = disarmed_env({**os.environ, settings.ENV_HOME: str(paths.root)})
    command = server_command(prep.loaded.path, keep_alias_map=True)
    with paths.server_log.open("ab") as log_file:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the terminal; stop signals its whole group
            env=env,
            cwd=paths.root,
            close_fds=True,
        )
    failpoint("server.spawned")  # the server is starting; nobody waits for it
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            other = _other_server(max(deadline - time.monotonic(), 0.0), appear=PIDFILE_GRACE_S)
            if other is not None:  # ours lost a race with a server starting meanwhile
                return other
            raise ServerError(
                f"the server exited during start-up (code {code})",
                hint="see `local-ai server logs`",
                log_tail=_log_tails(),
            )
        current = read_pidfile(paths.server_pidfile)
        if current is not None and current.pid == proc.pid:
            health = _health(current.url)
            if health is not None and health.get("status") == "ready":
                return StartResult(current.url, proc.pid, False, list(prep.alias_map.models))
            if health is not None and health.get("status") == "error":
                _kill_group(proc)
                remove_pidfile(paths.server_pidfile, token=current.token)
                raise ServerError(
                    f"the engine failed to start: {health.get('reason')}",
                    hint="see `local-ai server logs --engine`",
                    log_tail=_log_tails(),
                )
        time.sleep(POLL_S)
    _kill_group(proc)
    current = read_pidfile(paths.server_pidfile)
    if current is not None and current.pid == proc.pid:
        remove_pidfile(paths.server_pidfile, token=current.token)
    raise ServerError(
        f"the server was not ready after {timeout:.0f}s and was stopped",
        hint="a large preload can take longer: `local-ai server start --timeout 300`",
        log_tail=_log_tails(),
    )


@dataclass
class StopResult:
    was_running: bool
    pid: int | None = None
    forced: bool = False
    stale_removed: bool = False


def _wait_gone(pid: int, started: float, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_same_process(pid, started):
            return True
        time.sleep(POLL_S)
    return not is_same_process(pid, started)


def stop(*, timeout: float | None = None) -> StopResult:
    """SIGTERM (open streams get the graceful timeout), then SIGKILL the server and its engine."""
    paths = settings.paths()
    info, alive = running_server()
    if info is None:
        return StopResult(was_running=False)
    if not alive:
        # Never signal it: the pid is dead or now belongs to an unrelated process.
        remove_pidfile(paths.server_pidfile)
        return StopResult(was_running=False, stale_removed=True)
    wait = timeout if timeout is not None else DEFAULT_GRACEFUL_TIMEOUT + STOP_MARGIN_S
    with contextlib.suppress(ProcessLookupError):
        os.kill(info.pid, signal.SIGTERM)
    forced = False
    if not _wait_gone(info.pid, info.started, wait):
        forced = True
        if is_same_process(info.pid, info.started):
            with contextlib.suppress(ProcessLookupError):
                os.kill(info.pid, signal.SIGKILL)
        _wait_gone(info.pid, info.started, STOP_MARGIN_S)
    # The engine exits with the gateway; make sure after a forced stop (verified identity only).
    latest = read_pidfile(paths.server_pidfile) or info
    if latest.engine_pid and is_same_process(latest.engine_pid, latest.engine_started):
        with contextlib.suppress(ProcessLookupError):
            os.kill(latest.engine_pid, signal.SIGKILL)
    remove_pidfile(paths.server_pidfile, token=info.token)
    with contextlib.suppress(OSError):
        if paths.admin_token.read_text().strip() == info.token:
            paths.admin_token.unlink()
    return StopResult(was_running=True, pid=info.pid, forced=forced)


def admin_request(
    info: PidInfo,
    method: str,
    path: str,
    timeout: float = 5.0,
    body: dict[str, Any] | None = None,
) -> Any:
    import httpx

    response = httpx.request(
        method,
        f"{info.url}{path}",
        headers={"authorization": f"Bearer {info.token}"},
        json=body,
        timeout=timeout,
        trust_env=False,
    )
    response.raise_for_status()
    return response.json()


def _running_or_fail() -> PidInfo:
    info, alive = running_server()
    if info is None or not alive:
        raise ServerError("the server is not running", hint="run `local-ai server start`")
    return info


def _admin(info: PidInfo, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    import httpx

    try:
        return admin_request(info, method, path, timeout=30.0, body=body)
    except httpx.HTTPStatusError as exc:
        raise ServerError(
            f"the server refused {path}: {exc.response.status_code} {exc.response.text[:200]}",
            hint="see `local-ai server logs`",
        ) from exc
    except httpx.HTTPError as exc:
        raise ServerError(
            f"the server at {info.url} did not answer {path}: {type(exc).__name__}",
            hint="see `local-ai server logs`; `local-ai server restart` starts it afresh",
        ) from exc


def reload_aliases() -> list[str]:
    """Make the running server serve `run/aliases.json` as it is now (write it first with
    `aliases.put_in_service`); the engine keeps running. Returns the aliases now served."""
    return list(_admin(_running_or_fail(), "POST", "/api/admin/reload")["models"])


def restart_engine(engine: dict[str, Any] | None = None, *, timeout: float = 120.0) -> int:
    """Replace the running server's engine, with new `[server.engine]` settings when given
    (`manifest.serving.engine_settings`); the gateway stays up. Returns the new
    engine's pid once it is ready."""
    info = _running_or_fail()
    before = _admin(info, "GET", "/api/status")["engine"].get("pid")
    _admin(info, "POST", "/api/admin/restart-engine", {"engine": engine} if engine else None)
    failpoint("engine.restart-requested")  # the gateway replaces its engine; nobody waits
    deadline = time.monotonic() + timeout
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        time.sleep(POLL_S)
        with contextlib.suppress(ServerError):
            state = _admin(info, "GET", "/api/status")["engine"]
            if state.get("state") == "ready" and state.get("pid") not in (None, before):
                return int(state["pid"])
            if state.get("state") == "error":
                break
    raise ServerError(
        f"the engine did not come back after a restart (state {state.get('state')!r}: "
        f"{state.get('reason') or state.get('last_exit') or 'no reason given'})",
        hint="see `local-ai server logs --engine`",
        log_tail=_log_tails(),
    )


def clear_prompt_cache() -> dict[str, int]:
    """Remove the saved prompt caches: through the running server (its engine does it between
    steps), or directly when no server runs. Returns the files and bytes removed."""
    from local_ai.server.engine import diskcache

    info, alive = running_server()
    if info is None or not alive:
        return diskcache.clear(settings.paths().prompt_cache)
    return dict(_admin(info, "POST", "/api/admin/clear-prompt-cache"))


def status(config_path: Path | None) -> dict[str, Any]:
    info, alive = running_server()
    if info is None or not alive:
        return {
            "running": False,
            "state": "stopped",
            "stale_pidfile": info is not None,
            "stale_pid": info.pid if info is not None else None,
        }
    result: dict[str, Any] = {
        "running": True,
        "state": "running",
        "pid": info.pid,
        "url": info.url,
        "version": info.version,
        "started_at": info.started_at,
        "uptime_s": round(time.time() - info.started, 1),
        "manifest": info.manifest,
        "config_hash": info.config_hash,
    }
    try:
        live = admin_request(info, "GET", "/api/status", timeout=3.0)
    except Exception as exc:
        result["state"] = "unresponsive"
        result["error"] = f"{type(exc).__name__}: {exc}"
        live = None
    if live is not None:
        result["engine"] = live.get("engine")
        result["models"] = live.get("models")
        result["requests"] = live.get("requests")
        result["activity"] = live.get("activity")
        result["version"] = live.get("version", info.version)
    try:
        manifest_file = (
            Path(info.manifest) if info.manifest else settings.manifest_path(config_path)
        )
        if config_path is not None:
            manifest_file = settings.manifest_path(config_path)
        current = load_manifest(manifest_file).manifest
        result["config_differs"] = config_hash(current) != info.config_hash
    except Exception as exc:
        result["config_differs"] = None
        result["config_error"] = str(exc)
    return result

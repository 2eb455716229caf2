"""The gateway keeps one engine worker running: spawn, wait until it answers, restart on exit
with backoff, and report the state to /health.

Starting an engine from nothing costs ~4 s of imports (more on a loaded machine), so once an
engine is ready the supervisor also starts a warm standby (`--standby`: imported, idle, ~100 MB)
and promotes it when the engine dies or is restarted; the next standby starts once the promoted
engine is ready."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from local_ai.util.atomic import atomic_write_text

log = logging.getLogger("local_ai.gateway")

READY_POLL_S = 0.05
READY_TIMEOUT_S = 180.0  # a cold import of mlx + Omni on a slow disk
FIRST_BACKOFF_S = 0.2
MAX_BACKOFF_S = 30.0
# An engine that was ready this long is replaced at once when it dies; one that dies sooner
# (a crash loop: a model that kills it on load, a broken install) waits with growing backoff.
STABLE_AFTER_S = 5.0
FAILURES_BEFORE_ERROR = 3
STOP_TIMEOUT_S = 5.0
# A standby starts this long after its engine is ready, not competing with its first requests.
STANDBY_DELAY_S = 2.0


@dataclass
class EngineSpec:
    """What the engine is started with (written to run/engine.json)."""

    socket: str
    aliases_file: str
    max_loaded_models: int
    idle_ttl_s: int
    prompt_cache: bool
    preload: list[str] = field(default_factory=list)
    max_batch_size: int = 8
    prompt_cache_dir: str | None = None
    prompt_cache_disk_mb: int = 0
    debug: bool = False
    parent_pid: int | None = None


# Unix socket paths are limited to ~104 bytes on macOS.
MAX_SOCKET_PATH = 100


def unix_socket_path(path: Path, root: Path) -> Path:
    """`path`, or when it is too long for a Unix socket, the same name in a private directory
    under the temp dir, named by a hash of the local-ai home `root`."""
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    import hashlib
    import tempfile

    digest = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    private = Path(tempfile.gettempdir()) / f"local-ai-{os.getuid()}-{digest}"
    private.mkdir(mode=0o700, exist_ok=True)
    private.chmod(0o700)
    return private / path.name


def _rss(pid: int) -> int | None:
    import psutil

    try:
        return int(psutil.Process(pid).memory_info().rss)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class EngineSupervisor:
    # A warm standby replaces a dead engine at once; a sharded group (GroupSupervisor) has none.
    uses_standby = True
    name = "engine"

    def __init__(
        self,
        spec: EngineSpec,
        *,
        config_path: Path,
        log_path: Path,
        on_change: Callable[[int | None], None] | None = None,
    ) -> None:
        self.spec = spec
        self.config_path = config_path
        self.log_path = log_path
        self.on_change = on_change
        self.state = "starting"
        self.reason: str | None = None
        self.pid: int | None = None
        self.started_at: float | None = None
        self.restarts = 0
        self.last_exit: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._standby: asyncio.subprocess.Process | None = None
        self.standby_ready = False
        self._task: asyncio.Task[None] | None = None
        self._standby_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._restart_now = asyncio.Event()
        self._ready = asyncio.Event()
        self.client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=spec.socket),
            base_url="http://engine",
            timeout=httpx.Timeout(None, connect=5.0),
        )

    # --- public -----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self, seconds: float) -> bool:
        if self._ready.is_set():
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), seconds)
        return self._ready.is_set()

    def start(self) -> None:
        self.spec.parent_pid = os.getpid()
        self._write_config()
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-supervisor")

    def reconfigure(self, **changes: Any) -> None:
        """Change what the next engine starts with (rewrites run/engine.json)."""
        for name, value in changes.items():
            setattr(self.spec, name, value)
        self._write_config()

    def _write_config(self) -> None:
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_path, json.dumps(asdict(self.spec), indent=2), mode=0o600)

    async def restart(self) -> None:
        """Replace the engine now (admin API); no backoff."""
        self._restart_now.set()
        await self._terminate()

    async def stop(self) -> None:
        self._stopping = True
        self._restart_now.set()
        if self._standby_task is not None:
            self._standby_task.cancel()
        await self._drop_standby()
        await self._terminate()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.aclose()

    async def get(self, path: str, seconds: float = 2.0) -> Any:
        response = await self.client.get(path, timeout=seconds)
        response.raise_for_status()
        return response.json()

    async def post(self, path: str, seconds: float = 30.0) -> Any:
        response = await self.client.post(path, timeout=seconds)
        response.raise_for_status()
        return response.json()

    def snapshot(self) -> dict[str, Any]:
        standby = self._standby if self.standby_ready else None
        return {
            "state": self.state,
            "reason": self.reason,
            "pid": self.pid,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "uptime_s": round(time.monotonic() - self.started_at, 1) if self.started_at else None,
            "standby_pid": standby.pid if standby else None,
            # The cost of quick recovery: an idle process holding the imports (~100 MB).
            "standby_memory_bytes": _rss(standby.pid) if standby else None,
        }

    # --- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = FIRST_BACKOFF_S
        failures = 0
        while not self._stopping:
            spawned = time.monotonic()
            try:
                proc = await self._spawn()
            except OSError as exc:
                self.state, self.reason = "error", f"cannot start the engine: {exc}"
                log.error(self.reason)
                await self._sleep(MAX_BACKOFF_S)
                continue
            became_ready = await self._wait_ready(proc)
            if became_ready:
                failures = 0
                self.state, self.reason = "ready", None
                self.started_at = time.monotonic()
                self._ready.set()
                log.info("%s ready (pid %s) after %.2fs", self.name, proc.pid,
                         time.monotonic() - spawned)  # fmt: skip
                await self._on_ready(proc)
                if self.uses_standby and self._standby is None:
                    self._standby_task = asyncio.create_task(self._prepare_standby())
            code = await proc.wait()
            self._ready.clear()
            stable = self.started_at is not None and time.monotonic() - self.started_at > (
                STABLE_AFTER_S
            )
            self.started_at = None
            self.pid = None
            if self.on_change:
                self.on_change(None)
            if self._stopping:
                break
            self.last_exit = _describe_exit(code)
            ended = await self._describe_end(code, became_ready)
            self.restarts += 1
            if not became_ready:
                failures += 1
            if self._restart_now.is_set():
                self._restart_now.clear()
                backoff, delay = FIRST_BACKOFF_S, 0.0
                self.state, self.reason = "starting", "restart requested"
            else:
                if stable:
                    backoff, delay = FIRST_BACKOFF_S, 0.0
                else:
                    delay, backoff = backoff, min(backoff * 2, MAX_BACKOFF_S)
                self.state = "error" if failures >= FAILURES_BEFORE_ERROR else "restarting"
                self.reason = ended
                log.warning("%s; restarting in %.1fs", self.reason, delay)
            await self._sleep(delay)

    async def _on_ready(self, proc: asyncio.subprocess.Process) -> None:
        """Called once the engine answers /health."""

    async def _describe_end(self, code: int, became_ready: bool) -> str:
        """Why the engine ended (its exit is `self.last_exit`): the state's reason."""
        return f"{self.name} {self.last_exit}" + (
            "" if became_ready else f" before it was ready; see logs/{self.log_path.name}"
        )

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._restart_now.wait(), seconds)
        if not self._stopping:
            self._restart_now.clear()

    async def _spawn(self) -> asyncio.subprocess.Process:
        """The next engine: the warm standby if there is one, else a fresh process; promoted."""
        proc, self._standby = self._standby, None
        self.standby_ready = False
        if proc is None or proc.returncode is not None:
            proc = await self._spawn_standby()
        else:
            log.info("promoting the standby engine (pid %s)", proc.pid)
        try:
            assert proc.stdin is not None
            proc.stdin.write(b"start\n")
            await proc.stdin.drain()
            proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            pass  # it died meanwhile: _wait_ready sees the exit and the loop starts another
        self._proc = proc
        self.pid = proc.pid
        if self.on_change:
            self.on_change(proc.pid)
        return proc

    async def _spawn_standby(self) -> asyncio.subprocess.Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            return await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "local_ai.server.engine",
                "--config",
                str(self.config_path),
                "--standby",
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,  # one line, "standby", once it is warm
                stderr=log_file,
            )

    async def _prepare_standby(self) -> None:
        """Start the next standby and note when it is warm (it says so on stdout)."""
        await asyncio.sleep(STANDBY_DELAY_S)
        # Not while an engine is starting: two imports at once would slow that start down.
        # Nor when a newer task replaced this one: one standby at a time.
        if self._stopping or self._standby is not None or not self._ready.is_set():
            return
        if self._standby_task is not asyncio.current_task():
            return
        try:
            proc = await self._spawn_standby()
        except OSError as exc:
            log.warning("cannot start a standby engine: %s", exc)
            return
        self._standby = proc
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        if line.strip() != b"standby" or self._standby is not proc:
            return  # promoted before it was warm, or it failed (its log says why)
        self.standby_ready = True
        log.info("standby engine warm (pid %s)", proc.pid)
        code = await proc.wait()
        if self._standby is proc and not self._stopping:
            log.warning("standby engine %s", _describe_exit(code))
            self._standby, self.standby_ready = None, False
            if self._ready.is_set():  # else the next engine to be ready starts one
                self._standby_task = asyncio.create_task(self._prepare_standby())

    async def _drop_standby(self) -> None:
        proc, self._standby = self._standby, None
        self.standby_ready = False
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()

    async def _wait_ready(self, proc: asyncio.subprocess.Process) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                return False
            try:
                response = await self.client.get("/health", timeout=1.0)
                if response.status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            wait = asyncio.ensure_future(proc.wait())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(wait), READY_POLL_S)
            wait.cancel()
        log.error("engine did not answer within %.0fs; killing it", READY_TIMEOUT_S)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        return False

    async def _terminate(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

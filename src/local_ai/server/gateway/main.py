"""Run the gateway in this process (`local-ai server start --foreground`, launchd, or the child
that `server start` spawns): bind, write the pidfile, serve until SIGTERM, clean up."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import signal
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path

from local_ai import __version__, settings
from local_ai.errors import ServerError
from local_ai.server.aliases import load_alias_map
from local_ai.server.config import ServerConfig
from local_ai.server.gateway.supervisor import unix_socket_path
from local_ai.server.pidfile import (
    PidInfo,
    is_same_process,
    process_start_time,
    read_pidfile,
    remove_pidfile,
    write_pidfile,
)
from local_ai.util.atomic import atomic_write_text
from local_ai.util.ports import port_free

log = logging.getLogger("local_ai.gateway")


def engine_socket_path(paths: settings.Paths) -> Path:
    return unix_socket_path(paths.engine_socket, paths.root)


def _bind(config: ServerConfig) -> socket.socket:
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only then. Without
    # it Nagle holds each small SSE write until the client's delayed ACK (~40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            raise config.port_taken() from exc
        raise
    sock.listen(2048)
    sock.set_inheritable(False)
    return sock


def _setup_logging() -> None:
    logging.basicConfig(
        level=logging.DEBUG if settings.debug() else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def serve(config: ServerConfig) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code (0 after a clean stop)."""
    import uvicorn

    from local_ai.server.gateway.app import Gateway
    from local_ai.server.gateway.supervisor import EngineSpec, EngineSupervisor

    _setup_logging()
    paths = settings.paths()
    paths.run.mkdir(parents=True, exist_ok=True)
    paths.run.chmod(0o700)
    paths.logs.mkdir(parents=True, exist_ok=True)

    current = read_pidfile(paths.server_pidfile)
    alive = current is not None and is_same_process(current.pid, current.started)
    if current is not None and alive and current.pid != os.getpid():
        raise ServerError(f"the server is already running (pid {current.pid}) at {current.url}")
    if not port_free(config.host, config.port):
        raise config.port_taken()
    sock = _bind(config)

    token = secrets.token_urlsafe(32)
    started = process_start_time(os.getpid()) or 0.0
    info = PidInfo(
        pid=os.getpid(),
        started=started,
        host=config.host,
        port=config.port,
        url=config.url,
        config_hash=config.config_hash,
        token=token,
        version=__version__,
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        manifest=config.manifest_path,
    )

    def on_engine(pid: int | None) -> None:
        nonlocal info
        started_engine = process_start_time(pid) if pid else None
        info = PidInfo(**{**info.__dict__, "engine_pid": pid, "engine_started": started_engine})
        with contextlib.suppress(OSError):
            write_pidfile(paths.server_pidfile, info)

    alias_map = load_alias_map(paths.aliases_file)
    preload = [  # a sharded alias is loaded by its own group
        alias_map.models[a].path
        for a in config.preload
        if a in alias_map.models and alias_map.models[a].group is None
    ]
    spec = EngineSpec(
        socket=str(engine_socket_path(paths)),
        aliases_file=str(paths.aliases_file),
        max_loaded_models=config.engine.max_loaded_models,
        idle_ttl_s=config.engine.idle_ttl_seconds,
        prompt_cache=config.engine.prompt_cache,
        preload=preload,
        max_batch_size=config.engine.max_batch_size,
        prompt_cache_dir=str(paths.prompt_cache),
        prompt_cache_disk_mb=config.engine.prompt_cache_disk_mb,
        debug=settings.debug(),
    )
    supervisor = EngineSupervisor(
        spec, config_path=paths.engine_config, log_path=paths.engine_log, on_change=on_engine
    )
    app = Gateway(config, aliases_file=paths.aliases_file, token=token, supervisor=supervisor)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            lifespan="on",
            log_config=None,
            log_level="debug" if settings.debug() else "info",
            timeout_graceful_shutdown=int(config.graceful_timeout),
            server_header=False,
            proxy_headers=False,
        )
    )
    # uvicorn re-raises the stop signal after a graceful shutdown; these handlers absorb it so
    # the cleanup below runs and the exit code is 0 (launchd then does not restart us).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)

    atomic_write_text(paths.admin_token, token + "\n", mode=0o600)
    write_pidfile(paths.server_pidfile, info)
    log.info("local-ai %s serving %s (pid %s)", __version__, config.url, os.getpid())
    try:
        server.run(sockets=[sock])
    finally:
        remove_pidfile(paths.server_pidfile, token=token)
        with contextlib.suppress(OSError):
            if paths.admin_token.read_text().strip() == token:
                paths.admin_token.unlink()
        log.info("local-ai server stopped")
    return 0

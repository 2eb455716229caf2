"""What the server runs with, derived from the manifest once at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local_ai.errors import ConfigError, PortInUseError
from local_ai.manifest.api_key import resolve_api_key
from local_ai.manifest.models import WILDCARD_HOSTS, EngineSettings, Manifest, is_loopback
from local_ai.manifest.serving import running_settings
from local_ai.util.hashing import stable_hash
from local_ai.util.ports import port_holder

# Seconds open streams get when the server stops before they are cut.
DEFAULT_GRACEFUL_TIMEOUT = 10.0


def config_hash(manifest: Manifest) -> str:
    """Hash of what the running server depends on: server settings and the models."""
    doc = {
        "server": manifest.server.model_dump(mode="json"),
        "models": {k: v.model_dump(mode="json") for k, v in manifest.models.items()},
    }
    return stable_hash(doc)[:16]


def url_host(host: str) -> str:
    """How `host` appears in a URL (IPv6 in brackets, wildcard as loopback)."""
    if host in WILDCARD_HOSTS:
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    api_key: str | None
    cors_origins: tuple[str, ...]
    max_body_bytes: int
    engine: EngineSettings
    preload: tuple[str, ...]
    config_hash: str
    manifest_path: str | None = None
    graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT
    extra_hosts: tuple[str, ...] = field(default_factory=tuple)
    # manifest.serving.running_settings of the manifest it started from
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def max_active(self) -> int:
        """Generations forwarded to the engine at once (its batch); more wait in our queue."""
        return self.engine.max_batch_size

    @property
    def url(self) -> str:
        return f"http://{url_host(self.host)}:{self.port}"

    def allowed_hosts(self) -> frozenset[str]:
        """Host header values accepted (DNS-rebinding defence): loopback names, the bind address
        and, on a wildcard bind, this machine's names and addresses; each with or without port."""
        names = {"127.0.0.1", "localhost", "[::1]"}
        if self.host not in WILDCARD_HOSTS:
            names.add(url_host(self.host))
        names.update(url_host(h) for h in self.extra_hosts)
        out = set(names)
        out.update(f"{name}:{self.port}" for name in names)
        return frozenset(h.lower() for h in out)

    def port_taken(self) -> PortInUseError:
        """The error when another process holds our port, naming it when the OS shows it."""
        holder = port_holder(self.port)
        return PortInUseError(
            self.host,
            self.port,
            holder.describe() if holder else None,
            hint="stop that process or set server.port in the manifest",
        )

    def allowed_origins(self) -> frozenset[str]:
        """Origins allowed on state-changing requests: our own page plus configured ones."""
        own = {f"http://{h}" for h in self.allowed_hosts() if ":" in h.rsplit("]", 1)[-1]}
        return frozenset(own | set(self.cors_origins))


def _machine_addresses() -> tuple[str, ...]:
    """Names and addresses of this machine, accepted as Host on a wildcard bind."""
    import socket

    import psutil

    names = {socket.gethostname(), socket.getfqdn()}
    names.add(socket.gethostname().split(".")[0] + ".local")
    try:
        for addrs in psutil.net_if_addrs().values():
            for addr in addrs:
                if addr.family in (socket.AF_INET, socket.AF_INET6):
                    names.add(addr.address.split("%")[0])
    except OSError:
        pass
    return tuple(sorted(n for n in names if n))


def server_config(
    manifest: Manifest,
    manifest_path: Path | None,
    *,
    host: str | None = None,
    port: int | None = None,
) -> ServerConfig:
    server = manifest.server
    bind = host or server.host
    api_key = resolve_api_key(manifest, manifest_path)
    if not is_loopback(bind) and not api_key:
        raise ConfigError(
            f"host {bind!r} is not loopback, so the API would be open to the network",
            path=manifest_path,
            key="server.host",
            hint="set server.api_key_env (or api_key), or bind 127.0.0.1",
        )
    return ServerConfig(
        host=bind,
        port=port or server.port,
        api_key=api_key,
        cors_origins=tuple(server.cors_origins),
        max_body_bytes=server.max_body_mb * 1024 * 1024,
        engine=server.engine,
        preload=tuple(server.preload),
        config_hash=config_hash(manifest),
        manifest_path=str(manifest_path) if manifest_path else None,
        extra_hosts=_machine_addresses() if bind in WILDCARD_HOSTS else (),
        settings=running_settings(manifest),
    )

"""Settings the server processes run with, derived from the manifest: `server start` records
them and `plan` compares them with what the running server reports."""

from __future__ import annotations

from typing import Any

from local_ai.manifest.models import EngineSettings, Manifest
from local_ai.util.hashing import stable_hash


def gateway_settings(manifest: Manifest) -> dict[str, Any]:
    """Settings the gateway process is started with; a change restarts the server."""
    server = manifest.server
    key = server.api_key
    return {
        "host": server.host,
        "port": server.port,
        # The key itself never leaves the manifest; its hash tells whether it changed.
        "api_key": stable_hash(key)[:12] if key else None,
        "api_key_env": server.api_key_env,
        "cors_origins": sorted(server.cors_origins),
        "max_body_mb": server.max_body_mb,
    }


def engine_settings(manifest: Manifest) -> dict[str, Any]:
    """Settings the engine worker is started with; a change restarts the engine only."""
    return engine_record(manifest.server.engine)


def engine_record(engine: EngineSettings) -> dict[str, Any]:
    """`[server.engine]` as apply sends it, the gateway reports it and a plan compares it."""
    return engine.model_dump(mode="json")


def running_settings(manifest: Manifest) -> dict[str, Any]:
    """Both, as the server reports them and a generation records them."""
    return {"gateway": gateway_settings(manifest), "engine": engine_settings(manifest)}

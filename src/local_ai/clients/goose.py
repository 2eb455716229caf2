"""Goose: a custom provider file (OpenAI engine) plus GOOSE_PROVIDER/GOOSE_MODEL in config.yaml.

The provider file is local-ai's own; in config.yaml only the two top-level keys are touched.
"""

from __future__ import annotations

from typing import Any

from local_ai.clients.spec import Desired, FileSpec, key_hint, preferred_alias, visible_aliases
from local_ai.manifest.models import GooseClient, Manifest

NAME = "goose"
PROVIDER_ID = "custom_local_ai"  # Goose names custom providers custom_<name>
PROVIDER_FILE = f"custom_providers/{PROVIDER_ID}.json"
CONFIG_FILE = "config.yaml"
DEFAULT_KEY_ENV = "LOCAL_AI_API_KEY"


def provider_document(manifest: Manifest, server_url: str, cfg: GooseClient) -> dict[str, Any]:
    server = manifest.server
    models = [
        {"name": alias, "context_limit": manifest.models[alias].context}
        for alias in visible_aliases(manifest, cfg.models)
    ]
    return {
        "name": PROVIDER_ID,
        "engine": "openai",
        "display_name": "local-ai",
        "description": "Models served by local-ai on this machine",
        "api_key_env": server.api_key_env or DEFAULT_KEY_ENV,
        # The full endpoint, as Goose's docs show: every Goose version reads it the same way.
        "base_url": f"{server_url}/v1/chat/completions",
        "models": models,
        "supports_streaming": True,
        "requires_auth": bool(server.api_key or server.api_key_env),
    }


def desired(manifest: Manifest, server_url: str) -> Desired:
    cfg = manifest.clients.goose or GooseClient()
    doc = provider_document(manifest, server_url, cfg)
    config: dict[tuple[str, ...], Any] = {("GOOSE_PROVIDER",): PROVIDER_ID}
    model = preferred_alias(manifest, visible_aliases(manifest, cfg.models))
    if model:
        config[("GOOSE_MODEL",)] = model
    key_env = doc["api_key_env"]
    if doc["requires_auth"]:
        notes = [f"Goose reads the API key from {key_env}: set it to {key_hint(manifest)}."]
    else:
        notes = [
            f"Goose versions that predate `requires_auth` insist on {key_env}: set it to any "
            "value if Goose reports a missing key."
        ]
    files = (
        FileSpec("provider", "json-file", {(): doc}),
        FileSpec("config", "yaml-keys", config),
    )
    return Desired(NAME, files, tuple(notes))

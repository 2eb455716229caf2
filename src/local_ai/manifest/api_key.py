"""The server's API key: the one answer for the gateway, apply's benchmark, `bench` and the
client checks."""

from __future__ import annotations

import os
from pathlib import Path

from local_ai.errors import ConfigError
from local_ai.manifest.models import Manifest


def resolve_api_key(manifest: Manifest, manifest_path: Path | None) -> str | None:
    server = manifest.server
    if server.api_key:
        return server.api_key
    if server.api_key_env:
        value = os.environ.get(server.api_key_env, "").strip()
        if not value:
            raise ConfigError(
                f"server.api_key_env names {server.api_key_env}, which is not set",
                path=manifest_path,
                key="server.api_key_env",
                hint=f"export {server.api_key_env}=<a long random key> before starting the server",
            )
        if not (value.isascii() and value.isprintable()) or " " in value:
            # It goes into HTTP headers and client config files: no control bytes, no spaces.
            raise ConfigError(
                f"the value of {server.api_key_env} (server.api_key_env) must be printable ASCII "
                "characters without spaces",
                path=manifest_path,
                key="server.api_key_env",
                hint=f"export {server.api_key_env}=<a long random key> with letters and digits",
            )
        return value
    return None

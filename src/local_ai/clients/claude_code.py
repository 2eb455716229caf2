"""Claude Code: the `env` block of its settings.json.

local-ai owns the variables below and nothing else in the file. Settings values cannot expand
environment variables, so with `server.api_key_env` the token is left to the shell.
"""

from __future__ import annotations

import shlex
from typing import Any

from local_ai.clients.base import Slot
from local_ai.clients.spec import Desired, FileSpec
from local_ai.manifest.models import ClaudeCodeClient, Manifest

NAME = "claude-code"
# Sent when the server needs no key, so Claude Code neither asks to log in (that needs the
# network) nor forwards a claude.ai login token to the gateway.
PLACEHOLDER_TOKEN = "local-ai"  # noqa: S105 (not a secret)
TOKEN = "ANTHROPIC_AUTH_TOKEN"  # noqa: S105 (a variable name)
TIERS = (
    ("ANTHROPIC_DEFAULT_OPUS_MODEL", "opus"),
    ("ANTHROPIC_DEFAULT_SONNET_MODEL", "sonnet"),
    ("ANTHROPIC_DEFAULT_HAIKU_MODEL", "haiku"),
)


def variables(manifest: Manifest, server_url: str) -> dict[str, str]:
    """The environment local-ai gives Claude Code (without a token for `api_key_env`)."""
    cfg = manifest.clients.claude_code or ClaudeCodeClient()
    env = {"ANTHROPIC_BASE_URL": f"{server_url}/anthropic"}
    server = manifest.server
    if server.api_key:
        env[TOKEN] = server.api_key
    elif not server.api_key_env:
        env[TOKEN] = PLACEHOLDER_TOKEN
    model = cfg.model or manifest.default_alias
    if model:
        env["ANTHROPIC_MODEL"] = model
        for var, tier in TIERS:
            env[var] = getattr(cfg, tier) or model
    if cfg.subagent:
        env["CLAUDE_CODE_SUBAGENT_MODEL"] = cfg.subagent
    # A per-request attribution header would change the prompt prefix and defeat prompt caching.
    env["CLAUDE_CODE_ATTRIBUTION_HEADER"] = "0"
    # No auto-updater, telemetry or error reporting: nothing that needs the internet.
    env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] = "1"
    return env


def desired(manifest: Manifest, server_url: str) -> Desired:
    env = variables(manifest, server_url)
    slots: dict[Slot, Any] = {("env", name): value for name, value in env.items()}
    notes = []
    key_env = manifest.server.api_key_env
    if key_env:
        notes.append(
            f'Claude Code settings cannot read ${key_env}: export {TOKEN}="${key_env}" in the '
            "shell that starts claude (or use `local-ai clients env claude-code`)."
        )
    if "ANTHROPIC_MODEL" not in env:
        notes.append("No models are declared yet, so no model variables are set.")
    secrets = tuple(v for k, v in env.items() if k == TOKEN and v != PLACEHOLDER_TOKEN)
    spec = FileSpec("settings", "jsonc", slots, frozenset({("env", TOKEN)}))
    return Desired(NAME, (spec,), tuple(notes), secrets)


def shell_exports(manifest: Manifest, server_url: str) -> list[str]:
    """`export` lines for one shell session (the token of `api_key_env` by reference)."""
    env = variables(manifest, server_url)
    lines = [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    key_env = manifest.server.api_key_env
    if key_env:
        lines.insert(1, f'export {TOKEN}="${{{key_env}}}"')
    return lines

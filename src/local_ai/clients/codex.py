"""Codex CLI: a provider under `model_providers.<id>` in config.toml, selected as the default
(`model_provider`, `model`), and one profile file per alias (`<alias>.config.toml`).

Codex speaks only the Responses API (`wire_api = "responses"`) and appends `/responses` to the
provider's `base_url`. Since Codex 0.134 a profile is its own file in the Codex home, selected
with `codex --profile <name>`, holding top-level keys. Codex reads the provider's key from the
environment variable `env_key` names, so the key is never written.
"""

from __future__ import annotations

import re
from typing import Any

from local_ai.clients.base import Slot
from local_ai.clients.spec import Desired, FileSpec, key_hint, preferred_alias, visible_aliases
from local_ai.manifest.models import CodexClient, Manifest

NAME = "codex"
CONFIG_FILE = "config.toml"
PROFILE_SUFFIX = ".config.toml"
DEFAULT_KEY_ENV = "LOCAL_AI_API_KEY"


def profile_name(alias: str) -> str:
    """Codex profile names are letters, digits, '-' and '_' (aliases may also hold '.')."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", alias)


def profiles(manifest: Manifest) -> dict[str, str]:
    """Profile name -> alias, for the aliases Codex sees (the first alias keeps a shared name)."""
    cfg = manifest.clients.codex or CodexClient()
    out: dict[str, str] = {}
    for alias in visible_aliases(manifest, cfg.models):
        out.setdefault(profile_name(alias), alias)
    return out


def provider_entry(manifest: Manifest, server_url: str) -> dict[str, Any]:
    server = manifest.server
    entry: dict[str, Any] = {
        "name": "local-ai",
        "base_url": f"{server_url}/v1",
        "wire_api": "responses",
    }
    if server.api_key or server.api_key_env:
        entry["env_key"] = server.api_key_env or DEFAULT_KEY_ENV
    return entry


def model_keys(manifest: Manifest, cfg: CodexClient, alias: str) -> dict[Slot, Any]:
    """What selects `alias` on the local-ai provider (top-level keys of config or a profile)."""
    return {
        ("model_provider",): cfg.provider_id,
        ("model",): alias,
        # Codex does not know a local model's window; without it, it guesses and warns.
        ("model_context_window",): manifest.models[alias].context,
    }


def desired(manifest: Manifest, server_url: str) -> Desired:
    cfg = manifest.clients.codex or CodexClient()
    visible = visible_aliases(manifest, cfg.models)
    entry = provider_entry(manifest, server_url)
    model = cfg.model or preferred_alias(manifest, visible)
    # Top-level keys first: they go in above the tables, the provider table at the end.
    config: dict[Slot, Any] = model_keys(manifest, cfg, model) if model else {}
    config[("model_providers", cfg.provider_id)] = entry
    files = [FileSpec("config", "toml-keys", config)]
    named = profiles(manifest)
    for name, alias in named.items():
        profile = {slot[0]: value for slot, value in model_keys(manifest, cfg, alias).items()}
        files.append(FileSpec(f"profile:{name}", "toml-file", {(): profile}))
    notes = [
        f"{alias} gets no profile: {profile_name(alias)} is already another alias's profile."
        for alias in visible
        if alias not in named.values()
    ]
    if "env_key" in entry:
        notes.append(
            f"Codex reads the API key from {entry['env_key']}: set it to {key_hint(manifest)}."
        )
    if not model:
        notes.append("No models are declared yet, so Codex gets the provider but no model.")
    return Desired(NAME, tuple(files), tuple(notes))

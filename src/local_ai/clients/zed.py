"""Zed: a provider under `language_models.openai_compatible.<provider_name>` in settings.json.

Zed's settings are JSON with comments; local-ai owns only its provider entry. Zed reads the
provider's API key from an environment variable derived from the provider name (upper snake
case + `_API_KEY`) or from its keychain, never from settings.json, so the key is never written.
local-ai also points the agent panel's default model (`agent.default_model`) at its provider.
"""

from __future__ import annotations

from typing import Any

from local_ai.clients.base import Slot
from local_ai.clients.spec import (
    Desired,
    FileSpec,
    is_env_name,
    key_hint,
    preferred_alias,
    upper_snake,
    visible_aliases,
)
from local_ai.manifest.models import Manifest, ZedClient

NAME = "zed"
AGENT_MODEL: Slot = ("agent", "default_model")
# Zed's defaults for openai_compatible models, written out so the entry says what it means.
CAPABILITIES = {
    "tools": True,
    "images": False,
    "parallel_tool_calls": False,
    "prompt_cache_key": False,
}


def api_key_env(provider_name: str) -> str:
    """The environment variable Zed reads for an openai_compatible provider's key."""
    return upper_snake(f"{provider_name}_API_KEY")


def provider_entry(manifest: Manifest, server_url: str, cfg: ZedClient) -> dict[str, Any]:
    models = []
    for alias in visible_aliases(manifest, cfg.models):
        spec = manifest.models[alias]
        models.append(
            {
                "name": alias,
                "display_name": spec.name or alias,
                "max_tokens": spec.context,
                "max_output_tokens": spec.max_output_tokens,
                "capabilities": dict(CAPABILITIES),
            }
        )
    return {"api_url": f"{server_url}/v1", "available_models": models}


def desired(manifest: Manifest, server_url: str) -> Desired:
    cfg = manifest.clients.zed or ZedClient()
    slot = ("language_models", "openai_compatible", cfg.provider_name)
    entry = provider_entry(manifest, server_url, cfg)
    slots: dict[Slot, Any] = {slot: entry}
    model = preferred_alias(manifest, [m["name"] for m in entry["available_models"]])
    if model:
        # The agent panel's model (Zed's own default is hosted, so needs the internet). Two
        # scalar slots, not one object, so other keys the user keeps there stay untouched.
        slots[(*AGENT_MODEL, "provider")] = cfg.provider_name
        slots[(*AGENT_MODEL, "model")] = model
    env = api_key_env(cfg.provider_name)
    notes = [
        f"Zed needs an API key for this provider even when the server has none: set {env} to "
        f"{key_hint(manifest)} in the environment Zed starts from, or enter it once in Zed's "
        "Agent settings (kept in the system keychain)."
    ]
    if not is_env_name(env):
        notes.append(
            f"{env} is not a valid environment variable name; enter the key in Zed's Agent "
            "settings or pick a provider_name made of letters, digits, '-' and '_'."
        )
    if not entry["available_models"]:
        notes.append("No models are declared yet, so Zed will list none.")
    return Desired(NAME, (FileSpec("settings", "jsonc", slots),), tuple(notes))

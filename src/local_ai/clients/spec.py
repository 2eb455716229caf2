"""What a client should contain, derived from the manifest (pure), and helpers shared by clients."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from local_ai.clients.base import FormatName, Slot
from local_ai.manifest.models import WILDCARD_HOSTS, Manifest

_LOOPBACK_NAMES = {"localhost", "127.0.0.1"}


@dataclass(frozen=True)
class FileSpec:
    """The slots local-ai wants in one file of a client (`role` names the file)."""

    role: str
    format: FormatName
    desired: dict[Slot, Any]
    secret: frozenset[Slot] = frozenset()


@dataclass(frozen=True)
class Desired:
    client: str
    files: tuple[FileSpec, ...]
    notes: tuple[str, ...] = ()
    secrets: tuple[str, ...] = field(default=(), repr=False)


def server_url(manifest: Manifest) -> str:
    """Where clients on this machine reach the gateway: loopback for loopback and wildcard
    binds (127.0.0.1, not `localhost`, so no client tries ::1 first)."""
    host = manifest.server.host
    if host in WILDCARD_HOSTS or host in _LOOPBACK_NAMES:
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{manifest.server.port}"


def visible_aliases(manifest: Manifest, listed: list[str] | None) -> list[str]:
    """The aliases a client sees, in the order it shows them: the listed ones as given, else the
    default model first and the rest alphabetically (never file order)."""
    if listed is not None:
        return list(dict.fromkeys(listed))
    default = manifest.default_alias
    rest = sorted(a for a in manifest.models if a != default)
    return ([default] if default else []) + rest


def preferred_alias(manifest: Manifest, visible: list[str]) -> str | None:
    default = manifest.default_alias
    if default in visible:
        return default
    return visible[0] if visible else None


def upper_snake(name: str) -> str:
    """Upper snake case as the Rust `convert_case` crate does it (Zed derives environment
    variable names this way): words split at - _ and spaces, lower→upper, letter↔digit and
    before the last capital of an acronym."""
    words: list[str] = []
    for chunk in re.split(r"[-_ ]+", name):
        word = ""
        for i, ch in enumerate(chunk):
            prev = chunk[i - 1] if i else ""
            nxt = chunk[i + 1] if i + 1 < len(chunk) else ""
            if word and (
                (prev.islower() and ch.isupper())
                or (prev.isalpha() and ch.isdigit())
                or (prev.isdigit() and ch.isalpha())
                or (prev.isupper() and ch.isupper() and nxt.islower())
            ):
                words.append(word)
                word = ""
            word += ch
        if word:
            words.append(word)
    return "_".join(w.upper() for w in words)


def is_env_name(name: str) -> bool:
    return re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) is not None


def key_hint(manifest: Manifest) -> str:
    """How to refer to the server's API key in a sentence."""
    server = manifest.server
    if server.api_key_env:
        return f"the value of ${server.api_key_env}"
    if server.api_key:
        return "server.api_key from local-ai.toml"
    return "any value (the server has no key)"

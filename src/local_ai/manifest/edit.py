"""Edit local-ai.toml in place through tomlkit, keeping the user's comments, order and layout.

Every edit is validated before it is written (a change that would make the manifest invalid
raises and leaves the file untouched), and the write is atomic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import Table
from tomlkit.toml_document import TOMLDocument

from local_ai.errors import ConfigError
from local_ai.manifest.load import decode_utf8, parse_manifest, parse_toml
from local_ai.manifest.models import Manifest
from local_ai.util.atomic import atomic_write_text


def edit_manifest(path: Path, change: Callable[[TOMLDocument], None]) -> Manifest:
    """Apply `change` to the parsed document, validate the result, then write it atomically."""
    text = decode_utf8(path.read_bytes(), path) if path.exists() else ""
    parse_toml(text, path)  # positioned syntax errors before tomlkit's own
    document = tomlkit.parse(text)
    change(document)
    new_text = tomlkit.dumps(document)
    manifest = parse_manifest(new_text, path)
    atomic_write_text(path, new_text)
    return manifest


def set_model(
    path: Path, alias: str, fields: Mapping[str, Any], *, replace: bool = False
) -> Manifest:
    """Add `[models.<alias>]` (or update its keys) with `fields`; other tables stay as written."""

    def change(document: TOMLDocument) -> None:
        models = document.get("models")
        if models is None:
            models = tomlkit.table(is_super_table=True)
            document["models"] = models
        if not isinstance(models, Table):
            raise ConfigError("`models` must be a table", path=path, key="models")
        existing = models.get(alias)
        if existing is None or replace:
            table = tomlkit.table()
            for key, value in fields.items():
                if value is not None:
                    table[key] = value
            if existing is not None:
                del models[alias]
            models[alias] = table
            return
        for key, value in fields.items():
            if value is None:
                existing.pop(key, None)
            else:
                existing[key] = value

    return edit_manifest(path, change)


def remove_model(path: Path, alias: str) -> Manifest:
    def change(document: TOMLDocument) -> None:
        models = document.get("models")
        if not isinstance(models, Table) or alias not in models:
            raise ConfigError(f"no model named {alias!r}", path=path, key=f"models.{alias}")
        del models[alias]

    return edit_manifest(path, change)

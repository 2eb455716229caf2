"""The alias map (`run/aliases.json`): the contract between apply and the server.

See docs/architecture.md. `server start` builds it from the manifest's `path` models until the
reconciler writes it; aliases already in the file (written by apply) are kept.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from local_ai.errors import ConfigError
from local_ai.manifest.models import Manifest
from local_ai.util.atomic import atomic_write_text

ALIAS_MAP_VERSION = 1


class AliasEntry(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    path: str
    context: int = 32768
    max_output_tokens: int = 8192
    name: str | None = None
    source: str | None = None
    format: str = "mlx"
    quantization: str | None = None


class AliasMap(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    version: int = ALIAS_MAP_VERSION
    default: str | None = None
    models: dict[str, AliasEntry] = Field(default_factory=dict)
    # Written by apply: identity of this map (reconcile.model.alias_map_hash) and its generation;
    # the gateway reports both so `plan` can tell whether a reload is needed.
    hash: str | None = None
    generation: int | None = None
    preload: list[str] = Field(default_factory=list)

    @property
    def default_alias(self) -> str | None:
        if self.default in self.models:
            return self.default
        return next(iter(self.models), None)

    def paths(self) -> set[str]:
        return {entry.path for entry in self.models.values()}


def load_alias_map(path: Path) -> AliasMap:
    """The alias map at `path`; an empty map when the file does not exist."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return AliasMap()
    try:
        return AliasMap.model_validate(json.loads(raw))
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"the alias map is invalid: {exc}",
            path=path,
            hint="run `local-ai apply` (or `local-ai server start`) to rewrite it",
        ) from exc


def save_alias_map(path: Path, alias_map: AliasMap) -> None:
    text = json.dumps(alias_map.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    atomic_write_text(path, text, mode=0o600)


def _quantization_label(config: dict[str, Any]) -> str | None:
    quant = config.get("quantization") or config.get("quantization_config")
    if isinstance(quant, dict) and "bits" in quant:
        return f"{quant['bits']}bit"
    dtype = config.get("torch_dtype") or config.get("dtype")
    return str(dtype) if dtype else None


def build_alias_map(
    manifest: Manifest, existing: AliasMap, *, base_dir: Path | None = None
) -> tuple[AliasMap, dict[str, str]]:
    """Alias map for `manifest`: `path` models that are MLX directories, plus the entries apply
    wrote for the manifest's other aliases. Aliases the manifest no longer names are dropped.

    Returns the map and, for each alias left out, the reason (shown by `server start`).
    """
    models: dict[str, AliasEntry] = {}
    skipped: dict[str, str] = {}
    for alias, spec in manifest.models.items():
        if spec.hosts:  # never served from this Mac alone
            skipped[alias] = "sharded across [cluster] hosts, which this version cannot serve yet"
            continue
        if spec.path is None:
            if alias in existing.models:
                models[alias] = existing.models[alias]
            else:
                skipped[alias] = "not installed yet; run `local-ai apply`"
            continue
        directory = Path(spec.path).expanduser()
        if not directory.is_absolute() and base_dir is not None:
            directory = base_dir / directory
        directory = directory.resolve()
        known = existing.models.get(alias)
        if known is not None and known.path == str(directory) and directory.is_dir():
            models[alias] = known  # written by apply for this very directory
            continue
        config_file = directory / "config.json"
        if not directory.is_dir() or not config_file.is_file():
            if alias in existing.models:
                models[alias] = existing.models[alias]
            else:
                skipped[alias] = f"{directory} is not an MLX model directory (no config.json)"
            continue
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            skipped[alias] = f"cannot read {config_file}: {exc}"
            continue
        models[alias] = AliasEntry(
            path=str(directory),
            context=spec.context,
            max_output_tokens=spec.max_output_tokens,
            name=spec.name,
            source=spec.path,
            format="mlx",
            quantization=_quantization_label(config if isinstance(config, dict) else {}),
        )
    default = manifest.default_alias
    if default not in models:
        default = next(iter(models), None)
    if models == dict(existing.models) and default == existing.default:
        return existing, skipped  # what apply wrote, with its hash and generation
    return AliasMap(default=default, models=models), skipped

"""The alias map (`run/aliases.json`): the contract between apply and the server.

See docs/architecture.md. The gateway serves this file as it is; `local_ai.reconcile.serving`
is the one place that decides what goes into it.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from local_ai import settings
from local_ai.errors import ConfigError
from local_ai.util.atomic import atomic_write_text

ALIAS_MAP_VERSION = 1


class GroupEntry(BaseModel):
    """A sharded alias: the ranks that serve it together (docs/cluster.md). Built by apply
    (local_ai.reconcile.serving) with what the gateway needs to start and watch the group."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    parallel: str  # "pipeline" | "tensor"
    backend: str
    hosts: list[str]  # [cluster.hosts] names, rank order (rank 0 is this machine)
    model_paths: list[str]  # the store entry on each rank's host, rank order
    pythons: list[str]  # each rank's Python, as a shell path
    addresses: list[str]  # each rank's backend address (all loopback: free ports are picked)
    ssh: list[list[str] | None]  # per rank, ssh argv running a command there (None: rank 0)
    hostfile: str  # mlx.launch's hostfile, written by apply


class AliasEntry(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    path: str
    context: int = 32768
    max_output_tokens: int = 8192
    name: str | None = None
    source: str | None = None
    format: str = "mlx"
    quantization: str | None = None
    digest: str | None = None  # the store entry's address, for a build local-ai made
    group: GroupEntry | None = None  # sharded across [cluster] hosts: served by its own group


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


def put_in_service(alias_map: AliasMap) -> None:
    """Write `alias_map` as run/aliases.json, the file the gateway serves (it re-reads it on
    start and on `POST /api/admin/reload`)."""
    paths = settings.paths()
    paths.run.mkdir(parents=True, exist_ok=True)
    paths.run.chmod(0o700)
    save_alias_map(paths.aliases_file, alias_map)

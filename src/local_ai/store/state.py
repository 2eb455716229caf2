"""state.json: what is installed where, written atomically with a serial number.

The serial increases on every write, so a reader can tell whether the state changed since it
looked (a plan made earlier records the serial it saw).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from local_ai.errors import ConfigError
from local_ai.util.atomic import atomic_write_text

STATE_VERSION: Literal[1] = 1


class FileRecord(BaseModel):
    """A file as it was when installed: enough to notice drift without re-hashing."""

    model_config = ConfigDict(extra="forbid")

    size: int
    sha256: str | None = None
    mtime_ns: int | None = None


class InstalledModel(BaseModel):
    """One alias as installed on disk."""

    model_config = ConfigDict(extra="forbid")

    alias: str
    source: str  # human label: repo[:file][@rev] or a local path
    format: Literal["mlx", "safetensors", "gguf"]
    location: str  # absolute directory the engine loads
    location_kind: Literal["store", "hf-cache", "local"]
    commit: str | None = None
    quantization: str | None = None
    recipe: dict[str, Any] = Field(default_factory=dict)
    store_digest: str | None = None
    spec_fingerprint: str = ""  # install_key() of the manifest fields that shaped this install
    spec: dict[str, Any] = Field(default_factory=dict)  # those fields, to explain a change
    files: dict[str, FileRecord] = Field(default_factory=dict)
    size_bytes: int = 0
    installed_at: float = Field(default_factory=time.time)
    # benchmark.gate kept this build out of service (why); the next apply measures it again
    rejected: str | None = None


class State(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = STATE_VERSION
    serial: int = 0
    models: dict[str, InstalledModel] = Field(default_factory=dict)
    benchmarks: list[dict[str, Any]] = Field(default_factory=list)


def load_state(path: Path) -> State:
    """The saved state; an absent file is an empty state."""
    try:
        raw = path.read_text("utf-8")
    except FileNotFoundError:
        return State()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot be read: {exc}", path=path) from None
    try:
        return State.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(
            f"is not a valid local-ai state file ({first})",
            path=path,
            hint=f"move {path.name} aside; `local-ai plan` then rebuilds it from the store",
        ) from None


def save_state(path: Path, state: State) -> State:
    """Write `state` with the next serial and return what was written."""
    written = state.model_copy(update={"serial": state.serial + 1})
    atomic_write_text(path, json.dumps(written.model_dump(mode="json"), indent=2) + "\n")
    return written

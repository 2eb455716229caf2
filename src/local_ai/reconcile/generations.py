"""Generations: the alias map of every successful apply, kept for `rollback` and `gc`.

`generations/<n>.json` holds one generation; `generations/current` names the one being served.
Writes are atomic, and the number only grows, so a killed apply leaves the previous generation
intact and current.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local_ai.errors import ConfigError, NotFoundError
from local_ai.server.aliases import AliasEntry, AliasMap
from local_ai.util.atomic import atomic_write_text
from local_ai.util.failpoints import failpoint

KEEP_DEFAULT = 10
_ROLLBACK = "rollback"  # marks a `current` that `rollback` chose (not a killed apply's leftover)


@dataclass(frozen=True)
class Generation:
    number: int
    created: float
    manifest_hash: str
    aliases: dict[str, AliasEntry]
    default: str | None
    preload: tuple[str, ...] = ()
    aliases_hash: str = ""
    lock: dict[str, Any] = field(default_factory=dict)
    server: dict[str, Any] = field(default_factory=dict)

    def alias_map(self) -> AliasMap:
        """The alias map this generation put in service (run/aliases.json, docs/architecture.md)."""
        return AliasMap(
            generation=self.number,
            hash=self.aliases_hash or None,
            default=self.default,
            preload=list(self.preload),
            models=dict(self.aliases),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "created": self.created,
            "manifest_hash": self.manifest_hash,
            "aliases": {a: e.model_dump(mode="json") for a, e in self.aliases.items()},
            "default": self.default,
            "preload": list(self.preload),
            "aliases_hash": self.aliases_hash,
            "lock": self.lock,
            "server": self.server,
        }


def _from_json(data: dict[str, Any]) -> Generation:
    return Generation(
        number=int(data["number"]),
        created=float(data["created"]),
        manifest_hash=str(data["manifest_hash"]),
        aliases={a: AliasEntry.model_validate(t) for a, t in data["aliases"].items()},
        default=data.get("default"),
        preload=tuple(data.get("preload", ())),
        aliases_hash=str(data.get("aliases_hash", "")),
        lock=dict(data.get("lock", {})),
        server=dict(data.get("server", {})),
    )


class Generations:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, number: int) -> Path:
        return self.directory / f"{number:06d}.json"

    def numbers(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        return sorted(int(p.stem) for p in self.directory.glob("*.json") if p.stem.isdigit())

    def load(self, number: int) -> Generation:
        path = self._path(number)
        try:
            return _from_json(json.loads(path.read_text("utf-8")))
        except FileNotFoundError:
            raise NotFoundError(
                f"generation {number} does not exist",
                hint="`local-ai generations` lists the ones kept",
            ) from None
        except (ValueError, KeyError, TypeError) as exc:  # pydantic's errors are ValueErrors
            raise ConfigError(f"is not a valid generation ({exc})", path=path) from None

    def all(self) -> list[Generation]:
        return [self.load(n) for n in self.numbers()]

    def _current(self) -> tuple[int | None, bool]:
        """(the generation in service, whether `rollback` chose it)."""
        try:
            words = (self.directory / "current").read_text("utf-8").split()
            return int(words[0]), words[1:] == [_ROLLBACK]
        except (FileNotFoundError, ValueError, IndexError):
            return None, False

    def current_number(self) -> int | None:
        return self._current()[0]

    def rolled_back_to(self) -> int | None:
        """The generation in service when `rollback` made it an older one than the newest
        (a killed apply can leave `current` behind too: that is no rollback)."""
        number, by_rollback = self._current()
        numbers = self.numbers()
        if number is None or not by_rollback or not numbers or number >= numbers[-1]:
            return None
        return number

    def current(self) -> Generation | None:
        number = self.current_number()
        return self.load(number) if number is not None else None

    def record(
        self,
        *,
        manifest_hash: str,
        aliases: dict[str, AliasEntry],
        default: str | None,
        preload: tuple[str, ...],
        aliases_hash: str,
        lock: dict[str, Any] | None = None,
        server: dict[str, Any] | None = None,
        keep: int = KEEP_DEFAULT,
    ) -> Generation:
        """Store a new generation and make it current; prune the oldest beyond `keep`."""
        numbers = self.numbers()
        generation = Generation(
            number=(numbers[-1] + 1) if numbers else 1,
            created=time.time(),
            manifest_hash=manifest_hash,
            aliases=aliases,
            default=default,
            preload=preload,
            aliases_hash=aliases_hash,
            lock=lock or {},
            server=server or {},
        )
        atomic_write_text(self._path(generation.number), json.dumps(generation.to_json(), indent=2))
        self.set_current(generation.number)
        failpoint("generation.switched")  # current names it; older ones not yet pruned
        for old in self.numbers()[:-keep]:
            if old != generation.number:
                self._path(old).unlink(missing_ok=True)
        return generation

    def set_current(self, number: int, *, rollback: bool = False) -> None:
        self.load(number)  # refuse to point at a generation that is not there
        marker = f" {_ROLLBACK}" if rollback else ""
        atomic_write_text(self.directory / "current", f"{number}{marker}\n")

    def referenced_paths(self) -> set[str]:
        """Every model directory a kept generation serves: `gc` must not delete these."""
        return {t.path for g in self.all() for t in g.aliases.values()}

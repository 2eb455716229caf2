"""What `gc` deletes: store entries nothing references (installed and served aliases, kept
generations, a cluster's holds) and leftovers of killed runs."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local_ai.settings import Paths
from local_ai.store.holds import list_holds, remove_incoming, stale_incoming
from local_ai.store.layout import Store, StoreEntry, disk_usage, read_json, served_paths


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


@dataclass(frozen=True)
class References:
    """Who still needs which store path: installed aliases, the served alias map, generations."""

    by_path: dict[str, tuple[str, ...]]

    def holders(self, path: Path) -> tuple[str, ...]:
        return self.by_path.get(str(path), ())


def find_references(paths: Paths, *, holds: bool = True) -> References:
    """Every store directory referenced by state.json, run/aliases.json, a kept generation or
    (`holds`) a cluster's hold. Generations are scanned for any string naming a store path,
    whatever their layout."""
    by_path: dict[str, list[str]] = {}

    def add(raw: str, holder: str) -> None:
        store_root = str(paths.store) + os.sep
        if raw.startswith(store_root):
            # The entry directory itself, even if a path inside it was named.
            top = raw[len(store_root) :].split(os.sep, 1)[0]
            by_path.setdefault(str(paths.store / top), []).append(holder)

    state = read_json(paths.state_file)
    models = state.get("models") if isinstance(state, dict) else None
    for alias, model in (models or {}).items():
        if isinstance(model, dict) and isinstance(model.get("location"), str):
            add(model["location"], f"installed alias {alias}")
    for alias, location in served_paths(paths).items():
        add(location, f"served alias {alias} (run/aliases.json)")
    if paths.generations.is_dir():
        for gen in sorted(paths.generations.glob("*.json")):
            for text in set(_strings(read_json(gen))):
                add(text, f"generation {gen.stem}")
    for hold in list_holds(paths) if holds else ():
        add(str(paths.store / hold.entry), hold.describe())
    return References({k: tuple(dict.fromkeys(v)) for k, v in by_path.items()})


@dataclass(frozen=True)
class Garbage:
    """What `gc` would delete: unreferenced store entries and leftovers of killed runs; and the
    entries it keeps for a cluster (their holds), to say why."""

    entries: tuple[tuple[StoreEntry, int], ...]  # (entry, bytes)
    staging: tuple[tuple[Path, int], ...]
    incomplete: tuple[tuple[Path, int], ...]  # *.incomplete blobs in the HF cache
    incoming: tuple[tuple[Path, int], ...] = ()  # copies from a rank 0 cut short, not resumed now
    held: tuple[tuple[StoreEntry, tuple[str, ...]], ...] = ()  # kept for a cluster: why

    @property
    def total_bytes(self) -> int:
        items = (*self.entries, *self.staging, *self.incomplete, *self.incoming)
        return sum(size for _, size in items)

    @property
    def empty(self) -> bool:
        return not (self.entries or self.staging or self.incomplete or self.incoming)


def find_garbage(
    store: Store, incomplete: list[Path] | None = None, *, holds: bool = True
) -> Garbage:
    """`holds=False`: as if this host's cluster holds were released (`gc --release-holds`)."""
    refs = find_references(store.paths, holds=holds)
    entries = tuple(
        (entry, disk_usage(entry.path)) for entry in store.entries() if not refs.holders(entry.path)
    )
    staging = tuple((path, disk_usage(path)) for path in store.leftovers())
    leftovers = tuple((p, p.stat().st_size) for p in incomplete or [] if p.exists())
    kept = list_holds(store.paths) if holds else []
    held = tuple(
        (entry, why)
        for entry in store.entries()
        if (why := tuple(h.describe() for h in kept if h.entry == entry.path.name))
    )
    incoming = tuple(stale_incoming(store.paths))
    return Garbage(entries, staging, leftovers, incoming, held)


def collect_garbage(store: Store, garbage: Garbage, *, holds: bool = True) -> int:
    """Delete what `find_garbage` found, re-checking references first (call under the apply
    lock). Returns the bytes freed."""
    refs = find_references(store.paths, holds=holds)
    freed = 0
    for entry, size in garbage.entries:
        if refs.holders(entry.path) or not entry.path.is_dir():
            continue
        store.remove(entry)
        freed += size
    for path, size in (*garbage.staging, *garbage.incomplete):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        freed += size
    for path, size in garbage.incoming:
        if remove_incoming(store.paths, path):  # unless a copy took it up meanwhile
            freed += size
    return freed

"""The model store: immutable directories addressed by a digest of everything that made them.

An entry is built in `staging/` on the same filesystem, then renamed to `store/<digest>-<name>/`
in one step, so a killed build never leaves a half-written entry in view. `.local-ai.json` inside
each entry records its provenance.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat as stat_module
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local_ai.settings import Paths
from local_ai.util.atomic import atomic_write_text, fsync_dir
from local_ai.util.failpoints import failpoint

PROVENANCE_FILE = ".local-ai.json"
_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")
DIGEST_CHARS = 16


def entry_digest(inputs: Mapping[str, Any]) -> str:
    """Canonical hash of the inputs that determine an entry's bytes (source commit, files and
    their sha256, recipe, converter version). Key order never matters."""
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:DIGEST_CHARS]


def safe_name(name: str) -> str:
    """A readable directory-name part: 'mlx-community/Qwen3-8B' -> 'mlx-community--Qwen3-8B'."""
    cleaned = _NAME_RE.sub("-", name.replace("/", "--")).strip(".-")
    return cleaned[:80] or "model"


@dataclass(frozen=True)
class StoreEntry:
    path: Path
    digest: str
    name: str

    @property
    def provenance(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.path / PROVENANCE_FILE).read_text("utf-8"))
        return data


class Store:
    def __init__(self, paths: Paths) -> None:
        self.paths = paths

    def entry_path(self, digest: str, name: str) -> Path:
        return self.paths.store / f"{digest}-{safe_name(name)}"

    def get(self, digest: str, name: str) -> StoreEntry | None:
        """The finished entry, or None. Entries without provenance are not finished."""
        path = self.entry_path(digest, name)
        if (path / PROVENANCE_FILE).is_file():
            return StoreEntry(path, digest, safe_name(name))
        return None

    def entries(self) -> list[StoreEntry]:
        if not self.paths.store.is_dir():
            return []
        found = []
        for path in sorted(self.paths.store.iterdir()):
            digest, _, name = path.name.partition("-")
            if path.is_dir() and (path / PROVENANCE_FILE).is_file():
                found.append(StoreEntry(path, digest, name))
        return found

    @contextlib.contextmanager
    def build(self, digest: str, name: str, provenance: Mapping[str, Any]) -> Iterator[Path]:
        """Yield an empty staging directory; on success it becomes the store entry.

        If the entry appears meanwhile (another process built the same thing), the staging copy
        is discarded: entries with the same digest are interchangeable.
        """
        self.paths.staging.mkdir(parents=True, exist_ok=True)
        self.paths.store.mkdir(parents=True, exist_ok=True)
        staging = self.paths.staging / f"{digest}-{safe_name(name)}.{os.getpid()}.{time.time_ns()}"
        staging.mkdir()
        try:
            yield staging
            record = {**provenance, "digest": digest, "built_at": time.time()}
            atomic_write_text(staging / PROVENANCE_FILE, json.dumps(record, indent=2, default=str))
            target = self.entry_path(digest, name)
            failpoint("store.before-rename")  # complete in staging/, not in the store
            try:
                staging.rename(target)
            except OSError:
                if not (target / PROVENANCE_FILE).is_file():
                    raise
                shutil.rmtree(staging, ignore_errors=True)  # identical entry won the race
            fsync_dir(self.paths.store)
            failpoint("store.after-rename")  # in the store, not yet in state.json
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def remove(self, entry: StoreEntry) -> None:
        """Crash-safe removal: rename out of view first, then delete."""
        self.paths.staging.mkdir(parents=True, exist_ok=True)
        trash = self.paths.staging / f"trash-{entry.path.name}.{time.time_ns()}"
        entry.path.rename(trash)
        fsync_dir(self.paths.store)
        failpoint("store.remove-renamed")  # out of the store, not yet deleted
        shutil.rmtree(trash, ignore_errors=True)

    def leftovers(self) -> list[Path]:
        """Staging directories of runs that were killed (their pid is gone)."""
        if not self.paths.staging.is_dir():
            return []
        import psutil

        stale = []
        for path in self.paths.staging.iterdir():
            pid = _staging_pid(path.name)
            if pid is None or not psutil.pid_exists(pid) or path.name.startswith("trash-"):
                stale.append(path)
        return stale

    def clean_leftovers(self) -> list[Path]:
        removed = self.leftovers()
        for path in removed:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return removed


def _staging_pid(name: str) -> int | None:
    parts = name.rsplit(".", 2)
    if len(parts) == 3 and parts[1].isdigit():
        return int(parts[1])
    return None


# ---- sizes, references and garbage ----------------------------------------------------------


def disk_usage(path: Path) -> int:
    """Bytes `path` occupies, following the HF cache's symlinks to their blobs and counting each
    file once (hard links, several links to one blob)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    candidates = [path] if not path.is_dir() else (p for p in path.rglob("*"))
    for item in candidates:
        try:
            stat = item.stat()  # follows symlinks
        except OSError:
            continue
        if not stat_module.S_ISREG(stat.st_mode):
            continue
        key = (stat.st_dev, stat.st_ino)
        if key not in seen:
            seen.add(key)
            total += stat.st_size
    return total


def read_json(path: Path) -> Any:
    """A JSON file written by another part of local-ai, or None when absent or unreadable."""
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None


def served_paths(paths: Paths) -> dict[str, str]:
    """alias -> model directory in `run/aliases.json`: what the server serves (or will serve on
    its next start)."""
    data = read_json(paths.aliases_file)
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        return {}
    out: dict[str, str] = {}
    for alias, entry in models.items():
        if isinstance(entry, dict) and isinstance(entry.get("path"), str):
            out[str(alias)] = entry["path"]
    return out


def server_running(paths: Paths) -> bool:
    """Whether the pid in run/server.json is alive."""
    data = read_json(paths.server_pidfile)
    pid = data.get("pid") if isinstance(data, dict) else None
    if not isinstance(pid, int) or pid <= 0:
        return False
    import psutil

    return bool(psutil.pid_exists(pid))

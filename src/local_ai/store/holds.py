"""Holds: a cluster's rank 0 serves a store entry of this host, so `gc` here must keep it.

Nothing else on a cluster host refers to the entries copied there (its state.json, alias map and
generations are its own), so each (rank 0, alias) that serves an entry from here leaves a record:
``cluster/holds/<entry>/<rank0>--<alias>.json`` (JSON, written atomically). `copy receive`
writes it once the entry is in place, and a follower rank each time it starts serving it.
Rank 0's apply releases it when it no longer places that alias here (docs/cluster.md).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from local_ai.settings import Paths
from local_ai.store.layout import PROVENANCE_FILE, disk_usage, read_json, safe_name
from local_ai.util.atomic import atomic_write_text


@dataclass(frozen=True)
class Hold:
    entry: str  # the store entry directory name, `<digest>-<name>`
    rank0: str  # the [cluster] rank0 name of the cluster serving it
    alias: str
    confirmed_at: float  # when it was last written: a copy, or a group start
    how: str  # "copied here" or "rank 1 started"

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.confirmed_at))
        return (
            f"held for cluster alias {self.alias} of host {self.rank0} "
            f"(last confirmed {when}: {self.how})"
        )


def _file(paths: Paths, entry: str, rank0: str, alias: str) -> Path:
    return paths.holds / entry / f"{safe_name(rank0)}--{safe_name(alias)}.json"


def write_hold(paths: Paths, entry: str, rank0: str, alias: str, how: str) -> Hold:
    """Record (or refresh) that `rank0`'s `alias` serves store entry `entry` from here."""
    hold = Hold(entry, rank0, alias, time.time(), how)
    path = _file(paths, entry, rank0, alias)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(hold.__dict__, indent=2))
    return hold


def list_holds(paths: Paths) -> list[Hold]:
    """Every hold recorded here, by entry; unreadable records are skipped (gc then frees)."""
    if not paths.holds.is_dir():
        return []
    found = []
    for path in sorted(paths.holds.glob("*/*.json")):
        data = read_json(path)
        try:
            found.append(
                Hold(
                    str(data["entry"]),
                    str(data["rank0"]),
                    str(data["alias"]),
                    float(data["confirmed_at"]),
                    str(data.get("how", "")),
                )
            )
        except (TypeError, KeyError, ValueError):
            continue
    return found


def release_hold(paths: Paths, entry: str, rank0: str, alias: str) -> bool:
    """Drop one hold; False when there was none."""
    path = _file(paths, entry, rank0, alias)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # the last hold of that entry
    return True


def hold_of_path(model_path: str) -> tuple[Paths, str] | None:
    """(the local-ai home, entry) of a store entry path `<home>/store/<entry>`, else None."""
    path = Path(model_path)
    if path.parent.name != "store" or not (path / PROVENANCE_FILE).is_file():
        return None
    return Paths(path.parent.parent), path.name


# ---- incoming/: copies from rank 0 that were cut short ----------------------------------------


@contextlib.contextmanager
def incoming_lock(paths: Paths, entry: str) -> Iterator[IO[str] | None]:
    """The per-entry lock a copy into incoming/ holds: yields the lock, or None when a copy of
    `entry` is under way now."""
    import fcntl

    paths.incoming.mkdir(parents=True, exist_ok=True)
    with (paths.incoming / f"{entry}.lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        yield lock


def stale_incoming(paths: Paths) -> list[tuple[Path, int]]:
    """Partial copies in incoming/ that no copy is continuing now, with their sizes."""
    if not paths.incoming.is_dir():
        return []
    found = []
    for path in sorted(paths.incoming.iterdir()):
        if not path.is_dir():
            continue
        with incoming_lock(paths, path.name) as lock:
            if lock is not None:
                found.append((path, disk_usage(path)))
    return found


def remove_incoming(paths: Paths, path: Path) -> bool:
    """Delete one partial copy unless a copy took it up meanwhile."""
    with incoming_lock(paths, path.name) as lock:
        if lock is None or not path.is_dir():
            return False
        shutil.rmtree(path, ignore_errors=True)
        return True

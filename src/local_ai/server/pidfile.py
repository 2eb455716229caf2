"""The pidfile (`run/server.json`): which process serves, since when, with which config.

A pid alone is not an identity: after a crash or reboot the number may belong to an unrelated
process. The process start time recorded next to it tells the two apart, so `stop` never
signals a stranger and `status` reports a stale file as stopped.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from local_ai.util.atomic import atomic_write_text

# psutil derives start times from boot time + ticks; allow for rounding, not for reuse.
START_TIME_TOLERANCE_S = 0.05


@dataclass(frozen=True)
class PidInfo:
    pid: int
    started: float  # process start time (psutil create_time), the identity check
    host: str
    port: int
    url: str
    config_hash: str
    token: str
    version: str
    started_at: str  # wall clock, ISO 8601, for people
    manifest: str | None = None
    engine_pid: int | None = None
    engine_started: float | None = None


def read_pidfile(path: Path) -> PidInfo | None:
    """The pidfile's content; None when absent or unreadable (an unreadable file is stale)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return PidInfo(**data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        return None


def write_pidfile(path: Path, info: PidInfo) -> None:
    atomic_write_text(path, json.dumps(asdict(info), indent=2, sort_keys=True) + "\n", mode=0o600)


def remove_pidfile(path: Path, *, token: str | None = None) -> None:
    """Remove the pidfile; with `token`, only if it is still ours (a newer server may own it)."""
    if token is not None:
        current = read_pidfile(path)
        if current is not None and current.token != token:
            return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def process_start_time(pid: int) -> float | None:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, ValueError):
        return None


def is_same_process(pid: int | None, started: float | None) -> bool:
    """True when `pid` is alive and is the very process that started at `started`."""
    if pid is None or started is None or pid <= 0:
        return False
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        actual = float(proc.create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, ValueError):
        return False
    return abs(actual - started) <= START_TIME_TOLERANCE_S

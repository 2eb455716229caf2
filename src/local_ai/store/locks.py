"""The apply lock: one writer of the store and state at a time.

filelock holds the OS lock (released by the kernel if the holder dies); a JSON sidecar says who
holds it so a refused writer can name the holder's pid and command.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from local_ai.errors import LockHeldError
from local_ai.util.atomic import atomic_write_text


def _holder_file(lock_path: Path) -> Path:
    return lock_path.with_name(lock_path.name + ".holder")


def describe_holder(lock_path: Path, *, wait: float = 0.0) -> str:
    """Who holds the lock; `wait` covers the moment between a holder's acquire and its note."""
    deadline = time.monotonic() + wait
    while True:
        try:
            info = json.loads(_holder_file(lock_path).read_text("utf-8"))
            return f"pid {info['pid']} ({info['command']})"
        except (OSError, ValueError, KeyError):
            if time.monotonic() >= deadline:
                return "another local-ai process"
            time.sleep(0.05)


@contextlib.contextmanager
def apply_lock(
    lock_path: Path, *, timeout: float = 0, command: str | None = None
) -> Iterator[None]:
    """Hold the apply lock; fail fast (timeout 0) or wait up to `timeout` seconds."""
    from filelock import FileLock, Timeout

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path), timeout=timeout)
    try:
        lock.acquire(timeout=timeout, poll_interval=0.1)
    except Timeout:
        holder = describe_holder(lock_path, wait=1.0)
        waited = f" after waiting {timeout:g} s" if timeout else ""
        raise LockHeldError(
            f"{holder} is changing the model store or the server{waited}",
            hint="wait for it to finish, or pass --lock-timeout SECONDS to wait",
        ) from None
    try:
        info = {
            "pid": os.getpid(),
            "command": command or " ".join(["local-ai", *sys.argv[1:]]),
            "since": time.time(),
        }
        atomic_write_text(_holder_file(lock_path), json.dumps(info))
        yield
    finally:
        with contextlib.suppress(OSError):
            _holder_file(lock_path).unlink()
        lock.release()

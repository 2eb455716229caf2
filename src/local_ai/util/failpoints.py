"""Named crash points for the crash-safety tests (tests/test_crash_points.py).

`failpoint("name")` marks a place where a crash must leave everything recoverable. When
`LOCAL_AI_FAILPOINT` names it (`name`, or `name@N` for its N-th hit in this process), the
process sends itself SIGKILL there: a real `kill -9` at a deterministic point. With
`LOCAL_AI_FAILPOINT_ACTION=stop` it sends itself SIGSTOP instead (whoever armed it resumes it
with SIGCONT). Unset, a call costs one environment lookup. docs/reliability.md lists the points.
"""

from __future__ import annotations

import os
import signal
import threading

from local_ai import settings

_hits: dict[str, int] = {}
_lock = threading.Lock()


def _armed(name: str) -> bool:
    wanted = settings.failpoint()
    if wanted is None:
        return False
    point, _, nth = wanted.partition("@")
    if point != name:
        return False
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        count = _hits[name]
    return count == (int(nth) if nth.isdigit() else 1)


def failpoint(name: str, *, parent: bool = False) -> None:
    """SIGKILL this process (or, with `parent`, the process that started it: a worker's way
    to kill the CLI mid-task) when `name` is the armed failpoint."""
    if not _armed(name):
        return
    target = os.getppid() if parent else os.getpid()
    os.kill(target, signal.SIGSTOP if settings.failpoint_stops() else signal.SIGKILL)


def disarmed_env(env: dict[str, str]) -> dict[str, str]:
    """`env` without the failpoint, for long-lived children (the server) that must not die at a
    point meant for the command that started them."""
    armed = (settings.ENV_FAILPOINT, settings.ENV_FAILPOINT_ACTION)
    return {k: v for k, v in env.items() if k not in armed}

"""Parent side of the conversion process: start the worker, stream its events, enforce the memory
limit, and turn whatever happened into a result or a typed error.

Memory is capped twice: the worker sets ``RLIMIT_AS`` on itself (enforced on Linux), and this side
polls the worker's resident size and kills it past the limit (the part that works on macOS, where
``RLIMIT_AS`` is accepted but not enforced). Either way the CLI process is never the one that runs
out of memory.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from local_ai import errors, settings
from local_ai.errors import ConversionError, LocalAIError, MalformedFileError

EventHandler = Callable[[dict[str, Any]], None]
_POLL_SECONDS = 0.1
_MIN_LIMIT = 256 << 20


def default_memory_limit() -> int:
    """Three quarters of physical memory: a runaway conversion fails before the machine swaps."""
    import psutil

    return int(psutil.virtual_memory().total * 3 // 4)


def parse_size(text: str) -> int:
    """'8G', '512M', '1.5GB' or a byte count -> bytes."""
    raw = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        if raw and raw[-1] in units:
            return int(float(raw[:-1]) * units[raw[-1]])
        return int(raw)
    except ValueError:
        raise LocalAIError(
            f"{text!r} is not a size", hint="write a number with a unit, e.g. 8G or 512M"
        ) from None


def rebuild_error(payload: dict[str, Any], memory_limit: int | None) -> LocalAIError:
    """The typed error the worker reported, as an exception of the same class."""
    kind = payload.get("type")
    message = str(payload.get("message", "conversion failed"))
    hint = payload.get("hint")
    if kind == "MalformedFileError":
        return MalformedFileError(
            Path(payload["path"]),
            str(payload["field"]),
            str(payload["problem"]),
            offset=payload.get("offset"),
            hint=hint,
        )
    if kind == "MemoryLimit":
        return _memory_error(memory_limit, message)
    if kind == "internal":
        tb = payload.get("traceback", "")
        detail = f"\n{tb}" if settings.debug() and tb else ""
        return ConversionError(
            f"the converter failed: {message}{detail}",
            hint="this is a bug in local-ai; rerun with LOCAL_AI_DEBUG=1 and report it",
        )
    cls = getattr(errors, str(kind), None)
    if isinstance(cls, type) and issubclass(cls, LocalAIError) and cls is not MalformedFileError:
        try:
            return cls(message, hint=hint)
        except TypeError:  # a class with a different constructor
            pass
    return ConversionError(message, hint=hint)


def _memory_error(limit: int | None, detail: str = "") -> ConversionError:
    size = f"{limit / (1 << 30):.1f} GiB" if limit else "its"
    return ConversionError(
        f"the conversion needed more than {size} of memory and was stopped"
        + (f" ({detail})" if detail else ""),
        hint="close other applications or raise the limit with --memory-limit; a model file "
        "that needs far more memory than its size may be malformed",
    )


def run_worker(
    request: dict[str, Any],
    *,
    memory_limit: int | None = None,
    on_event: EventHandler | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run one request in a fresh worker process and return its result."""
    import psutil

    limit = max(memory_limit, _MIN_LIMIT) if memory_limit else None
    payload = json.dumps({**request, "memory_limit": limit})
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "local_ai.convert.worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
    over_limit = threading.Event()
    done = threading.Event()

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            stderr_tail.append(line.rstrip("\n"))

    def watch() -> None:
        try:
            child = psutil.Process(proc.pid)
            while not done.wait(_POLL_SECONDS):
                if limit and child.memory_info().rss > limit:
                    over_limit.set()
                    proc.kill()
                    return
        except psutil.Error:
            return

    threads = [
        threading.Thread(target=drain, daemon=True),
        threading.Thread(target=watch, daemon=True),
    ]
    for t in threads:
        t.start()
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    timer = threading.Timer(timeout, proc.kill) if timeout else None
    if timer:
        timer.start()
    try:
        assert proc.stdin is not None and proc.stdout is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(payload)
            proc.stdin.close()
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                stderr_tail.append(line.rstrip("\n"))
                continue
            if not isinstance(event, dict):
                continue
            kind = event.get("event")
            if kind == "result":
                result = event.get("result") or {}
            elif kind == "error":
                error = event.get("error") or {}
            elif on_event is not None:
                on_event(event)
        code = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        done.set()
        if timer:
            timer.cancel()
        for t in threads:
            t.join(timeout=2)
    if over_limit.is_set():
        raise _memory_error(limit)
    if error is not None:
        raise rebuild_error(error, limit)
    if code == 0 and result is not None:
        return result
    tail = "\n".join(list(stderr_tail)[-15:])
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if limit and -code in (signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT):
            raise _memory_error(limit, f"the converter was killed by {name}")
        raise ConversionError(f"the converter was killed by {name}", hint=_tail_hint(tail))
    if "bad_alloc" in tail or "MemoryError" in tail:
        raise _memory_error(limit)
    raise ConversionError(f"the converter exited with code {code}", hint=_tail_hint(tail))


def _tail_hint(tail: str) -> str:
    if not tail:
        return "rerun with LOCAL_AI_DEBUG=1 for details"
    return "its last output was:\n" + tail

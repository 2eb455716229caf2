"""The conversion process: ``python -m local_ai.convert.worker`` reads one JSON request on stdin
and answers with JSON lines (events, then a result or an error) on its original stdout.

It runs apart from the CLI so that a hostile or huge model file can at worst kill this process.
Before importing MLX it caps its own address space (Linux ``RLIMIT_AS``; macOS does not enforce
that limit, so there the parent also watches the resident size). Anything else printed — mlx-lm's
``[INFO]`` lines, C-level output — goes to stderr, which the parent keeps for diagnostics.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import traceback
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import IO, Any

from local_ai.convert.recipe import Recipe
from local_ai.convert.safetensors_to_mlx import convert_safetensors
from local_ai.errors import LocalAIError, MalformedFileError
from local_ai.util.failpoints import failpoint


def _limit_memory(limit: int | None) -> None:
    if not limit or sys.platform != "linux":
        return
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def _exit_with_parent(poll: float = 0.5) -> None:
    """End this process when the parent dies (kill -9 of the CLI): an orphaned conversion
    would keep writing into a staging directory nobody will rename."""
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll)
            if os.getppid() != parent:
                os._exit(137)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _disk_full(exc: BaseException, text: str, out_dir: Path | None) -> bool:
    """ENOSPC, or mlx's own "[write] Unable to write N bytes" (no errno) with less than N bytes
    free where the output goes."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    import re
    import shutil

    short = re.search(r"Unable to write (\d+) bytes", text)
    if not short or out_dir is None:
        return False
    try:
        return shutil.disk_usage(out_dir if out_dir.exists() else out_dir.parent).free < int(
            short.group(1)
        )
    except OSError:
        return False


def error_payload(exc: BaseException, out_dir: Path | None = None) -> dict[str, Any]:
    """A typed error as JSON; the parent rebuilds the same class (see runner.rebuild_error)."""
    if isinstance(exc, MalformedFileError):
        return {
            "type": "MalformedFileError",
            "message": exc.message,
            "hint": exc.hint,
            "path": str(exc.path),
            "field": exc.field,
            "problem": exc.problem,
            "offset": exc.offset,
        }
    if isinstance(exc, LocalAIError):
        return {"type": type(exc).__name__, "message": exc.message, "hint": exc.hint}
    if isinstance(exc, MemoryError):
        return {"type": "MemoryLimit", "message": "the converter ran out of its memory limit"}
    text = str(exc)
    if _disk_full(exc, text, out_dir):
        where = (
            out_dir.parent
            if out_dir is not None
            else Path(getattr(exc, "filename", None) or ".").parent
        )
        return {
            "type": "DiskSpaceError",
            "message": f"no space left on the disk holding {where} while writing the converted "
            "model",
            "hint": "free up space on that disk (`local-ai gc` removes unused store entries), or "
            "put LOCAL_AI_HOME (or --out) on a larger one, and run it again; the partial output "
            "was deleted",
        }
    # The last one: a shared library that cannot be mapped under the address-space limit.
    if any(s in text for s in ("bad_alloc", "Unable to allocate", "[malloc]", "map segment")):
        return {"type": "MemoryLimit", "message": f"the converter ran out of memory: {text}"}
    return {
        "type": "internal",
        "message": f"{type(exc).__name__}: {text}",
        "traceback": "".join(traceback.format_exception(exc)),
    }


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return value


def handle(request: dict[str, Any], emit: Any) -> dict[str, Any]:
    op = request["op"]
    source = Path(request["source"])
    if op == "inspect" and request["kind"] == "gguf":
        from local_ai.convert.gguf_to_mlx import inspect_gguf

        return inspect_gguf(source)
    if op != "convert":
        raise ValueError(f"unknown request {op!r}")
    recipe = Recipe.from_json(request["recipe"])
    out_dir = Path(request["out_dir"])
    failpoint("convert.worker-started")  # the worker itself stops or dies; the CLI waits on it
    if request["kind"] == "gguf":
        from local_ai.convert.gguf_to_mlx import DEFAULT_SHARD_BYTES, convert_gguf

        result: Any = convert_gguf(
            source,
            out_dir,
            recipe,
            on_event=emit,
            shard_bytes=int(request.get("shard_bytes") or DEFAULT_SHARD_BYTES),
        )
    else:
        result = convert_safetensors(source, out_dir, recipe, on_event=emit)
    out: dict[str, Any] = _jsonable(result)
    return out


def _out_dir(request: Any) -> Path | None:
    raw = request.get("out_dir") if isinstance(request, dict) else None
    return Path(raw) if isinstance(raw, str) else None


def main() -> int:
    # Keep the real stdout for events; everything else printed goes to stderr.
    events: IO[str] = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def emit(event: dict[str, Any]) -> None:
        events.write(json.dumps(event, default=str) + "\n")

    _exit_with_parent()
    request: Any = None
    try:
        request = json.loads(sys.stdin.read())
        _limit_memory(request.get("memory_limit"))
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        result = handle(request, emit)
    except BaseException as exc:  # every failure is reported as data, never as a traceback
        if isinstance(exc, KeyboardInterrupt):
            return 130
        try:
            emit({"event": "error", "error": error_payload(exc, _out_dir(request))})
        except BaseException:
            return 3
        return 1
    emit({"event": "result", "result": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The web page at `/`: static files shipped in this package (no build step, no CDN), and the
per-model facts it shows that the gateway does not otherwise track (size, benchmark history)."""

from __future__ import annotations

import functools
import os
from importlib import resources
from pathlib import Path
from typing import Any

# Everything the page loads comes from the gateway itself; nothing inline, nothing remote.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

ASSETS: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}

BENCH_HISTORY = 20  # points in the page's sparkline


@functools.cache
def asset(path: str) -> tuple[bytes, bytes] | None:
    """Body and content type of the page's file at URL `path`, None when there is none."""
    known = ASSETS.get(path)
    if known is None:
        return None
    name, content_type = known
    body = resources.files(__package__).joinpath(name).read_bytes()
    return body, content_type.encode()


def headers() -> list[tuple[bytes, bytes]]:
    return [
        (b"content-security-policy", CSP.encode()),
        (b"cache-control", b"no-cache"),
        (b"cross-origin-opener-policy", b"same-origin"),
    ]


def load_error(engine_status: dict[str, Any], path: str, *, detail: bool) -> str | None:
    """The engine's last error loading `path`; without `detail` only that there was one (the
    text names files on this machine)."""
    error = (engine_status.get("errors") or {}).get(path)
    if error is None or detail:
        return error
    return "the model failed to load (the API key shows why)"


def public_source(source: str | None) -> str | None:
    """The model's source for an unauthenticated page: a hub repo id, never a local path."""
    if not source or source.startswith(("/", "~", ".")) or "\\" in source:
        return None
    return source


@functools.lru_cache(maxsize=64)
def _directory_size(path: str, mtime_ns: int) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size  # follows HF cache symlinks
            except OSError:
                continue
    return total


def directory_size(path: str) -> int | None:
    try:
        return _directory_size(path, Path(path).stat().st_mtime_ns)
    except OSError:
        return None


@functools.lru_cache(maxsize=4)
def _benchmarks(state_file: str, mtime_ns: int) -> dict[str, list[dict[str, Any]]]:
    from local_ai.store.state import load_state

    out: dict[str, list[dict[str, Any]]] = {}
    for record in load_state(Path(state_file)).benchmarks:
        alias = record.get("alias")
        single = next(
            (lvl for lvl in record.get("levels") or [] if lvl.get("concurrency") == 1), None
        )
        if not isinstance(alias, str) or single is None:
            continue
        out.setdefault(alias, []).append(
            {
                "at": record.get("at"),
                "model_path": record.get("model_path"),
                "tok_s": (single.get("decode_tps_per_stream") or {}).get("median"),
                "ttft_s": (single.get("ttft_s") or {}).get("median"),
            }
        )
    return out


def benchmarks(state_file: Path, alias: str, model_path: str) -> list[dict[str, Any]]:
    """The last benchmark results of `alias` measured on the model it serves now."""
    try:
        mtime = state_file.stat().st_mtime_ns
    except OSError:
        return []
    try:
        by_alias = _benchmarks(str(state_file), mtime)
    except Exception:  # an unreadable state file must not break the status page
        return []
    points = [
        {k: v for k, v in p.items() if k != "model_path"}
        for p in by_alias.get(alias, [])
        if p.get("model_path") in (None, model_path)
    ]
    return points[-BENCH_HISTORY:]

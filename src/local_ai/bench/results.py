"""Benchmark results kept in state.json, with what they were measured on: the model directory,
its quantization, the versions of local-ai, mlx and mlx-lm, and the machine."""

from __future__ import annotations

from typing import Any

from local_ai import settings
from local_ai.store.locks import apply_lock

KEEP = 200


def context_of(alias: str) -> dict[str, Any]:
    """What a result for `alias` depends on, read from the alias map and the installed state."""
    from importlib.metadata import PackageNotFoundError, version

    from local_ai import __version__
    from local_ai.hardware import detect
    from local_ai.server.aliases import load_alias_map

    def get(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    entry = load_alias_map(settings.paths().aliases_file).models.get(alias)
    return {
        "alias": alias,
        "model_path": entry.path if entry else None,
        "quantization": entry.quantization if entry else None,
        "versions": {"local_ai": __version__, "mlx": get("mlx"), "mlx_lm": get("mlx-lm")},
        "machine": detect().describe(),
    }


def record(results: list[dict[str, Any]], *, lock_timeout: float = 60.0) -> None:
    """Append results to state.json under the apply lock (a running apply finishes first)."""
    from local_ai.store.state import load_state, save_state

    paths = settings.paths()
    with apply_lock(paths.apply_lock, timeout=lock_timeout, command="local-ai bench"):
        state = load_state(paths.state_file)
        kept = [*state.benchmarks, *results][-KEEP:]
        save_state(paths.state_file, state.model_copy(update={"benchmarks": kept}))


def history(alias: str | None = None) -> list[dict[str, Any]]:
    from local_ai.store.state import load_state

    items = load_state(settings.paths().state_file).benchmarks
    return [r for r in items if alias is None or r.get("alias") == alias]


def latest_by_alias() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in history():
        if isinstance(item.get("alias"), str):
            out[item["alias"]] = item
    return out


def headline(result: dict[str, Any]) -> float | None:
    """Single-stream decode tok/s of a result (the number people compare)."""
    for level in result.get("levels") or []:
        if level.get("concurrency") == 1:
            value = level.get("decode_tps_per_stream", {}).get("median")
            return float(value) if value is not None else None
    return None

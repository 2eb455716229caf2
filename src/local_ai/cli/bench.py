"""`local-ai bench`: tokens per second, time to first token and memory, through the running
server as an editor uses it (streaming)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from local_ai import settings
from local_ai.cli.options import ConfigOption, JsonOption
from local_ai.cli.output import console, err_console, print_json
from local_ai.errors import ServerError, UsageError


def _levels(raw: str) -> list[int]:
    try:
        levels = sorted({int(x) for x in raw.split(",") if x.strip()})
    except ValueError:
        levels = []
    if not levels or levels[0] < 1 or levels[-1] > 64:
        raise UsageError(f"--concurrency {raw!r}: give stream counts between 1 and 64, e.g. 1,2,4")
    return levels


def bench_command(
    aliases: Annotated[
        list[str] | None,
        typer.Argument(help="Aliases to measure (default: the default model).", show_default=False),
    ] = None,
    prompt_tokens: Annotated[int, typer.Option("--prompt-tokens", min=1, max=131072)] = 512,
    gen_tokens: Annotated[int, typer.Option("--gen-tokens", min=1, max=8192)] = 128,
    concurrency: Annotated[
        str, typer.Option("--concurrency", help="Streams at once, comma-separated: 1,2,4.")
    ] = "1",
    repeat: Annotated[int, typer.Option("--repeat", min=1, max=100)] = 3,
    raw: Annotated[
        bool,
        typer.Option(
            "--raw", help="Also run mlx_lm.stream_generate directly, to price the server."
        ),
    ] = False,
    history: Annotated[bool, typer.Option("--history", help="Print earlier results.")] = False,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Measure models through the running server: time to first token, prompt and decode
    tokens/s, latency, the engine's peak memory, and behaviour with several streams at once.

    Results are kept (with the model, its quantization, versions and machine) and shown by
    `local-ai models list` and `bench --history`.
    """
    if history:
        _print_history(aliases, json=json)
        return
    levels = _levels(concurrency)
    from local_ai.bench import results as store
    from local_ai.server.aliases import load_alias_map
    from local_ai.server.daemon import running_server

    info, alive = running_server()
    if info is None or not alive:
        raise ServerError("the server is not running", hint="start it with `local-ai server start`")
    alias_map = load_alias_map(settings.paths().aliases_file)
    names = list(aliases or ([alias_map.default_alias] if alias_map.default_alias else []))
    unknown = [a for a in names if a not in alias_map.models]
    if not names or unknown:
        served = ", ".join(alias_map.models) or "none"
        raise UsageError(
            f"{'no model is served' if not names else 'not served: ' + ', '.join(unknown)}",
            hint=f"served aliases: {served}; `local-ai apply` installs the manifest's models",
        )
    api_key = _api_key(config)
    out: list[dict[str, Any]] = []
    for alias in names:
        result = _bench_one(
            info,
            alias,
            levels=levels,
            repeat=repeat,
            prompt_tokens=prompt_tokens,
            gen_tokens=gen_tokens,
            api_key=api_key,
            raw=raw,
            quiet=json,
        )
        out.append(result)
    store.record(out)
    if json:
        print_json({"results": out})
    else:
        for result in out:
            _print_result(result)


def _api_key(config: Any) -> str | None:
    from local_ai.manifest.api_key import resolve_api_key
    from local_ai.manifest.load import load_manifest

    try:
        loaded = load_manifest(settings.manifest_path(config))
    except Exception:  # bench works on a server whatever the manifest says now
        return None
    return resolve_api_key(loaded.manifest, loaded.path)


def _bench_one(
    info: Any,
    alias: str,
    *,
    levels: list[int],
    repeat: int,
    prompt_tokens: int,
    gen_tokens: int,
    api_key: str | None,
    raw: bool,
    quiet: bool,
) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from local_ai.bench.measure import run_level, stream_once
    from local_ai.bench.results import context_of
    from local_ai.server.daemon import admin_request

    result: dict[str, Any] = {
        **context_of(alias),
        "at": time.time(),
        "source": "bench",
        "prompt_tokens": prompt_tokens,
        "gen_tokens": gen_tokens,
        "levels": [],
    }
    total = sum(levels) * repeat
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err_console(),
        disable=quiet or not err_console().is_terminal,
        transient=True,
    ) as progress:
        task = progress.add_task(f"{alias}: warming up", total=total)
        stream_once(info.url, alias, prompt_tokens=16, gen_tokens=4, api_key=api_key, salt=-1)
        for level in levels:
            progress.update(task, description=f"{alias}: {level} stream{'s' * (level > 1)}")
            before = _engine_counters(info)
            measured = run_level(
                info.url,
                alias,
                concurrency=level,
                repeat=repeat,
                prompt_tokens=prompt_tokens,
                gen_tokens=gen_tokens,
                api_key=api_key,
                on_sample=lambda _s: progress.advance(task),
            )
            steps = _steps(before, _engine_counters(info))
            result["levels"].append({**measured.to_json(), **steps})
    try:
        engine = admin_request(info, "GET", "/api/status", timeout=5.0).get("engine") or {}
    except Exception:
        engine = {}
    result["engine_peak_memory_bytes"] = engine.get("peak_memory_bytes")
    if raw and result.get("model_path"):
        from local_ai.bench.raw import run_raw

        direct = run_raw(result["model_path"], prompt_tokens=prompt_tokens, gen_tokens=gen_tokens)
        single = (
            next(lvl for lvl in result["levels"] if lvl["concurrency"] == 1)
            if 1 in levels
            else None
        )
        result["raw"] = direct
        if single is not None:
            served_decode = single["decode_tps_per_stream"]["median"]
            result["overhead"] = {
                "per_request_s": round(single["latency_s"]["median"] - direct["total_s"], 4),
                "per_token_ms": round((1 / served_decode - 1 / direct["decode_tps"]) * 1000, 3)
                if served_decode > 0 and direct["decode_tps"] > 0
                else None,
            }
    return result


def _engine_counters(info: Any) -> tuple[int, int] | None:
    """The engine's (decode steps, generated tokens) since it started; None if unknown."""
    from local_ai.server.daemon import admin_request

    try:
        batch = admin_request(info, "GET", "/api/status", timeout=5.0)["engine"]["batch"]
        return int(batch["decode_steps"]), int(batch["generated_tokens"])
    except Exception:  # an engine without batch counters, or one restarting
        return None


def _steps(before: tuple[int, int] | None, after: tuple[int, int] | None) -> dict[str, Any]:
    """Decode steps the level took and steps per generated token (1/N when N streams batch);
    counts every request the engine served meanwhile, so run bench on an otherwise idle server."""
    if before is None or after is None or after[1] <= before[1] or after[0] < before[0]:
        return {"decode_steps": None, "steps_per_token": None}
    steps = after[0] - before[0]
    return {"decode_steps": steps, "steps_per_token": round(steps / (after[1] - before[1]), 3)}


def _print_result(result: dict[str, Any]) -> None:
    from rich.table import Table

    from local_ai.util.units import human_bytes

    table = Table(title=f"{result['alias']} ({result.get('quantization') or 'mlx'})", box=None)
    for column in (
        "streams",
        "first token",
        "prompt tok/s",
        "decode tok/s per stream",
        "aggregate tok/s",
        "steps/token",
        "latency",
    ):
        table.add_column(column, justify="right")
    for level in result["levels"]:
        ttft = level["ttft_s"]
        table.add_row(
            str(level["concurrency"]),
            f"{ttft['median'] * 1000:.0f} ms ({ttft['min'] * 1000:.0f}–{ttft['max'] * 1000:.0f})",
            f"{level['prefill_tps']['median']:.0f}",
            f"{level['decode_tps_per_stream']['median']:.1f}",
            f"{level['aggregate_decode_tps']['median']:.1f}",
            f"{spt:.2f}" if (spt := level.get("steps_per_token")) is not None else "-",
            f"{level['latency_s']['median']:.2f} s",
        )
    out = console()
    out.print(table)
    peak = result.get("engine_peak_memory_bytes")
    if peak:
        out.print(f"engine peak memory: {human_bytes(peak)}")
    if "raw" in result:
        raw = result["raw"]
        out.print(
            f"mlx_lm.stream_generate directly: {raw['decode_tps']:.1f} tok/s decode, "
            f"first token {raw['ttft_s'] * 1000:.0f} ms"
        )
        overhead = result.get("overhead") or {}
        if overhead.get("per_token_ms") is not None:
            out.print(
                f"server overhead: {overhead['per_request_s'] * 1000:.0f} ms per request, "
                f"{overhead['per_token_ms']:.2f} ms per token"
            )


def _print_history(aliases: list[str] | None, *, json: bool) -> None:
    from datetime import datetime

    from rich.table import Table

    from local_ai.bench.results import headline, history

    items = [r for r in history() if not aliases or r.get("alias") in aliases]
    if json:
        print_json({"history": items})
        return
    if not items:
        console().print("no benchmark results yet; run `local-ai bench`")
        return
    table = Table(box=None)
    for column in ("when", "alias", "quant", "decode tok/s", "first token", "source"):
        table.add_column(column)
    for item in items:
        level = next((lv for lv in item.get("levels") or [] if lv.get("concurrency") == 1), None)
        tps = headline(item)
        ttft = level["ttft_s"]["median"] * 1000 if level else None
        table.add_row(
            datetime.fromtimestamp(item.get("at", 0)).strftime("%Y-%m-%d %H:%M"),
            str(item.get("alias")),
            str(item.get("quantization") or "-"),
            f"{tps:.1f}" if tps is not None else "-",
            f"{ttft:.0f} ms" if ttft is not None else "-",
            str(item.get("source", "")),
        )
    console().print(table)

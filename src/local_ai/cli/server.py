"""`local-ai server …`: run the local OpenAI/Anthropic server like a system service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from local_ai import settings
from local_ai.cli.gc import LockTimeoutOption
from local_ai.cli.options import ConfigOption, JsonOption
from local_ai.cli.output import console, err_console, print_json

server_app = typer.Typer(
    name="server",
    help="Start, stop and inspect the local OpenAI/Anthropic server.",
    no_args_is_help=True,
)

cache_app = typer.Typer(
    name="cache", help="The prompt cache kept on disk by the engine.", no_args_is_help=True
)
server_app.add_typer(cache_app)

TimeoutOption = Annotated[
    float | None,
    typer.Option("--timeout", help="Seconds to wait (start: for readiness; stop: before SIGKILL)."),
]


def _print_skipped(skipped: dict[str, str]) -> None:
    from rich.markup import escape

    for alias, reason in skipped.items():
        err_console().print(f"[yellow]![/] {escape(alias)}: not served, {escape(reason)}")


@server_app.command("start")
def start_command(
    config: ConfigOption = None,
    foreground: Annotated[
        bool,
        typer.Option("--foreground", help="Run in this terminal (launchd, debugging)."),
    ] = False,
    keep_alias_map: Annotated[
        bool,
        typer.Option("--keep-alias-map", hidden=True, help="Serve run/aliases.json as written."),
    ] = False,
    timeout: TimeoutOption = None,
    json: JsonOption = False,
) -> None:
    """Start the server in the background and wait until it is ready.

    It serves the generation in service: what the last `apply` (or `rollback`) put there.
    """
    from local_ai.manifest.load import load_manifest
    from local_ai.reconcile.serving import map_to_serve
    from local_ai.server import daemon

    loaded = load_manifest(settings.manifest_path(config))
    alias_map, skipped = (None, {}) if keep_alias_map else map_to_serve(loaded)
    if foreground:
        from local_ai.server.gateway.main import serve

        prep = daemon.prepare(loaded, alias_map)
        _print_skipped(skipped)
        raise typer.Exit(serve(prep.config))
    if alias_map is None:
        raise typer.BadParameter("only with --foreground", param_hint="--keep-alias-map")
    result = daemon.start(loaded, alias_map, timeout=timeout or daemon.DEFAULT_START_TIMEOUT)
    skipped = {} if result.already_running else skipped
    if json:
        print_json(
            {
                "url": result.url,
                "pid": result.pid,
                "already_running": result.already_running,
                "models": result.aliases,
                "skipped": skipped,
            }
        )
        return
    _print_skipped(skipped)
    if result.already_running:
        console().print(f"already running at {result.url} (pid {result.pid})")
    else:
        models = ", ".join(result.aliases) or "no models yet"
        console().print(f"[green]✓[/] serving {result.url} (pid {result.pid}): {models}")


@server_app.command("stop")
def stop_command(timeout: TimeoutOption = None, json: JsonOption = False) -> None:
    """Stop the server: open streams get a bounded time, then it is killed."""
    from local_ai.server import daemon

    result = daemon.stop(timeout=timeout)
    if json:
        print_json(result.__dict__)
        return
    if not result.was_running:
        note = " (removed a stale pidfile)" if result.stale_removed else ""
        console().print(f"not running{note}")
    else:
        how = " (forced)" if result.forced else ""
        console().print(f"[green]✓[/] stopped (pid {result.pid}){how}")


@server_app.command("restart")
def restart_command(
    config: ConfigOption = None,
    timeout: TimeoutOption = None,
    lock_timeout: LockTimeoutOption = 0,
    json: JsonOption = False,
) -> None:
    """Stop the server (waiting for it to exit) and start it again.

    Holds the apply lock meanwhile: an `apply` would otherwise reload aliases or restart the
    engine of a server being stopped.
    """
    from local_ai.server import daemon
    from local_ai.store.locks import apply_lock

    lock = settings.paths().apply_lock
    with apply_lock(lock, timeout=lock_timeout, command="local-ai server restart"):
        daemon.stop(timeout=timeout)
        start_command(
            config=config, foreground=False, keep_alias_map=False, timeout=None, json=json
        )


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    hours, rest = divmod(s, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _size(value: Any) -> str:
    return f"{value / 1e9:.2f} GB" if isinstance(value, int | float) and value else "-"


@server_app.command("status")
def status_command(config: ConfigOption = None, json: JsonOption = False) -> None:
    """Show whether the server runs, its engine, models and whether the manifest changed."""
    from rich.markup import escape
    from rich.table import Table

    from local_ai.bench.results import headline, latest_by_alias
    from local_ai.server import daemon

    info = daemon.status(config)
    latest = latest_by_alias()
    for model in info.get("models") or []:
        bench = latest.get(model.get("alias", ""))
        same_build = bench is not None and bench.get("model_path") in (None, model.get("path"))
        model["decode_tps"] = headline(bench) if bench is not None and same_build else None
    if json:
        print_json(info)
        return
    out = console()
    if not info["running"]:
        stale = f" (stale pidfile for pid {info['stale_pid']})" if info.get("stale_pidfile") else ""
        out.print(f"[dim]●[/] stopped{stale}")
        return
    state = info["state"]
    mark = "[green]●[/]" if state == "running" else "[yellow]●[/]"
    out.print(
        f"{mark} {state} at {info['url']} (pid {info['pid']}, up {_uptime(info['uptime_s'])})"
    )
    out.print(f"  version {info['version']}, manifest {escape(str(info.get('manifest')))}")
    engine = info.get("engine") or {}
    if engine:
        reason = f": {escape(str(engine['reason']))}" if engine.get("reason") else ""
        out.print(
            f"  engine {engine.get('state')} (pid {engine.get('pid')}, "
            f"restarts {engine.get('restarts', 0)}){reason}"
        )
        if engine.get("standby_pid"):
            memory = engine.get("standby_memory_bytes")
            size = f", {memory / 1e6:.0f} MB" if isinstance(memory, int) else ""
            out.print(f"  standby engine warm (pid {engine['standby_pid']}{size})")
    disk = engine.get("prompt_cache_disk") or {}
    if disk.get("files"):
        out.print(f"  prompt cache on disk: {disk['files']} files, {_mb(disk['bytes'])}")
    hour = (info.get("activity") or {}).get("hour") or {}
    if hour.get("output_tokens"):
        out.print(f"  last hour: {_activity(hour)}")
    if info.get("config_differs"):
        out.print("  [yellow]the manifest changed since start[/]: run `local-ai server restart`")
    models = info.get("models") or []
    if models:
        table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
        for column in ("alias", "loaded", "memory", "context", "tok/s"):
            table.add_column(column)
        for m in models:
            alias = m["alias"] + (" (default)" if m.get("default") else "")
            loaded = "loading" if m.get("loading") else ("yes" if m.get("loaded") else "no")
            tps = m.get("decode_tps")
            table.add_row(
                escape(alias),
                loaded,
                _size(m.get("memory_bytes")),
                str(m["context"]),
                f"{tps:.1f}" if tps is not None else "-",
            )
        out.print(table)
    for m in models:
        if m.get("group"):
            _print_group(m["alias"], m["group"])


def _print_group(alias: str, group: dict[str, Any]) -> None:
    """A sharded alias's group and each of its ranks."""
    from rich.markup import escape

    out = console()
    reason = f": {escape(str(group['reason']))}" if group.get("reason") else ""
    out.print(
        f"  group {escape(alias)} ({group.get('parallel')} over {', '.join(group['hosts'])}, "
        f"{group.get('backend')}) {group.get('state')} (launcher pid {group.get('pid')}, "
        f"restarts {group.get('restarts', 0)}){reason}"
    )
    for rank in group.get("ranks") or []:
        error = f": {escape(str(rank['last_error']))}" if rank.get("last_error") else ""
        out.print(
            f"    rank {rank['rank']} on {escape(str(rank['host']))} "
            f"pid {rank.get('pid') or '-'} {rank.get('state')}{error}"
        )


@cache_app.command("clear")
def cache_clear_command(json: JsonOption = False) -> None:
    """Remove the prompt caches saved on disk (safe while the server runs).

    The next request for each prompt prefills it again; the cache fills up as before.
    """
    from local_ai.cli.output import console, print_json
    from local_ai.server import daemon

    removed = daemon.clear_prompt_cache()
    if json:
        print_json(removed)
        return
    console().print(
        f"[green]✓[/] removed {removed['files']} prompt cache files ({_mb(removed['bytes'])})"
    )


def _mb(value: int) -> str:
    return f"{value / 1e6:.1f} MB"


def _activity(hour: dict[str, Any]) -> str:
    """The page's "last hour" figures in one line."""
    parts = [f"{hour['output_tokens']} tokens ({hour['tokens_per_s']:.2f} tok/s)"]
    if hour.get("ttft_s") is not None:
        parts.append(f"TTFT {hour['ttft_s'] * 1000:.0f} ms")
    if hour.get("cache_hit") is not None:
        parts.append(f"prompt cache hits {hour['cache_hit'] * 100:.0f}%")
    return ", ".join(parts)


@server_app.command("logs")
def logs_command(
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="Lines to show.")] = 50,
    engine: Annotated[bool, typer.Option("--engine", help="The engine's log instead.")] = False,
) -> None:
    """Show the server log (logs/server.log, or logs/engine.log with --engine)."""
    import sys

    from local_ai.server import daemon

    paths = settings.paths()
    path = paths.engine_log if engine else paths.server_log
    # Following starts where the tail ended: a line written meanwhile is printed, not skipped.
    text, end = daemon.tail_and_end(path, lines)
    if text:
        sys.stdout.write(text + "\n")
    elif not follow:
        sys.stderr.write(f"no log yet at {path}\n")
    sys.stdout.flush()
    if follow:

        def write(chunk: str) -> None:
            sys.stdout.write(chunk)
            sys.stdout.flush()

        try:
            daemon.follow(path, write, stop=lambda: False, start=end)
        except KeyboardInterrupt:
            return


@server_app.command("enable")
def enable_command(
    config: ConfigOption = None,
    print_only: Annotated[
        bool, typer.Option("--print", help="Print the LaunchAgent plist instead of installing it.")
    ] = False,
) -> None:
    """Start the server at login (macOS launchd LaunchAgent)."""
    import sys

    from local_ai.manifest.load import load_manifest
    from local_ai.server import launchd

    loaded = load_manifest(settings.manifest_path(config))
    plist = launchd.build_plist(
        Path(loaded.path).resolve(), api_key_env=loaded.manifest.server.api_key_env
    )
    if print_only:
        sys.stdout.write(launchd.render_plist(plist).decode())
        return
    path = launchd.enable(plist)
    console().print(f"[green]✓[/] installed {path}; the server starts at login")


@server_app.command("disable")
def disable_command() -> None:
    """Stop starting the server at login (removes the LaunchAgent)."""
    from local_ai.server import launchd

    removed = launchd.disable()
    console().print("[green]✓[/] LaunchAgent removed" if removed else "no LaunchAgent installed")

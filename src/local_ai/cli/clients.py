"""`local-ai clients …`: Zed, Claude Code, Goose and Codex configs, the same plan and writer `apply`
uses, for one look or one write without touching models or the server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from local_ai import settings
from local_ai.cli.errors import detailed_exitcode as terraform_codes
from local_ai.cli.options import ConfigOption, JsonOption, YesOption
from local_ai.cli.output import console, interactive, print_json
from local_ai.errors import ConfigError, ExitCode, LocalAIError, UsageError

if TYPE_CHECKING:
    from pathlib import Path

    from local_ai.clients.base import ClientChange
    from local_ai.manifest.models import Manifest

clients_app = typer.Typer(
    name="clients",
    help="Show, write and check the Zed, Claude Code, Goose and Codex settings local-ai manages.",
    no_args_is_help=True,
)

CLIENT_NAMES = ("zed", "claude-code", "goose", "codex")
ClientsArgument = Annotated[
    list[str] | None,
    typer.Argument(
        help="Only these clients: zed, claude-code, goose, codex (default: all).",
        show_default=False,
    ),
]
DetailedExitOption = Annotated[
    bool,
    typer.Option(
        "--detailed-exitcode",
        help="Exit 2 when a client's settings differ from the manifest, 0 when not, 1 on error.",
    ),
]
UnifiedOption = Annotated[
    bool, typer.Option("--unified", "-u", help="Also print each file's edit as a unified diff.")
]


def _selected(names: list[str] | None) -> list[str] | None:
    for name in names or ():
        if name not in CLIENT_NAMES:
            raise UsageError(
                f"unknown client {name!r}", hint=f"choose from {', '.join(CLIENT_NAMES)}"
            )
    return list(names) if names else None


def _load(config: Path | None) -> tuple[Manifest, Path]:
    from local_ai.manifest.load import load_manifest

    loaded = load_manifest(settings.manifest_path(config))
    return loaded.manifest, loaded.path.parent


def _plan(config: Path | None, names: list[str] | None) -> list[ClientChange]:
    from local_ai.clients.plan import observe_clients, plan_clients

    manifest, base_dir = _load(config)
    only = _selected(names)
    changes = plan_clients(manifest, None, observe_clients(manifest, base_dir=base_dir))
    return [c for c in changes if only is None or c.client in only]


def _print_changes(changes: list[ClientChange], *, unified: bool = False) -> None:
    from rich.markup import escape

    from local_ai.clients.plan import CLIENTS, unified_diff

    out = console()
    if not changes:
        out.print("no clients in the manifest ([clients.zed], [clients.claude_code], …)")
    colours = {"+": "green", "~": "yellow", "-": "red", "=": "dim"}
    for change in changes:
        title = CLIENTS[change.client][2]
        if change.error is not None:
            out.print(f"[red]✗[/] {title}: {escape(change.error)}")
            continue
        symbol = change.change.value
        colour = colours.get(symbol, "")
        out.print(f"[{colour}]{escape(symbol)}[/] {title}: {escape(change.cause)}")
        for line in change.drift:
            out.print(f"    {escape(line)}")
        for edit in change.edits:
            if edit.changed:
                out.print(f"    [dim]{edit.action} {escape(str(edit.path))}[/]")
        if unified:
            diff = unified_diff(change)
            if diff:
                out.print(escape(diff), end="", soft_wrap=True)
        for note in change.notes:
            out.print(f"    [cyan]note:[/] {escape(note)}")


@clients_app.command("diff")
def diff_command(
    clients: ClientsArgument = None,
    config: ConfigOption = None,
    unified: UnifiedOption = False,
    detailed_exitcode: DetailedExitOption = False,
    json: JsonOption = False,
) -> None:
    """Show how each client's settings differ from what the manifest asks for. Writes nothing."""
    with terraform_codes(detailed_exitcode):
        changes = _plan(config, clients)
        if json:
            print_json({"clients": [c.to_json() for c in changes]})
        else:
            _print_changes(changes, unified=unified)
        if any(c.error for c in changes):
            raise typer.Exit(ExitCode.CONFIG)
        if detailed_exitcode and any(c.has_changes for c in changes):
            raise typer.Exit(ExitCode.CHANGES)


@clients_app.command("write")
def write_command(
    clients: ClientsArgument = None,
    config: ConfigOption = None,
    yes: YesOption = False,
    json: JsonOption = False,
) -> None:
    """Write the clients' settings now (what `apply` does for them): atomically, after a
    timestamped backup next to each file. A client removed from the manifest gets back what
    local-ai replaced."""
    from local_ai.clients.plan import apply_client_change
    from local_ai.store.locks import apply_lock

    changes = _plan(config, clients)
    pending = [c for c in changes if c.has_changes]
    failed = [c for c in changes if c.error]
    if not json:
        _print_changes(changes)
    if pending and not yes:
        if not interactive():
            raise LocalAIError(
                "writing client settings needs confirmation", hint="pass --yes to write them"
            )
        typer.confirm(f"Write the settings of {len(pending)} client(s)?", abort=True)
    written: dict[str, list[str]] = {}
    paths = settings.paths()
    with apply_lock(paths.apply_lock, command="local-ai clients write"):
        for change in pending:
            written[change.client] = [str(b) for b in apply_client_change(change)]
    if json:
        print_json(
            {
                "clients": [c.to_json() for c in changes],
                "written": sorted(written),
                "backups": written,
            }
        )
    else:
        for client, backups in written.items():
            console().print(f"[green]✓[/] {client} written" + (" (backup kept)" if backups else ""))
            for backup in backups:
                console().print(f"    [dim]backup {backup}[/]")
        if not pending and not failed:
            console().print("nothing to write: every client matches the manifest")
    if failed:
        first = failed[0]
        raise ConfigError(
            f"{first.client} was not written: {first.error}",
            path=None,
            hint="the file was left as it is; fix it (or its path in [clients]) and run again",
        )


@clients_app.command("env")
def env_command(
    client: Annotated[str, typer.Argument(help="claude-code")] = "claude-code",
    config: ConfigOption = None,
) -> None:
    """Print shell `export` lines that point one session of Claude Code at local-ai:
    eval "$(local-ai clients env claude-code)"."""
    from local_ai.clients.claude_code import shell_exports
    from local_ai.clients.spec import server_url

    if client != "claude-code":
        raise UsageError(
            f"no environment form for {client!r}", hint="only claude-code reads its settings so"
        )
    manifest, _ = _load(config)
    for line in shell_exports(manifest, server_url(manifest)):
        typer.echo(line)


@clients_app.command("check")
def check_command(
    clients: ClientsArgument = None,
    config: ConfigOption = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds per request.")] = 120.0,
    json: JsonOption = False,
) -> None:
    """Send each enabled client's first requests, as it sends them and to the base URL and
    models its settings name, to the running server; report pass or fail per client."""
    from rich.markup import escape

    from local_ai.clients.check import check_clients

    manifest, base_dir = _load(config)
    results = check_clients(manifest, base_dir=base_dir, only=_selected(clients), timeout=timeout)
    if json:
        print_json({"clients": [r.to_json() for r in results], "ok": all(r.ok for r in results)})
    else:
        out = console()
        if not results:
            out.print("no enabled clients in the manifest")
        for result in results:
            mark = "[green]✓ pass[/]" if result.ok else "[red]✗ fail[/]"
            where = f" ({escape(result.endpoint)})" if result.endpoint else ""
            out.print(f"{mark} {result.title}{where}")
            if result.problem:
                out.print(f"    {escape(result.problem)}")
                out.print("    [dim]hint:[/] run `local-ai clients write` (or `local-ai apply`)")
            for probe in result.probes:
                sign = "[green]✓[/]" if probe.ok else "[red]✗[/]"
                out.print(f"    {sign} {escape(probe.name)}: {escape(probe.detail)}")
            if any(p.detail.startswith("cannot connect") for p in result.probes):
                out.print("    [dim]hint:[/] start it with `local-ai server start`")
    if not all(r.ok for r in results):
        raise typer.Exit(ExitCode.ERROR)

"""`local-ai lock [--upgrade] [ALIAS...]`: pin every model of the manifest to a commit and file
hashes in local-ai.lock."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from local_ai import settings
from local_ai.cli.options import ConfigOption, JsonOption
from local_ai.cli.output import console, print_json

AliasesArgument = Annotated[
    list[str] | None,
    typer.Argument(help="Only these aliases (default: every model).", show_default=False),
]
UpgradeOption = Annotated[
    bool,
    typer.Option(
        "--upgrade", help="Resolve again to the newest commit of each revision (branch or tag)."
    ),
]
OfflineOption = Annotated[
    bool,
    typer.Option("--offline", help="Resolve from the HuggingFace cache only (no network)."),
]


def lock_command(
    aliases: AliasesArgument = None,
    upgrade: UpgradeOption = False,
    offline: OfflineOption = False,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Create or refresh local-ai.lock next to the manifest.

    Models whose lock entry still matches the manifest are kept without asking the hub;
    changed or new ones are resolved. With --upgrade, the named models (default: all) move to
    the newest commit of their revision.
    """
    from local_ai.hub.resolve import resolve
    from local_ai.manifest.load import load_manifest
    from local_ai.store.lockfile import load_lock, lock_path_for, refresh_lock, save_lock

    loaded = load_manifest(settings.manifest_path(config))
    path = lock_path_for(loaded.path)
    current = load_lock(path)
    base_dir = loaded.path.parent

    def resolver(alias: str, spec: Any, *, offline: bool) -> Any:
        return resolve(alias, spec, offline=offline, base_dir=base_dir)

    lock, changes = refresh_lock(
        loaded.manifest,
        current,
        resolver=resolver,
        upgrade=upgrade,
        only=aliases or (),
        offline=offline,
    )
    written = save_lock(path, lock)
    if json:
        print_json({"path": str(path), "written": written, "models": _as_json(changes)})
        return
    _print_changes(changes, path, written)


def _as_json(changes: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for change in changes:
        entry = change.after or change.before
        out[change.alias] = {
            "action": change.action,
            "reasons": list(change.reasons),
            "source": entry.source_label if entry else None,
            "commit": change.after.commit if change.after else None,
            "previous_commit": change.before.commit if change.before else None,
        }
    return out


def _print_changes(changes: list[Any], path: Any, written: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    out = console()
    if not changes:
        out.print(f"[green]✓[/] {escape(str(path))}: no models in the manifest")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("alias", "source", "commit", ""):
        table.add_column(column)
    styles = {"kept": "dim", "added": "green", "updated": "yellow", "upgraded": "cyan"}
    for change in changes:
        entry = change.after or change.before
        source = entry.source_label.split("@")[0] if entry else ""
        commit = (entry.commit or "")[:12] if entry else ""
        what = change.action
        if change.action == "upgraded" and change.before is not None:
            what = f"upgraded from {(change.before.commit or '')[:12]}"
        if change.reasons:
            what += ": " + "; ".join(change.reasons)
        style = styles.get(change.action, "red")
        table.add_row(escape(change.alias), escape(source), commit, f"[{style}]{escape(what)}[/]")
    out.print(table)
    verb = "wrote" if written else "unchanged:"
    out.print(f"[green]✓[/] {verb} {escape(str(path))}")

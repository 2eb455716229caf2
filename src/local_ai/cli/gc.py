"""`local-ai gc [--yes]`: delete store entries nothing refers to, and leftovers of killed runs.

A dry run by default: it says what would be freed. Entries that an installed alias, the served
alias map (run/aliases.json) or a kept generation refers to are never deleted.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from local_ai import settings
from local_ai.cli.options import JsonOption
from local_ai.cli.output import console, print_json

LockTimeoutOption = Annotated[
    float,
    typer.Option(
        "--lock-timeout",
        help="Seconds to wait for another local-ai that is changing models (default: fail fast).",
        min=0,
    ),
]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Delete; without it, only show.")]


def gc_command(
    yes: YesOption = False, lock_timeout: LockTimeoutOption = 0, json: JsonOption = False
) -> None:
    """Show (or with --yes delete) unused store entries and leftovers of killed runs."""
    from local_ai.hub.fetch import incomplete_leftovers
    from local_ai.store.layout import Store, collect_garbage, find_garbage
    from local_ai.store.locks import apply_lock

    paths = settings.paths()
    store = Store(paths)
    garbage = find_garbage(store, incomplete_leftovers())
    freed = 0
    if yes and not garbage.empty:
        with apply_lock(paths.apply_lock, timeout=lock_timeout, command="local-ai gc --yes"):
            garbage = find_garbage(store, incomplete_leftovers())  # again, now that we own it
            freed = collect_garbage(store, garbage)
    if json:
        print_json(_as_json(garbage, deleted=yes, freed=freed))
        return
    _print(garbage, deleted=yes, freed=freed)


def _as_json(garbage: Any, *, deleted: bool, freed: int) -> dict[str, Any]:
    return {
        "deleted": deleted,
        "bytes": garbage.total_bytes,
        "freed_bytes": freed,
        "store_entries": [{"path": str(e.path), "bytes": n} for e, n in garbage.entries],
        "staging": [{"path": str(p), "bytes": n} for p, n in garbage.staging],
        "incomplete_downloads": [{"path": str(p), "bytes": n} for p, n in garbage.incomplete],
    }


def _print(garbage: Any, *, deleted: bool, freed: int) -> None:
    from rich.markup import escape

    from local_ai.util.units import human_bytes

    out = console()
    if garbage.empty:
        out.print("[green]✓[/] nothing to collect")
        return
    verb = "deleted" if deleted else "would delete"
    groups = (
        ("unused store entry", [(e.path, n) for e, n in garbage.entries]),
        ("leftover of a killed build", list(garbage.staging)),
        ("unfinished download", list(garbage.incomplete)),
    )
    for label, items in groups:
        for path, size in items:
            out.print(f"  {verb} {label}: {escape(str(path))} ({human_bytes(size)})")
    if deleted:
        out.print(f"[green]✓[/] freed {human_bytes(freed)}")
    else:
        out.print(
            f"{human_bytes(garbage.total_bytes)} can be freed; run [bold]local-ai gc --yes[/] "
            "to delete"
        )

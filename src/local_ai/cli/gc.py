"""`local-ai gc [--yes]`: delete store entries nothing refers to, and leftovers of killed runs.

A dry run by default: it says what would be freed. Entries that an installed alias, the served
alias map (run/aliases.json), a kept generation or a cluster's hold (cluster/holds/: a rank 0
serves it from this host) refers to are never deleted; `--release-holds` drops those holds
first, for a rank 0 that is gone for good.
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
ReleaseHoldsOption = Annotated[
    bool,
    typer.Option(
        "--release-holds",
        help="Also drop this host's cluster holds (store entries a cluster's rank 0 serves from "
        "here), for a rank 0 that is gone for good; then collect what they kept.",
    ),
]


def gc_command(
    yes: YesOption = False,
    release_holds: ReleaseHoldsOption = False,
    lock_timeout: LockTimeoutOption = 0,
    json: JsonOption = False,
) -> None:
    """Show (or with --yes delete) unused store entries and leftovers of killed runs."""
    from local_ai.hub.fetch import incomplete_leftovers
    from local_ai.store.garbage import collect_garbage, find_garbage
    from local_ai.store.holds import list_holds, release_hold
    from local_ai.store.layout import Store
    from local_ai.store.locks import apply_lock

    paths = settings.paths()
    store = Store(paths)
    keep_held = not release_holds
    holds = list_holds(paths) if release_holds else []
    garbage = find_garbage(store, incomplete_leftovers(), holds=keep_held)
    freed = 0
    if yes and (holds or not garbage.empty):
        command = "local-ai gc --yes" + (" --release-holds" if release_holds else "")
        with apply_lock(paths.apply_lock, timeout=lock_timeout, command=command):
            holds = list_holds(paths) if release_holds else []  # again, now that we own it
            for hold in holds:
                release_hold(paths, hold.entry, hold.rank0, hold.alias)
            garbage = find_garbage(store, incomplete_leftovers(), holds=keep_held)
            freed = collect_garbage(store, garbage, holds=keep_held)
    if json:
        print_json(_as_json(garbage, holds, deleted=yes, freed=freed))
        return
    _print(garbage, holds, deleted=yes, freed=freed)


def _as_json(garbage: Any, holds: list[Any], *, deleted: bool, freed: int) -> dict[str, Any]:
    return {
        "deleted": deleted,
        "bytes": garbage.total_bytes,
        "freed_bytes": freed,
        "store_entries": [{"path": str(e.path), "bytes": n} for e, n in garbage.entries],
        "staging": [{"path": str(p), "bytes": n} for p, n in garbage.staging],
        "incomplete_downloads": [{"path": str(p), "bytes": n} for p, n in garbage.incomplete],
        "incomplete_copies": [{"path": str(p), "bytes": n} for p, n in garbage.incoming],
        "kept_for_cluster": [{"path": str(e.path), "why": list(why)} for e, why in garbage.held],
        "released_holds": [
            {"entry": h.entry, "rank0": h.rank0, "alias": h.alias, "why": h.describe()}
            for h in holds
        ],
    }


def _print(garbage: Any, holds: list[Any], *, deleted: bool, freed: int) -> None:
    from rich.markup import escape

    from local_ai.util.units import human_bytes

    out = console()
    for entry, why in garbage.held:
        out.print(f"  keeps store entry {escape(str(entry.path))}: {escape('; '.join(why))}")
    for hold in holds:
        verb = "released" if deleted else "would release"
        out.print(f"  {verb} the hold of store entry {escape(hold.entry)}: {hold.describe()}")
    if garbage.empty:
        out.print("[green]✓[/] nothing to collect")
        return
    verb = "deleted" if deleted else "would delete"
    groups = (
        ("unused store entry", [(e.path, n) for e, n in garbage.entries]),
        ("leftover of a killed build", list(garbage.staging)),
        ("unfinished download", list(garbage.incomplete)),
        ("unfinished copy from a cluster's rank 0", list(garbage.incoming)),
    )
    for label, items in groups:
        for path, size in items:
            out.print(f"  {verb} {label}: {escape(str(path))} ({human_bytes(size)})")
    if deleted:
        out.print(f"[green]✓[/] freed {human_bytes(freed)}")
    else:
        out.print(
            f"{human_bytes(garbage.total_bytes)} can be freed; run [bold]local-ai gc --yes"
            f"{' --release-holds' if holds else ''}[/] to delete"
        )

"""`local-ai generations` and `local-ai rollback [N]`: what each apply served, and going back."""

from __future__ import annotations

from typing import Annotated

import typer

from local_ai import settings
from local_ai.cli.options import JsonOption
from local_ai.cli.output import console, print_json


def generations_command(json: JsonOption = False) -> None:
    """List the generations apply recorded (newest last); `*` marks the one being served."""
    from local_ai.reconcile.generations import Generations

    store = Generations(settings.paths().generations)
    current = store.current_number()
    items = store.all()
    if json:
        print_json(
            {
                "current": current,
                "generations": [
                    {
                        "number": g.number,
                        "created": g.created,
                        "manifest_hash": g.manifest_hash,
                        "default": g.default,
                        "models": {a: t.path for a, t in g.aliases.items()},
                    }
                    for g in items
                ],
            }
        )
        return
    out = console()
    if not items:
        out.print("no generations yet; `local-ai apply` records one each time it changes things")
        return
    from datetime import datetime

    from rich.markup import escape
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("", "gen", "created", "models"):
        table.add_column(column, overflow="fold")
    for g in items:
        when = datetime.fromtimestamp(g.created).strftime("%Y-%m-%d %H:%M:%S")
        models = ", ".join(
            f"{a} ({t.quantization or t.format})" for a, t in sorted(g.aliases.items())
        )
        table.add_row("*" if g.number == current else "", str(g.number), when, escape(models))
    out.print(table)


def rollback_command(
    number: Annotated[
        int | None,
        typer.Argument(help="Generation to serve (default: the one before the current)."),
    ] = None,
    json: JsonOption = False,
) -> None:
    """Serve an earlier generation's models again, switching the server atomically.

    The manifest is not changed: `local-ai plan` shows the difference, `apply` returns to it.
    """
    from local_ai.reconcile.run import rollback
    from local_ai.store.locks import apply_lock

    with apply_lock(settings.paths().apply_lock):
        generation = rollback(number)
    if json:
        print_json({"generation": generation.number, "models": sorted(generation.aliases)})
        return
    console().print(
        f"Serving generation {generation.number}: {', '.join(sorted(generation.aliases))}. "
        "`local-ai apply` returns to the manifest."
    )

"""`local-ai models …`: convert, list, verify and remove models.

Each command lives in its own module and is registered on this group here.
"""

from __future__ import annotations

import typer

from local_ai.cli.models_add import register as register_add
from local_ai.cli.models_convert import register as register_convert
from local_ai.cli.models_search import register as register_search
from local_ai.cli.models_store import register as register_store

app = typer.Typer(
    name="models",
    help="Search, add, convert, list, verify and remove models.",
    no_args_is_help=True,
)

register_add(app)
register_convert(app)
register_store(app)
register_search(app)

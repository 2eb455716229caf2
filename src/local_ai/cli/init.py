"""`local-ai init`: write a commented manifest suited to this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from local_ai import settings
from local_ai.cli.options import ConfigOption
from local_ai.cli.output import console
from local_ai.errors import LocalAIError


def init_command(
    config: ConfigOption = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing manifest.")] = False,
    stdout: Annotated[
        bool, typer.Option("--stdout", help="Print the manifest instead of writing it.")
    ] = False,
) -> None:
    """Write a commented local-ai.toml with models sized for this machine's memory."""
    from local_ai.hardware import detect
    from local_ai.manifest.load import parse_manifest
    from local_ai.manifest.template import render_manifest
    from local_ai.util.atomic import atomic_write_text

    target = settings.manifest_path(config)
    if target.exists() and not force and not stdout:
        raise LocalAIError(
            f"{target} already exists",
            hint="edit it, or run `local-ai init --force` to replace it "
            "(or `local-ai init --stdout` to see what init would write)",
        )
    hw = detect()
    schema_ref = None if stdout else f"./{_write_schema(target.parent).name}"
    text = render_manifest(
        machine=hw.describe(), usable_bytes=hw.usable_memory_bytes, schema_ref=schema_ref
    )
    parse_manifest(text, target)  # never write a manifest we would refuse to read
    if stdout:
        typer.echo(text, nl=False)
        return
    atomic_write_text(target, text)
    console().print(f"[green]✓[/] wrote {target} for {hw.describe()}")
    console().print("  next: [bold]local-ai doctor[/], then [bold]local-ai validate[/]")


def _write_schema(directory: Path) -> Path:
    """The JSON schema next to the manifest, for editors to validate it offline. The manifest
    names it by a relative path: checked into dotfiles with it, it works on any machine."""
    from local_ai.manifest.schema import SCHEMA_RELPATH, schema_text
    from local_ai.util.atomic import atomic_write_text

    path = directory / SCHEMA_RELPATH.name
    text = schema_text()
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)
    return path

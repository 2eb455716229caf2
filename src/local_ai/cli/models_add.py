"""`local-ai models add`: declare a model in local-ai.toml (comments and order kept), then plan
and apply it like `local-ai apply` does."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer

from local_ai import settings
from local_ai.cli.apply import _apply_once
from local_ai.cli.models_search import resolve_name
from local_ai.cli.options import ConfigOption, JsonOption, YesOption
from local_ai.cli.output import err_console
from local_ai.errors import ConfigError, UsageError

_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def register(app: typer.Typer) -> None:
    app.command("add")(add_command)


def alias_for(reference: str) -> str:
    """A manifest alias from a repo id, GGUF file or path: `Qwen3-Coder-30B-A3B-Instruct-4bit`
    → `qwen3-coder-30b-a3b-instruct-4bit`."""
    base = reference.rsplit(":", 1)[-1] if ":" in reference else reference
    name = Path(base.rstrip("/")).name
    name = re.sub(r"\.gguf$", "", name, flags=re.IGNORECASE)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._").lower()
    return (name or "model")[:64]


def source_fields(reference: str, file: str | None) -> dict[str, Any]:
    """The manifest keys for a reference: `org/repo`, `org/repo:file.gguf` or a local path."""
    repo, _, gguf = reference.partition(":")
    if gguf and _REPO_RE.match(repo):
        if file is not None and file != gguf:
            raise UsageError(f"{reference} names {gguf} but --file says {file}")
        return {"repo": repo, "file": gguf}
    local = Path(reference).expanduser()
    if reference.startswith((".", "/", "~")) or local.exists():
        if not local.exists():
            raise UsageError(f"{local} does not exist", hint="give an existing model directory")
        return {"path": str(local.absolute())}
    if _REPO_RE.match(reference):
        return {"repo": reference, **({"file": file} if file else {})}
    raise UsageError(
        f"{reference!r} is not a HuggingFace repo id (org/name), a GGUF in one "
        "(org/name:file.gguf) or a local path",
        hint=f"find one with `local-ai models search {reference}`",
    )


def add_command(
    reference: Annotated[
        str,
        typer.Argument(
            help="org/repo, org/repo:file.gguf, or a local model directory.", show_default=False
        ),
    ],
    alias: Annotated[
        str | None,
        typer.Option("--alias", "-a", help="Name clients use (default: from the repo name)."),
    ] = None,
    quantize: Annotated[
        str | None,
        typer.Option("--quantize", "-q", help="Convert to this level (q4, q8, mxfp4, …, auto)."),
    ] = None,
    file: Annotated[
        str | None, typer.Option("--file", help="The GGUF file inside the repo.")
    ] = None,
    context: Annotated[
        int | None, typer.Option("--context", help="Context length to serve.")
    ] = None,
    no_apply: Annotated[bool, typer.Option("--no-apply", help="Only edit local-ai.toml.")] = False,
    config: ConfigOption = None,
    yes: YesOption = False,
    json: JsonOption = False,
) -> None:
    """Add a model to local-ai.toml and apply it (asks first, like `local-ai apply`)."""
    from local_ai.manifest.edit import set_model
    from local_ai.manifest.load import load_manifest
    from local_ai.reconcile.run import RunOptions

    path = settings.manifest_path(config)
    if not path.exists():
        raise ConfigError("does not exist", path=path, hint="create one with `local-ai init` first")
    name = alias or alias_for(reference)
    current = load_manifest(path).manifest
    if name in current.models:
        raise UsageError(
            f"models.{name} is already in {path}",
            hint="choose another name with --alias, or edit that entry",
        )
    try:
        fields: dict[str, Any] = source_fields(reference, file)
    except UsageError:
        if file is not None or ":" in reference or "/" in reference:
            raise
        fields = resolve_name(reference, context, config)  # a name: pick a variant
    if quantize is not None:
        fields["quantize"] = quantize
    if context is not None:
        fields["context"] = context
    set_model(path, name, fields)
    err_console().print(f"added [bold]models.{name}[/] to {path}")
    if no_apply:
        return
    loaded = load_manifest(path)
    code = _apply_once(loaded, RunOptions(targets=(name,)), yes=yes, json=json)
    if code:
        raise typer.Exit(code)

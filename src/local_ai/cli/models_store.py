"""`local-ai models list | verify | rm`: what is installed, whether its bytes are intact, and
removing one. Registered on the `models` group by `local_ai.cli.models`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from local_ai import settings
from local_ai.cli.gc import LockTimeoutOption
from local_ai.cli.options import ConfigOption, JsonOption, YesOption
from local_ai.cli.output import console, interactive, print_json
from local_ai.errors import ConfigError, IntegrityError, LocalAIError, NotFoundError


def register(app: typer.Typer) -> None:
    app.command("list")(list_command)
    app.command("verify")(verify_command)
    app.command("rm")(rm_command)


def _lock_entries(config: Path | None) -> dict[str, Any]:
    """Lock entries next to the manifest, or none when there is no (valid) lock file."""
    from local_ai.store.lockfile import load_lock, lock_path_for

    try:
        return dict(load_lock(lock_path_for(settings.manifest_path(config))).models)
    except ConfigError:
        return {}


# ---- list -----------------------------------------------------------------------------------


def list_command(config: ConfigOption = None, json: JsonOption = False) -> None:
    """List installed models: source, format, quant, size, where, served.

    Reads state.json and the server's alias map (run/aliases.json); changes nothing.
    """
    from local_ai.bench.results import headline, latest_by_alias
    from local_ai.store.layout import disk_usage, served_paths, server_running
    from local_ai.store.state import load_state

    paths = settings.paths()
    state = load_state(paths.state_file)
    served = served_paths(paths)
    running = server_running(paths)
    benchmarks = latest_by_alias()
    rows = []
    for alias in sorted(state.models):
        model = state.models[alias]
        location = Path(model.location)
        in_map = served.get(alias) == model.location or model.location in served.values()
        rows.append(
            {
                "alias": alias,
                "source": model.source,
                "format": model.format,
                "quantization": model.quantization,
                "bytes": disk_usage(location) if location.exists() else 0,
                "present": location.exists(),
                "where": model.location_kind,
                "location": model.location,
                "server": ("serving" if running else "in map") if in_map else None,
                # single-stream decode rate of the latest benchmark of this very build
                "decode_tps": headline(bench)
                if (bench := benchmarks.get(alias)) and bench.get("model_path") == model.location
                else None,
            }
        )
    if json:
        print_json({"models": rows, "state_serial": state.serial})
        return
    _print_list(rows)


def _print_list(rows: list[dict[str, Any]]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from local_ai.util.units import human_bytes

    out = console()
    if not rows:
        out.print("no models installed yet; declare some in local-ai.toml and run `local-ai apply`")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("alias", "source", "format", "quant", "size", "tok/s", "where", "server"):
        # fold rather than truncate: a repo id or path cut with "…" cannot be copied
        table.add_column(column, justify="right" if column == "size" else "left", overflow="fold")
    for row in rows:
        size = human_bytes(row["bytes"]) if row["present"] else "[red]missing[/]"
        table.add_row(
            escape(row["alias"]),
            escape(row["source"]),
            row["format"],
            escape(row["quantization"] or "-"),
            size,
            f"{row['decode_tps']:.1f}" if row["decode_tps"] is not None else "-",
            row["where"],  # the full path is in --json
            row["server"] or "",
        )
    out.print(table)


# ---- verify ---------------------------------------------------------------------------------

AliasesArgument = Annotated[
    list[str] | None,
    typer.Argument(help="Aliases to check (default: every installed model).", show_default=False),
]


def verify_command(
    aliases: AliasesArgument = None, config: ConfigOption = None, json: JsonOption = False
) -> None:
    """Re-hash installed models against local-ai.lock (or the hashes recorded at install)."""
    from local_ai.store.state import load_state

    state = load_state(settings.paths().state_file)
    chosen = aliases or sorted(state.models)
    unknown = [a for a in chosen if a not in state.models]
    if unknown:
        raise NotFoundError(
            f"not installed: {', '.join(unknown)}",
            hint="`local-ai models list` shows what is installed",
        )
    locked = _lock_entries(config)
    results = {alias: _verify_one(state.models[alias], locked.get(alias)) for alias in chosen}
    failed = {alias: r["problems"] for alias, r in results.items() if r["problems"]}
    if json:
        print_json({"ok": not failed, "models": results})
        if failed:
            raise typer.Exit(IntegrityError.exit_code)
        return
    _print_verify(results)
    if failed:
        first = next(iter(failed))
        raise IntegrityError(
            f"{len(failed)} model(s) failed verification: {', '.join(failed)}",
            hint=f"`local-ai models rm {first}` then `local-ai apply` installs a fresh copy",
        )


def _verify_one(model: Any, entry: Any) -> dict[str, Any]:
    from local_ai.hub.verify import verify_tree
    from local_ai.manifest.source import SourceFile

    root = Path(model.location)
    against = "recorded hashes"
    files: list[SourceFile]
    lock_fits = entry is not None and model.location_kind in ("hf-cache", "local")
    if lock_fits and (entry.kind == "path" or entry.commit == model.commit):
        against = "local-ai.lock"
        files = [SourceFile(f.name, f.size, f.sha256, f.blob_id) for f in entry.files]
    else:
        files = [SourceFile(name, r.size, r.sha256) for name, r in sorted(model.files.items())]
    if not root.exists():
        return {"against": against, "checked": 0, "problems": [f"{root} is missing"]}
    problems = verify_tree(root, files)
    hashed = sum(1 for f in files if f.sha256 or f.blob_id)
    if not files:
        against = "nothing recorded: presence only"
    return {"against": against, "checked": hashed, "problems": problems}


def _print_verify(results: dict[str, dict[str, Any]]) -> None:
    from rich.markup import escape

    out = console()
    for alias, result in results.items():
        if result["problems"]:
            out.print(f"[red]✗[/] {escape(alias)} (against {result['against']})")
            for problem in result["problems"]:
                out.print(f"    {escape(problem)}")
        else:
            out.print(
                f"[green]✓[/] {escape(alias)}: {result['checked']} files match "
                f"{escape(result['against'])}"
            )


# ---- rm -------------------------------------------------------------------------------------

ForceOption = Annotated[
    bool, typer.Option("--force", help="Remove even if the server's alias map still names it.")
]


def _served_error(alias: str) -> Exception:
    return LocalAIError(
        f"{alias} is in the server's alias map (run/aliases.json); removing it would break "
        "requests for it",
        hint=f"remove [models.{alias}] from local-ai.toml and run `local-ai apply`, or pass "
        "--force",
    )


def rm_command(
    alias: Annotated[str, typer.Argument(help="The alias to remove.")],
    yes: YesOption = False,
    force: ForceOption = False,
    lock_timeout: LockTimeoutOption = 0,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Remove an installed model (and its store entry when unused).

    The HuggingFace cache, shared with other tools, is left alone.
    """
    from local_ai.store.garbage import find_references
    from local_ai.store.layout import Store, StoreEntry, served_paths
    from local_ai.store.locks import apply_lock
    from local_ai.store.state import load_state, save_state

    paths = settings.paths()
    state = load_state(paths.state_file)
    if alias not in state.models:
        installed = ", ".join(sorted(state.models)) or "none"
        raise NotFoundError(f"{alias!r} is not installed (installed: {installed})")
    served = served_paths(paths)
    model = state.models[alias]
    if not force and (alias in served or model.location in served.values()):
        raise _served_error(alias)
    if not yes:
        if not interactive():
            raise LocalAIError(
                f"removing {alias} needs confirmation", hint="pass --yes to remove without asking"
            )
        typer.confirm(f"Remove {alias} ({model.location})?", abort=True)

    notes: list[str] = []
    with apply_lock(paths.apply_lock, timeout=lock_timeout, command=f"local-ai models rm {alias}"):
        state = load_state(paths.state_file)  # fresh, under the lock
        if alias not in state.models:
            raise NotFoundError(f"{alias!r} was removed meanwhile")
        model = state.models[alias]
        served = served_paths(paths)  # again: an apply may have changed the map meanwhile
        if not force and (alias in served or model.location in served.values()):
            raise _served_error(alias)
        models = {a: m for a, m in state.models.items() if a != alias}
        save_state(paths.state_file, state.model_copy(update={"models": models}))
        if model.location_kind == "store":
            location = Path(model.location)
            holders = find_references(paths).holders(location)
            if holders:
                notes.append(f"store entry kept: still used by {', '.join(holders)}")
            elif location.is_dir():
                digest, _, name = location.name.partition("-")
                Store(paths).remove(StoreEntry(location, digest, name))
                notes.append(f"deleted {location}")
        elif model.location_kind == "hf-cache":
            notes.append(
                "the HuggingFace cache copy stays (other tools may use it); `hf cache` "
                "commands remove it"
            )
    if _declared(config, alias):
        notes.append(f"{alias} is still declared in local-ai.toml: the next apply installs it")
    if json:
        print_json({"removed": alias, "notes": notes})
        return
    from rich.markup import escape

    console().print(f"[green]✓[/] removed {escape(alias)}")
    for note in notes:
        console().print(f"  {escape(note)}")


def _declared(config: Path | None, alias: str) -> bool:
    from local_ai.manifest.load import load_manifest

    try:
        return alias in load_manifest(settings.manifest_path(config)).manifest.models
    except LocalAIError:
        return False

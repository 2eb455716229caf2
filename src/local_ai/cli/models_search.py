"""`local-ai models search`: find a model's variants on the HuggingFace Hub (or, offline, on
this machine), grouped by base model and ranked for this machine. Registered on the `models`
group by `local_ai.cli.models`; the ranking rules are in docs/discovery.md."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from local_ai import settings
from local_ai.cli.options import ConfigOption, JsonOption
from local_ai.cli.output import console, err_console, print_json
from local_ai.discovery.names import format_params
from local_ai.errors import LocalAIError, NotFoundError, UsageError
from local_ai.hardware import format_gib

if TYPE_CHECKING:
    from local_ai.discovery.ranking import Assessment
    from local_ai.discovery.search import SearchResult
    from local_ai.hardware import Hardware

DEFAULT_GROUPS = 10
VARIANTS_PER_GROUP = 4
RULES = (
    "fits this machine first (weights + KV cache at the context, within usable memory); "
    "then MLX-ready over safetensors (converted) over GGUF (converted); then the quantization "
    "closest to the best quality that fits; then downloads, likes, recognized MLX publishers "
    "and freshness (docs/discovery.md)"
)


def register(app: typer.Typer) -> None:
    app.command("search")(search_command)


def search_command(
    query: Annotated[
        list[str],
        typer.Argument(help="Model name words, e.g. `qwen3 coder 30b`.", show_default=False),
    ],
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, help="Base models to show.")
    ] = DEFAULT_GROUPS,
    all_: Annotated[
        bool,
        typer.Option("--all", help="Every variant of every model found (and a deeper search)."),
    ] = False,
    context: Annotated[
        int | None,
        typer.Option(
            "--context",
            min=256,
            help="Context length the memory estimate assumes. Default: the largest in the "
            "manifest, else 32768.",
            show_default=False,
        ),
    ] = None,
    memory: Annotated[
        int | None,
        typer.Option(
            "--memory",
            min=1,
            help="Rank for a Mac with this many GB of unified memory instead of this machine.",
            show_default=False,
        ),
    ] = None,
    offline: Annotated[
        bool,
        typer.Option("--offline", help="Search only this machine (HF cache and store)."),
    ] = False,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Search the hub for a model and rank its variants (MLX, safetensors, GGUF) for this Mac.

    Offline (--offline or HF_HUB_OFFLINE=1) it lists matching models already in the
    HuggingFace cache and local-ai's store.
    """
    from local_ai.discovery import search as discovery

    text = " ".join(query).strip()
    if not text:
        raise UsageError(
            "give a model name to search for", hint="e.g. local-ai models search qwen3"
        )
    hardware = _hardware(memory)
    ctx = context or _manifest_context(config)
    fetch = discovery.ALL_FETCH_LIMIT if all_ else discovery.FETCH_LIMIT
    result = discovery.search(text, hardware, ctx, offline=offline, fetch_limit=fetch)
    per_group = None if all_ else VARIANTS_PER_GROUP
    shown_groups = None if all_ else limit
    if json:
        data = result.to_dict(shown_groups, per_group)
        data["ranking"] = RULES
        print_json(data)
        return
    _print(result, shown_groups, per_group)


def resolve_name(name: str, context: int | None, config: Any) -> dict[str, Any]:
    """Manifest fields for `models add <name>` when the name is no repo id or path: the best
    variant for this machine (printed with the runners-up), or an error saying why none fits."""
    from rich.markup import escape

    from local_ai.discovery import search as discovery

    hardware = _hardware(None)
    try:
        choice = discovery.choose(name, hardware, context or _manifest_context(config))
    except NotFoundError as exc:
        # Not a repo id, GGUF or path, and no model by that name: the command line is wrong.
        raise UsageError(
            f"{name!r} is not a repo id (org/name), a GGUF in one (org/name:file.gguf), a local "
            f"path, or the name of a model on the hub ({exc})",
            hint=f"find one with `local-ai models search {name}`",
        ) from exc
    out = err_console()
    out.print(f"{escape(name)} for {escape(hardware.describe())}:")
    for line in choice.lines():
        out.print(f"  {escape(line)}")
    if choice.best is None:
        raise NotFoundError(
            f"no variant of {name!r} fits this machine: {choice.why_nothing_fits}",
            hint="; ".join(choice.suggestions) or None,
        )
    return {k: v for k, v in choice.manifest_fields().items() if v is not None}


def _hardware(memory: int | None) -> Hardware:
    from local_ai.hardware import detect, simulated

    return simulated(memory) if memory else detect()


def _manifest_context(config: Any) -> int:
    """The largest context the manifest declares (what its models will be served with)."""
    from local_ai.manifest.models import ModelSpec

    default = int(ModelSpec.model_fields["context"].default)
    path = settings.manifest_path(config)
    if not path.exists():
        return default
    from local_ai.manifest.load import load_manifest

    try:
        models = load_manifest(path).manifest.models
    except LocalAIError:
        return default
    return max((m.context for m in models.values()), default=default)


def _gib(n: int) -> str:
    return format_gib(n)


def _where(a: Assessment) -> str:
    v = a.variant
    if v.location == "store":
        return f"store ({v.alias})" if v.alias else "store"
    return "HF cache" if v.location == "hf-cache" else "hub"


def _print(result: SearchResult, limit: int | None, per_group: int | None) -> None:
    from rich.markup import escape
    from rich.table import Table

    out = console()
    hw = result.hardware
    source = "this machine (offline)" if result.offline else "the hub"
    out.print(
        f"[bold]{escape(result.query)}[/] on {source}: ranked for {escape(hw.describe())}, "
        f"at {result.context:,} tokens of context"
    )
    if not result.groups:
        where = "on this machine" if result.offline else "on the hub"
        out.print(f"no model matching {escape(result.query)!r} was found {where}")
        if result.offline:
            out.print(
                "  models appear here once fetched; search the hub with the network on "
                "(unset HF_HUB_OFFLINE, drop --offline)"
            )
        else:
            out.print("  try fewer or other words, e.g. the family name (qwen3, devstral, glm)")
        return
    groups = result.groups[:limit] if limit else result.groups
    table = Table(box=None, pad_edge=False, show_edge=False)
    for column, justify in (
        ("", "left"),
        ("variant", "left"),
        ("format", "left"),
        ("quant", "left"),
        ("download", "right"),
        ("memory", "right"),
        ("fits", "left"),
        ("downloads", "right"),
        ("likes", "right"),
        ("updated", "left"),
        ("where", "left"),
    ):
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for index, group in enumerate(groups, 1):
        title = f"{group.base_model} · {format_params(group.params)} params"
        table.add_row(f"[bold]{index}[/]", f"[bold]{escape(title)}[/]", *[""] * 9)
        shown = group.assessments[:per_group] if per_group else group.assessments
        for rank, a in enumerate(shown):
            v = a.variant
            fits = "[green]yes[/]" if a.fits else "[red]no[/]"
            table.add_row(
                "★" if rank == 0 and a.fits else "",
                escape(v.label),
                {"mlx": "MLX", "safetensors": "safetensors", "gguf": "GGUF"}[v.format],
                escape(a.served_quant),
                _gib(v.size_bytes),
                _gib(a.needed) + ("~" if v.shape is None or v.shape.estimated else ""),
                fits,
                f"{v.downloads:,}" if v.location == "hub" else "",
                f"{v.likes:,}" if v.location == "hub" else "",
                v.last_modified.date().isoformat() if v.last_modified else "",
                _where(a),
            )
        hidden = len(group.assessments) - len(shown)
        if hidden > 0:
            table.add_row("", f"[dim]… {hidden} more (--all)[/]", *[""] * 9)
    out.print(table)
    more = len(result.groups) - len(groups)
    if more > 0:
        out.print(f"[dim]{more} more model{'s' if more > 1 else ''} found: --limit or --all[/]")
    best = groups[0].best
    if not best.fits:
        from local_ai.discovery.ranking import nothing_fits

        why, suggestions = nothing_fits(groups[0].assessments, hw, result.context)
        out.print(f"\n[bold]nothing found fits this machine:[/] {escape(why)}")
        for suggestion in suggestions:
            out.print(f"  - {escape(suggestion)}")
    else:
        label = f"{best.variant.label} ({best.served_quant})"
        out.print(f"\n[bold]best here:[/] {escape(label)}")
        for reason in best.reasons:
            out.print(f"  - {escape(reason)}")
        level = best.quantize if best.variant.format == "safetensors" else None
        option = f" --quantize {level}" if level else ""
        out.print(f"  add it: local-ai models add {escape(best.variant.label)}{option}")
    out.print(f"[dim]ranking: {escape(RULES)}; ~ = KV cache estimated (no config.json read)[/]")

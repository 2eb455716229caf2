"""`local-ai models convert`: a safetensors repo or a GGUF file -> an MLX model directory."""

from __future__ import annotations

import re
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from local_ai import hardware, sizing
from local_ai.cli.options import JsonOption
from local_ai.cli.output import console, err_console, print_json
from local_ai.cli.progress import ConvertBar
from local_ai.convert.archs import GGUF_ARCHITECTURES, PLANNED_GGUF_ARCHITECTURES
from local_ai.convert.recipe import LEVELS, make_recipe
from local_ai.discovery.names import config_quant, gguf_quant
from local_ai.errors import LocalAIError, NotFoundError, NotYetError

if TYPE_CHECKING:
    from local_ai.manifest.source import ResolvedSource

_NEXT = f" (next: {', '.join(PLANNED_GGUF_ARCHITECTURES)})" if PLANNED_GGUF_ARCHITECTURES else ""
HELP = f"""Convert a model to MLX at a quantization level.

SOURCE is a local directory with config.json and *.safetensors, a local .gguf file, \
an HF repo id (org/name) or a GGUF inside one (org/name:file.gguf).

Levels: {", ".join(LEVELS)}. q2-q8 are affine with --group-size 32, 64 or 128; mixed_3_6 \
and mixed_4_6 are mlx-lm's mixed-precision recipes; bf16/fp16 are not quantized.

GGUF architectures: {", ".join(GGUF_ARCHITECTURES)}{_NEXT}.

GGUF tensor types: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K-Q6_K, IQ and TQ types, \
MXFP4.

The result goes into the local-ai store (reused when the same conversion exists), or into --out.
"""

_HUB_RE = re.compile(r"^([A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?::(.+\.gguf))?(?:@([\w./-]+))?$")


def register(app: typer.Typer) -> None:
    app.command("convert", help=HELP)(convert_command)


def convert_command(
    source: Annotated[
        str,
        typer.Argument(
            help="Model directory, .gguf file, org/repo or org/repo:file.gguf.", show_default=False
        ),
    ],
    quantize: Annotated[
        str,
        typer.Option(
            "--quantize", "-q", help=f"Level: {', '.join(LEVELS)}, auto.", show_default=False
        ),
    ],
    group_size: Annotated[
        int | None,
        typer.Option(
            "--group-size",
            help="Group size for q2-q8 and mixed levels: 32, 64, 128 (default 64).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Write here (a new directory) instead of the store.",
            show_default=False,
        ),
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(
            "--dtype",
            help="Precision of unquantized tensors: bfloat16, float16, "
            "float32 (default: as the source).",
            show_default=False,
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Name of the store entry.", show_default=False)
    ] = None,
    memory_limit: Annotated[
        str | None,
        typer.Option(
            "--memory-limit",
            help="Stop the conversion past this much memory, e.g. 8G (default: 3/4 of RAM).",
            show_default=False,
        ),
    ] = None,
    context: Annotated[
        int,
        typer.Option("--context", help="Context to leave room for with --quantize auto."),
    ] = 32768,
    json: JsonOption = False,
) -> None:
    from local_ai.convert import api
    from local_ai.convert.runner import parse_size

    # A bad level fails before anything is read; "auto" is decided once the source is known.
    recipe = make_recipe(quantize, group_size, dtype) if quantize != "auto" else None
    limit = parse_size(memory_limit) if memory_limit else None
    err = err_console()
    with err.status("reading the source…", spinner="dots") if not json else nullcontext():
        src, at = _resolve_source(source)
        facts = api.inspect_source(src, at, memory_limit=limit)
    _check_supported(src, at, facts)
    if quantize == "auto":
        quantize, reason = _auto_level(src, at, group_size, context)
        if not json:
            err.print(reason)
        recipe = make_recipe(quantize, group_size, dtype)
    assert recipe is not None
    warnings = api.plan_warnings(facts, recipe)
    if not json:
        for warning in warnings:
            err.print(f"[yellow]warning:[/] {warning}")

    with ConvertBar(enabled=not json and err.is_terminal) as on_event:
        if out is not None:
            result = api.convert_to_dir(
                src, recipe, out, at=at, on_event=on_event, memory_limit=limit
            )
        else:
            result = api.convert_to_store(
                src, recipe, at=at, name=name, on_event=on_event, memory_limit=limit
            )
    seen = set(warnings)
    more = [w for w in result.warnings if w not in seen]
    if json:
        print_json(
            {
                "path": str(result.path),
                "digest": result.digest,
                "source": src.label,
                "recipe": recipe.to_json(),
                "reused": result.reused,
                "warnings": warnings + more,
                "details": result.details,
            }
        )
        return
    for warning in more:
        if not warning.startswith("the GGUF's weights are already quantized"):
            err.print(f"[yellow]warning:[/] {warning}")
    from rich.markup import escape

    from local_ai.util.units import human_bytes

    size = result.details.get("bytes_written")
    what = f"{recipe.describe()}" + (f", {human_bytes(size)}" if size else "")
    verb = "already converted" if result.reused else "converted"
    console().print(f"[green]✓[/] {verb} {escape(src.label)} ({what})")
    console().print(escape(str(result.path)))


def _resolve_source(text: str) -> tuple[ResolvedSource, Path]:
    """The source named on the command line and where its weights are on disk."""
    from local_ai.convert import api

    path = Path(text).expanduser()
    if path.exists():
        local = api.local_source(path)
        return local, api.weights_at(local)
    match = _HUB_RE.match(text)
    if match and not text.startswith((".", "/", "~")):
        return _hub_source(match.group(1), match.group(2), match.group(3))
    raise NotFoundError(
        f"{text}: no such file or directory",
        hint="pass a model directory, a .gguf file, org/repo or org/repo:file.gguf",
    )


def _hub_source(repo: str, file: str | None, revision: str | None) -> tuple[ResolvedSource, Path]:
    """Resolve and fetch through local_ai.hub (verified sha256s feed the conversion digest)."""
    from local_ai.convert import api

    try:
        from local_ai.hub.fetch import fetch
        from local_ai.hub.resolve import resolve
        from local_ai.manifest.models import ModelSpec
    except ImportError:
        raise NotYetError(
            "converting straight from the hub is not available in this build",
            hint="download the repo (or the .gguf file) and pass its local path",
        ) from None
    spec = ModelSpec(repo=repo, file=file, revision=revision, quantize="q4")
    resolved = resolve("convert", spec)
    fetched = fetch(resolved)
    hashed = resolved.with_sha256s(fetched.sha256s())
    return hashed, api.weights_at(hashed, fetched.path)


def _check_supported(src: ResolvedSource, at: Path, facts: dict[str, Any]) -> None:
    if src.format == "gguf" and not facts.get("supported", True):
        arch = facts.get("architecture")
        raise NotYetError(
            f"{at}: GGUF architecture {arch!r} is not supported yet",
            hint=f"supported: {', '.join(GGUF_ARCHITECTURES)}; convert the original "
            "safetensors repo instead if it exists",
        )


def _auto_level(
    src: ResolvedSource, at: Path, group_size: int | None, context: int
) -> tuple[str, str]:
    """`--quantize auto`: the level `quantize = "auto"` chooses in the manifest, for this source
    on this machine at `context` tokens."""
    import json as jsonlib

    config: dict[str, Any] = {}
    gguf = src.format == "gguf"
    if not gguf:
        try:
            config = jsonlib.loads((at / "config.json").read_text("utf-8"))
        except (OSError, ValueError):
            config = {}
    label = gguf_quant(at.name) if gguf else config_quant(config)
    bits = label.bits if label is not None else sizing.DEFAULT_SOURCE_BITS
    shape = sizing.shape_from_config(config)
    kv = shape.kv_bytes(context) if shape is not None else 0
    files = [(f.name, f.size) for f in src.files]
    size = sizing.weight_bytes(files) or src.total_size or at.stat().st_size
    chosen = sizing.choose_level(
        size,
        bits,
        kv,
        hardware.detect().usable_memory_bytes,
        context=context,
        group_size=group_size or sizing.DEFAULT_GROUP_SIZE,
        source_level=label.label if label is not None else None,
    )
    if not chosen.fits or chosen.level is None:
        raise LocalAIError(chosen.reason, hint="pick a level with --quantize, or a smaller model")
    return chosen.level, chosen.reason

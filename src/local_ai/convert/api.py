"""What the CLI and the reconciler's "convert" action call.

A conversion is identified by its inputs: the source (repo + commit + file names, sizes and
sha256s, or a local path and the sha256s of its files), the recipe (level, group size, dtype) and
the converter (:data:`CONVERTER_VERSION` plus the mlx-lm version whose quantization decisions it
follows). :func:`conversion_inputs` is that record; its digest addresses the store entry.

Every conversion runs in a worker process with a memory limit (see ``runner``); the output is
built in a staging directory and renamed into place, with provenance in ``.local-ai.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from local_ai import settings
from local_ai.convert.archs import requantize_warning
from local_ai.convert.recipe import Recipe
from local_ai.convert.runner import default_memory_limit, run_worker
from local_ai.convert.safetensors_to_mlx import read_config
from local_ai.errors import LocalAIError, NotFoundError
from local_ai.hub.filters import select_files
from local_ai.manifest.source import ResolvedSource, SourceFile
from local_ai.store.layout import PROVENANCE_FILE, Store, StoreEntry, entry_digest
from local_ai.util.atomic import atomic_write_text, fsync_dir
from local_ai.util.failpoints import failpoint

#: Bump when the bytes a conversion writes change for the same inputs.
CONVERTER_VERSION = "1"

EventHandler = Callable[[dict[str, Any]], None]
SourceKind = Literal["gguf", "safetensors"]

# Files of a safetensors model directory that shape the converted output.


@dataclass
class ConversionResult:
    path: Path
    source: ResolvedSource
    recipe: Recipe
    digest: str
    details: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    reused: bool = False  # the store already had this conversion


# ---------------------------------------------------------------------------------- sources


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    failpoint("hash.file")  # (an apply with nothing to do never gets here)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def local_source(path: str | Path, *, hash_files: bool = True) -> ResolvedSource:
    """A local ``.gguf`` file or safetensors directory (files hashed so the digest follows the
    content, not the path)."""
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise NotFoundError(f"{p}: no such file or directory")
    if p.is_file():
        with p.open("rb") as handle:
            magic = handle.read(4)
        if magic != b"GGUF" and p.suffix.lower() != ".gguf":
            raise LocalAIError(
                f"{p} is neither a GGUF file nor a model directory",
                hint="pass a .gguf file or a directory with config.json and *.safetensors",
            )
        one = SourceFile(p.name, p.stat().st_size, sha256_file(p) if hash_files else None)
        return ResolvedSource(p.name, "path", "gguf", (one,), path=str(p))
    if not (p / "config.json").is_file():
        ggufs = sorted(p.glob("*.gguf"))
        hint = (
            f"to convert a GGUF, pass the file itself, e.g. {ggufs[0]}"
            if ggufs
            else "pass a directory with config.json and *.safetensors, or a .gguf file"
        )
        raise LocalAIError(f"{p} has no config.json: not a HuggingFace model directory", hint=hint)
    # The files apply takes from a model directory: one rule (hub.filters) for both.
    names = select_files(q.name for q in p.iterdir() if q.is_file())
    files = tuple(
        SourceFile(n, (p / n).stat().st_size, sha256_file(p / n) if hash_files else None)
        for n in names
    )
    return ResolvedSource(p.name, "path", "safetensors", files, path=str(p))


def weights_at(source: ResolvedSource, fetched: Path | None = None) -> Path:
    """Where the weights are on disk: the local path, or in ``fetched`` (the snapshot a fetch
    made) the GGUF file or the directory."""
    if source.kind == "path":
        return Path(source.path or "")
    if fetched is None:
        raise LocalAIError(f"{source.label} is not fetched yet", hint="fetch it first")
    return fetched / source.file if source.file else fetched


def _kind(source: ResolvedSource) -> SourceKind:
    """The converter's reader: GGUF, or a HuggingFace directory (MLX ones included)."""
    return "gguf" if source.format == "gguf" else "safetensors"


def _files(source: ResolvedSource) -> list[dict[str, Any]]:
    # name, size, sha256: what the conversion digest has always hashed (no git blob ids)
    files = sorted(source.files, key=lambda f: f.name)
    return [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in files]


def source_record(source: ResolvedSource, at: Path) -> dict[str, Any]:
    """The source as a store entry's provenance records it."""
    return {
        "kind": _kind(source),
        "path": str(at),
        "repo": source.repo,
        "commit": source.commit,
        "file": source.file,
        "files": _files(source),
    }


# -------------------------------------------------------------------------------- identity


def engine_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("mlx-lm", "mlx", "gguf", "transformers"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "missing"
    return out


def conversion_inputs(source: ResolvedSource, recipe: Recipe) -> dict[str, Any]:
    """Everything that determines the output bytes, and nothing else (not the local path of
    a hub snapshot, not the time)."""
    ident: dict[str, Any] = {"kind": _kind(source), "files": _files(source)}
    if source.repo is not None:
        ident |= {"repo": source.repo, "commit": source.commit, "file": source.file}
    versions = engine_versions()
    return {
        "source": ident,
        "recipe": recipe.to_json(),
        "converter": CONVERTER_VERSION,
        "mlx_lm": versions["mlx-lm"],
    }


def conversion_digest(source: ResolvedSource, recipe: Recipe) -> str:
    return entry_digest(conversion_inputs(source, recipe))


def default_name(source: ResolvedSource, recipe: Recipe) -> str:
    local = Path(source.path or "").name
    stem = Path(source.file or local).stem if source.format == "gguf" else None
    base = stem or (source.repo or local).rsplit("/", 1)[-1]
    return f"{base}-{recipe.level}" + (
        f"-g{recipe.group_size}" if recipe.group_size not in (None, 64, 32) else ""
    )


# ------------------------------------------------------------------------------- inspection


def inspect_source(
    source: ResolvedSource, at: Path, *, memory_limit: int | None = None
) -> dict[str, Any]:
    """Facts for the plan and the command, read without converting (``at``: :func:`weights_at`).
    GGUF headers are parsed in the worker process (untrusted input)."""
    if source.format == "gguf":
        return run_worker(
            {"op": "inspect", "kind": "gguf", "source": str(at)},
            memory_limit=memory_limit or default_memory_limit(),
        )
    config = read_config(at)
    return {
        "model_type": config.get("model_type"),
        "dtype": config.get("torch_dtype") or config.get("dtype"),
        "quantized": bool(config.get("quantization") or config.get("quantization_config")),
        "low_bit_types": {},
        "base_model": None,
    }


def plan_warnings(facts: Mapping[str, Any], recipe: Recipe) -> list[str]:
    """Warnings a plan shows before converting (requantizing an already low-bit GGUF, with the
    original repo to convert instead when the GGUF names its base model)."""
    warning = requantize_warning(facts.get("low_bit_types") or {}, facts.get("base_model"), recipe)
    return [warning] if warning else []


# ------------------------------------------------------------------------------- conversion


def convert_into(
    source: ResolvedSource,
    at: Path,
    recipe: Recipe,
    out_dir: Path,
    *,
    on_event: EventHandler | None = None,
    memory_limit: int | None = None,
    shard_bytes: int | None = None,
) -> dict[str, Any]:
    """Run the conversion in a worker process, writing into the existing empty ``out_dir``.
    Returns the worker's summary (architecture, dtype, bytes written, warnings …)."""
    request = {
        "op": "convert",
        "kind": _kind(source),
        "source": str(at),
        "out_dir": str(out_dir),
        "recipe": recipe.to_json(),
        "shard_bytes": shard_bytes,
    }
    return run_worker(
        request, memory_limit=memory_limit or default_memory_limit(), on_event=on_event
    )


def _provenance(
    source: ResolvedSource, at: Path, recipe: Recipe, details: Mapping[str, Any]
) -> dict[str, Any]:
    from local_ai import __version__

    return {
        "kind": "conversion",
        "source": source_record(source, at),
        "recipe": recipe.to_json(),
        "inputs": conversion_inputs(source, recipe),
        "converter": {
            "version": CONVERTER_VERSION,
            "local_ai": __version__,
            **engine_versions(),
        },
        "result": dict(details),
        "warnings": list(details.get("warnings") or []),
    }


def convert_to_store(
    source: ResolvedSource,
    recipe: Recipe,
    *,
    at: Path,
    store: Store | None = None,
    name: str | None = None,
    digest: str | None = None,
    on_event: EventHandler | None = None,
    memory_limit: int | None = None,
    shard_bytes: int | None = None,
) -> ConversionResult:
    """Convert the weights ``at`` (:func:`weights_at`) into the store (or return the entry
    already there). ``digest`` lets the
    reconciler use its own address (reconcile.model.convert_digest); default:
    :func:`conversion_digest`."""
    store = store or Store(settings.paths())
    digest = digest or conversion_digest(source, recipe)
    name = name or default_name(source, recipe)
    existing = store.get(digest, name)
    if existing is not None:
        return ConversionResult(
            existing.path,
            source,
            recipe,
            digest,
            existing.provenance.get("result", {}),
            reused=True,
        )
    provenance: dict[str, Any] = {}
    # Store.build reads the provenance mapping when the block ends, after conversion filled it.
    with store.build(digest, name, provenance) as staging:
        details = convert_into(
            source,
            at,
            recipe,
            staging,
            on_event=on_event,
            memory_limit=memory_limit,
            shard_bytes=shard_bytes,
        )
        provenance.update(_provenance(source, at, recipe, details))
    entry = store.get(digest, name)
    assert isinstance(entry, StoreEntry)
    return ConversionResult(
        entry.path, source, recipe, digest, details, list(details.get("warnings") or [])
    )


def convert_to_dir(
    source: ResolvedSource,
    recipe: Recipe,
    out: Path,
    *,
    at: Path,
    on_event: EventHandler | None = None,
    memory_limit: int | None = None,
    shard_bytes: int | None = None,
) -> ConversionResult:
    """Convert into ``out`` (which must not exist): built in a hidden sibling directory and
    renamed into place, so a killed conversion never leaves a half-written ``out``."""
    out = Path(out).expanduser().absolute()
    if out.exists():
        raise LocalAIError(
            f"{out} already exists", hint="choose a new --out directory or remove this one"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial.{os.getpid()}.{time.time_ns()}"
    staging.mkdir()
    try:
        details = convert_into(
            source,
            at,
            recipe,
            staging,
            on_event=on_event,
            memory_limit=memory_limit,
            shard_bytes=shard_bytes,
        )
        digest = conversion_digest(source, recipe)
        provenance = _provenance(source, at, recipe, details)
        record = {**provenance, "digest": digest, "built_at": time.time()}
        atomic_write_text(staging / PROVENANCE_FILE, json.dumps(record, indent=2, default=str))
        staging.rename(out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ConversionResult(
        out, source, recipe, digest, details, list(details.get("warnings") or [])
    )

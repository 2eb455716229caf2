"""Resolve a manifest model entry to a concrete source: commit sha, exact files, format.

Online, the hub's API is asked directly (never the cache: huggingface_hub silently falls back
to a cached ref when the API fails, which would make `lock --upgrade` lie). Offline, the
HuggingFace cache is read instead.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from local_ai import settings
from local_ai.errors import (
    ConfigError,
    DiskSpaceError,
    IntegrityError,
    NotFoundError,
    OfflineError,
)
from local_ai.hub import client
from local_ai.hub.filters import check_names, select_files
from local_ai.hub.verify import discard, hash_file, mismatch, needs_git_oid
from local_ai.manifest.models import ModelSpec
from local_ai.manifest.source import (
    DEFAULT_REVISION,
    GIT_OID_RE,
    SHA256_RE,
    Format,
    Quantization,
    ResolvedSource,
    SourceFile,
)
from local_ai.util.atomic import atomic_write_text
from local_ai.util.failpoints import failpoint
from local_ai.util.names import name_problem

MAX_CONFIG_BYTES = 4 * 1024 * 1024
_MLX_ORGS = ("mlx-community/",)


def resolve(
    alias: str, spec: ModelSpec, *, offline: bool = False, base_dir: Path | None = None
) -> ResolvedSource:
    """The source `spec` stands for now. `offline` (or HF_HUB_OFFLINE) reads the HF cache only;
    `base_dir` anchors a relative `path` (the manifest's directory)."""
    if spec.path is not None:
        return resolve_path(alias, spec, base_dir=base_dir)
    assert spec.repo is not None
    if offline or settings.hf_offline():
        return _resolve_cached(alias, spec)
    return _resolve_online(alias, spec)


def repo_cache_dir(repo: str) -> Path:
    """Where huggingface_hub keeps `repo` (models--org--name under the hub cache)."""
    return client.cache_dir() / ("models--" + repo.replace("/", "--"))


# ---- online ---------------------------------------------------------------------------------


def _resolve_online(alias: str, spec: ModelSpec) -> ResolvedSource:
    assert spec.repo is not None
    repo = spec.repo
    revision = spec.revision or DEFAULT_REVISION
    where = client.Where(repo, revision, alias=alias)
    info = client.with_retries(
        lambda: client.api().model_info(repo, revision=revision, files_metadata=True),
        where=where,
        what=f"looking up {repo}@{revision}",
    )
    failpoint("resolve.looked-up")  # the hub answered; nothing is planned yet
    commit = str(info.sha or "")
    if not GIT_OID_RE.match(commit):
        raise IntegrityError(
            f"the hub answered with no valid commit sha for {repo}@{revision} ({commit!r})",
            hint="check HF_ENDPOINT; it should be a HuggingFace Hub",
        )
    siblings = {s.rfilename: s for s in info.siblings or []}
    check_names(siblings, repo=repo)
    _remember_ref(repo, revision, commit)
    names = _selected(alias, spec, siblings, commit)
    files = tuple(_source_file(repo, siblings[name]) for name in names)
    fmt, quant = _detect_format(alias, spec, files, siblings, info, commit)
    base_model = _base_model(getattr(info, "card_data", None))
    return _repo_source(alias, spec, commit, files, fmt, quant, base_model=base_model)


def _repo_source(
    alias: str,
    spec: ModelSpec,
    commit: str,
    files: tuple[SourceFile, ...],
    fmt: Format,
    quant: Quantization | None,
    *,
    base_model: str | None = None,
    from_cache: bool = False,
) -> ResolvedSource:
    assert spec.repo is not None
    return ResolvedSource(
        alias=alias,
        kind="repo",
        format=fmt,
        files=files,
        repo=spec.repo,
        revision=spec.revision or DEFAULT_REVISION,
        commit=commit,
        file=spec.file,
        quantization=quant,
        base_model=base_model,
        extra_files=tuple(spec.extra_files),
        from_cache=from_cache,
    )


def _remember_ref(repo: str, revision: str, commit: str) -> None:
    """Record in the HF cache what `revision` means now, as huggingface_hub does on every online
    call, so offline runs (ours and other tools') find it."""
    if revision == commit or name_problem(revision) is not None:
        return
    ref = repo_cache_dir(repo) / "refs" / revision
    with contextlib.suppress(OSError, DiskSpaceError):
        if not ref.is_file() or ref.read_text("utf-8") != commit:
            atomic_write_text(ref, commit)


def _selected(alias: str, spec: ModelSpec, names: Iterable[str], commit: str) -> list[str]:
    names = list(names)
    chosen = select_files(names, gguf_file=spec.file, extra_files=spec.extra_files)
    if spec.file is not None and spec.file not in chosen:
        ggufs = sorted(n for n in names if n.lower().endswith(".gguf"))
        listing = ", ".join(ggufs[:12]) if ggufs else "none"
        raise NotFoundError(
            f"{spec.file} is not in {spec.repo} at {commit[:12]}",
            hint=f"set models.{alias}.file to one of the GGUF files there: {listing}",
        )
    return chosen


def _source_file(repo: str, sibling: Any) -> SourceFile:
    name = sibling.rfilename
    lfs = sibling.lfs
    size = lfs.size if lfs is not None and lfs.size is not None else sibling.size
    sha256 = lfs.sha256 if lfs is not None else None
    blob_id = sibling.blob_id
    bad = (
        not isinstance(size, int)
        or size < 0
        or (sha256 is not None and not SHA256_RE.match(sha256))
        or (blob_id is not None and not GIT_OID_RE.match(blob_id))
        or (sha256 is None and blob_id is None)
    )
    if bad:
        raise IntegrityError(
            f"the hub gave no usable size and hash for {name} in {repo} "
            f"(size={size!r}, sha256={sha256!r}, blob id={blob_id!r})",
            hint="check HF_ENDPOINT; it should be a HuggingFace Hub",
        )
    return SourceFile(name=name, size=size, sha256=sha256, blob_id=blob_id)


def _detect_format(
    alias: str,
    spec: ModelSpec,
    files: tuple[SourceFile, ...],
    all_names: Mapping[str, Any],
    info: Any,
    commit: str,
) -> tuple[Format, Quantization | None]:
    if spec.file is not None:
        return "gguf", None
    names = {f.name for f in files}
    if not any(n.endswith(".safetensors") for n in names):
        ggufs = sorted(n for n in all_names if n.lower().endswith(".gguf"))
        if ggufs:
            raise ConfigError(
                f"{spec.repo} has GGUF files but no safetensors weights",
                path=None,
                key=f"models.{alias}.file",
                hint=f"name the GGUF file to convert, e.g. file = {ggufs[0]!r}",
            )
        raise NotFoundError(
            f"{spec.repo} has no safetensors weights (pickle weights are never fetched)",
            hint=f"pick a repo with .safetensors files for models.{alias}.repo",
        )
    config = _read_config(spec, files, commit) if "config.json" in names else {}
    quant = _mlx_quantization(config)
    tags = {str(t).lower() for t in getattr(info, "tags", None) or []}
    tagged = str(getattr(info, "library_name", None) or "").lower() == "mlx" or "mlx" in tags
    return _weights_format(str(spec.repo), quant, mlx_tagged=tagged), quant


def _weights_format(repo: str, quant: Quantization | None, *, mlx_tagged: bool) -> Format:
    """MLX when config.json quantizes for MLX, the hub tags it so (online only) or an MLX
    organisation publishes it; other safetensors weights are converted."""
    is_mlx = quant is not None or mlx_tagged or repo.startswith(_MLX_ORGS)
    return "mlx" if is_mlx else "safetensors"


def _read_config(spec: ModelSpec, files: tuple[SourceFile, ...], commit: str) -> dict[str, Any]:
    """config.json at `commit`, fetched into the HF cache (it is needed later anyway) and checked
    against its git blob id before it is trusted."""
    from huggingface_hub import hf_hub_download

    assert spec.repo is not None
    repo = spec.repo
    entry = next(f for f in files if f.name == "config.json")
    if entry.size > MAX_CONFIG_BYTES:
        raise IntegrityError(f"config.json in {repo} is {entry.size} bytes; refusing to read it")
    where = client.Where(repo, commit, file="config.json")
    path = Path(
        client.with_retries(
            lambda: hf_hub_download(
                repo,
                "config.json",
                revision=commit,
                endpoint=client.endpoint(),
                cache_dir=client.cache_dir(),
                token=client.token(),
            ),
            where=where,
            what=f"downloading config.json of {repo}",
        )
    )
    problem = mismatch(entry, hash_file(path, git_oid=needs_git_oid(entry)))
    if problem is not None:
        discard(path)
        raise IntegrityError(
            f"config.json of {repo}@{commit[:12]} is corrupt: {problem}; the bad copy was removed",
            hint="run the command again to download it afresh",
        )
    return _parse_config(path)


def _parse_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes()[:MAX_CONFIG_BYTES])
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _mlx_quantization(config: Mapping[str, Any]) -> Quantization | None:
    quant = config.get("quantization")
    if not isinstance(quant, dict):
        return None
    bits = quant.get("bits")
    group = quant.get("group_size")
    mode = quant.get("mode")
    return Quantization(
        bits=bits if isinstance(bits, int) else None,
        group_size=group if isinstance(group, int) else None,
        mode=mode if isinstance(mode, str) else None,
    )


def _base_model(card: Any) -> str | None:
    value = getattr(card, "base_model", None) if card is not None else None
    if isinstance(value, list):
        value = next((v for v in value if isinstance(v, str)), None)
    return value if isinstance(value, str) and value else None


# ---- offline: from the HuggingFace cache ----------------------------------------------------


def _resolve_cached(alias: str, spec: ModelSpec) -> ResolvedSource:
    assert spec.repo is not None
    repo = spec.repo
    revision = spec.revision or DEFAULT_REVISION
    storage = repo_cache_dir(repo)
    commit = revision if GIT_OID_RE.match(revision) else _cached_ref(storage, revision)
    snapshot = storage / "snapshots" / commit if commit else None
    if commit is None or snapshot is None or not snapshot.is_dir():
        raise OfflineError(
            f"{repo}@{revision} is not in the HuggingFace cache ({client.cache_dir()}) and "
            "offline mode is on",
            hint="run `local-ai lock` once with the network (unset HF_HUB_OFFLINE), or use "
            "only models already downloaded",
        )
    listed = _cached_tree(repo, commit) or _snapshot_listing(snapshot)
    check_names(listed, repo=repo)
    names = _selected(alias, spec, listed, commit)
    files = tuple(listed[name] for name in names)
    fmt: Format = "gguf"
    quant = None
    if spec.file is None:
        if not any(n.endswith(".safetensors") for n in names):
            raise OfflineError(
                f"the cached copy of {repo}@{commit[:12]} has no safetensors weights",
                hint="unset HF_HUB_OFFLINE and run `local-ai lock` to resolve it online",
            )
        quant = _mlx_quantization(_parse_config(snapshot / "config.json"))
        fmt = _weights_format(repo, quant, mlx_tagged=False)
    return _repo_source(alias, spec, commit, files, fmt, quant, from_cache=True)


def _cached_ref(storage: Path, revision: str) -> str | None:
    try:
        commit = (storage / "refs" / revision).read_text("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return commit if GIT_OID_RE.match(commit) else None


def _cached_tree(repo: str, commit: str) -> dict[str, SourceFile] | None:
    """The tree listing snapshot_download caches next to the snapshot (exact sizes and ids)."""
    try:
        from huggingface_hub import get_cached_repo_tree
    except ImportError:  # older clients keep no tree cache
        return None
    try:
        tree = get_cached_repo_tree(repo, revision=commit, cache_dir=client.cache_dir())
    except Exception:  # any failure: fall back to listing the snapshot
        return None
    out: dict[str, SourceFile] = {}
    for item in tree:
        lfs = getattr(item, "lfs", None)
        out[item.path] = SourceFile(
            name=item.path,
            size=int(lfs.size if lfs is not None else item.size),
            sha256=lfs.sha256 if lfs is not None else None,
            blob_id=getattr(item, "blob_id", None),
        )
    return out


def _snapshot_listing(snapshot: Path) -> dict[str, SourceFile]:
    """Files present in a cached snapshot; blob names are the hub's etags (sha256 for LFS files,
    git blob ids otherwise)."""
    out: dict[str, SourceFile] = {}
    for root, _dirs, names in os.walk(snapshot):
        for name in names:
            pointer = Path(root) / name
            if not pointer.exists():
                continue  # dangling: its blob was removed
            rel = pointer.relative_to(snapshot).as_posix()
            blob = Path(os.path.realpath(pointer)).name
            out[rel] = SourceFile(
                name=rel,
                size=pointer.stat().st_size,
                sha256=blob if SHA256_RE.match(blob) else None,
                blob_id=blob if GIT_OID_RE.match(blob) else None,
            )
    return out


# ---- local paths ----------------------------------------------------------------------------


def resolve_path(alias: str, spec: ModelSpec, *, base_dir: Path | None = None) -> ResolvedSource:
    """A local model directory or .gguf file: listed with sizes; hashed when first installed."""
    assert spec.path is not None
    path = Path(spec.path).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    path = path.resolve()
    if not path.exists():
        raise NotFoundError(
            f"{path} does not exist", hint=f"fix models.{alias}.path in local-ai.toml"
        )
    if path.is_file():
        if not path.name.lower().endswith(".gguf"):
            raise ConfigError(
                f"{path} is a file but not a .gguf file",
                path=None,
                key=f"models.{alias}.path",
                hint="point `path` at a model directory or a .gguf file",
            )
        return ResolvedSource(
            alias=alias,
            kind="path",
            format="gguf",
            files=(SourceFile(name=path.name, size=path.stat().st_size),),
            path=str(path),
        )
    listing = {p.relative_to(path).as_posix(): p for p in sorted(path.rglob("*")) if p.is_file()}
    names = select_files(listing, extra_files=spec.extra_files)
    files = tuple(SourceFile(name=n, size=listing[n].stat().st_size) for n in names)
    if not any(n.endswith(".safetensors") for n in names):
        raise NotFoundError(
            f"{path} has no .safetensors weights",
            hint=f"point models.{alias}.path at a directory with config.json and *.safetensors",
        )
    quant = _mlx_quantization(_parse_config(path / "config.json"))
    return ResolvedSource(
        alias=alias,
        kind="path",
        format="mlx" if quant is not None else "safetensors",
        files=files,
        path=str(path),
        quantization=quant,
        extra_files=tuple(spec.extra_files),
    )
